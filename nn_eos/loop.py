"""The training loop: continuous time t, stopping rules, telemetry and checkpoints.

``train`` moves θ with an integrator (integrators.py) and records every step;
with a run directory (rundir.py) it writes as it goes and can resume. Given
the same inputs every step is deterministic, so a resumed run ends
bit-identical to an uninterrupted one.
"""

import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .backend import array_module, to_device
from .rundir import (DamagedRunFile, RunDirectory, columns, load_snapshot, read_json, read_rows, rewrite_rows,
                     snapshot_steps, write_json)
from .validation import check_integer


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: the checkpoint was written first (``run_dir``, ``step`` say where and when)."""

    def __init__(self, step, run_dir):
        where = "no run_dir, nothing saved" if run_dir is None else (
            f"checkpoint written to {run_dir}; train(..., resume=True) continues")
        super().__init__(f"interrupted at step {step}: {where}")
        self.step, self.run_dir = step, run_dir


@dataclass
class Run:
    status: str          # converged | max_steps | max_time | diverged
    message: str
    steps: int
    t: float
    loss: float
    theta: object
    metrics: dict = field(default_factory=dict)     # column name → numpy array, one entry per step
    telemetry: list = field(default_factory=list)   # one dict per measurement
    run_dir: str = None


@dataclass
class Limits:
    """The stopping rules of a run, checked before every step (:meth:`stop`)."""

    until_loss: float
    max_steps: int = None
    max_time: float = None
    diverge_factor: float = 100.0

    def __post_init__(self):
        if not (isinstance(self.until_loss, (int, float)) and 0 <= self.until_loss < float("inf")):
            raise ValueError(f"until_loss must be a finite loss ≥ 0, got {self.until_loss!r}")
        self.max_steps = check_integer(self.max_steps, "max_steps", optional=True)
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be positive or None, got {self.max_time!r}")

    def settings(self):
        return {"until_loss": self.until_loss, "max_steps": self.max_steps, "max_time": self.max_time,
                "diverge_factor": self.diverge_factor}

    def stop(self, value, step, t, initial_loss):
        """(status, message) when the run must stop at this state, else None."""
        if not np.isfinite(value) or value > self.diverge_factor * initial_loss:
            return "diverged", (f"diverged at step {step} (t = {t:.4g}): loss {value:.4g} is not finite or exceeds "
                                f"{self.diverge_factor:g} × the initial loss {initial_loss:.4g}")
        if value <= self.until_loss:
            return "converged", f"reached loss {value:.4g} ≤ {self.until_loss:g} at step {step}, t = {t:.4g}"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps", f"stopped at max_steps = {self.max_steps} (t = {t:.4g}, loss {value:.4g})"
        if self.max_time is not None and t >= self.max_time:
            return "max_time", f"stopped at t = {t:.4g} ≥ max_time (step {step}, loss {value:.4g})"
        return None


class Progress:
    """A progress bar (tqdm, loaded only when shown) towards the run's nearest limit, with an ETA.

    Bounded by ``max_time`` it counts continuous time t; else by ``max_steps``,
    steps; with neither, steps without a total. The postfix shows the loss
    against its target and, when measured, λ_1.
    """

    def __init__(self, limits, step, t, show=True):
        self.limits, self.bar = limits, None
        if not show:
            return
        from tqdm.auto import tqdm          # only the experiments floor needs tqdm installed
        if limits.max_time is not None:
            self.in_time = True
            self.bar = tqdm(total=float(limits.max_time), initial=float(t), unit="t", dynamic_ncols=True,
                            bar_format="{l_bar}{bar}| t {n:.3g}/{total:.3g} [{elapsed}<{remaining}{postfix}]")
        else:
            self.in_time = False
            self.bar = tqdm(total=limits.max_steps, initial=step, unit="step", dynamic_ncols=True)

    def update(self, step, t, dt, value, info):
        if self.bar is None:
            return
        postfix = {"loss": f"{value:.4g}→{self.limits.until_loss:g}"}
        if "lambda_1" in info:
            postfix["λ1"] = f"{info['lambda_1']:.4g}"
        if self.in_time:
            postfix["step"] = step
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(min(dt, self.bar.total - self.bar.n) if self.in_time else 1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def manifest(loss, integrator, limits, snapshot_every, telemetry, data, experiment):
    """The run's config.json (rundir.py): everything needed to rebuild and judge it."""
    net = loss.net
    return {"nn_eos_version": __version__, "net": getattr(net, "spec", {"repr": repr(net)}),
            "dtype": net.dtype.name, "criterion": loss.criterion.name,
            "num_examples": loss.num_examples, "integrator": integrator.config(),
            "telemetry": None if telemetry is None else telemetry.config(),
            "train": {**limits.settings(), "snapshot_every": snapshot_every},
            "device": net.device, **({"data": data} if data is not None else {}),
            **({"experiment": experiment} if experiment is not None else {})}


def _from_snapshot(directory, damage):
    """(step, t, θ, initial loss) from the newest θ snapshot that the metrics log reaches, for a run whose
    checkpoint is damaged; warns that the warm-start state is lost. Raises ``damage`` when nothing is left."""
    rows = read_rows(directory.metrics_path)
    times = {row["step"]: row["t"] for row in rows}
    if rows:
        times[rows[-1]["step"] + 1] = rows[-1]["t"] + rows[-1]["dt"]
    usable = [s for s in snapshot_steps(directory.path) if s in times]
    if not usable or not rows:
        raise DamagedRunFile(f"{damage}, and no θ snapshot is left to resume from: start the run again in "
                             f"another directory") from None
    step = usable[-1]
    warnings.warn(f"{damage}: resuming from the θ snapshot of step {step} instead; the integrator's warm start "
                  f"is lost, so the run goes on from the same θ but not bit for bit as it would have",
                  RuntimeWarning, stacklevel=3)
    return step, times[step], load_snapshot(directory.path, step), rows[0]["loss"]


def _open_run(directory, config, resume, integrator, telemetry, net):
    """Start a run directory, or continue it (``resume``): returns (step, t, θ or None, initial loss or None)."""
    if not directory.has_checkpoint():
        write_json(os.path.join(directory.path, "config.json"), config)
        return 0, 0.0, None, None
    if not resume:
        raise FileExistsError(f"{directory.path!r} already holds a run: pass resume=True to continue it, "
                              f"or choose another run_dir")
    saved = read_json(os.path.join(directory.path, "config.json"))
    if saved.get("integrator") != json.loads(json.dumps(integrator.config())):
        raise ValueError(f"cannot resume {directory.path!r}: it was run with integrator "
                         f"{saved.get('integrator')}, not {integrator.config()}")
    try:
        step, t, theta_host, initial_loss, state = directory.load_checkpoint()
    except DamagedRunFile as damage:
        step, t, theta_host, initial_loss = _from_snapshot(directory, damage)
        state = None
    if state is not None:
        integrator.load_state(state["integrator"])
        if telemetry is not None:
            telemetry.load_state(state["telemetry"])
    rewrite_rows(directory.metrics_path, read_rows(directory.metrics_path, before_step=step))
    # a finished run measured its last θ before its last checkpoint: that row stays, and is not measured again
    measured_last = telemetry is not None and state is not None and not telemetry.due(t)
    rewrite_rows(directory.telemetry_path, read_rows(directory.telemetry_path,
                                                     before_step=step + 1 if measured_last else step))
    return step, t, to_device(theta_host, net.device).astype(net.dtype), initial_loss


def train(loss, integrator, until_loss=None, max_steps=None, max_time=None, snapshot_every=None, telemetry=None,
          run_dir=None, resume=False, progress=True, data=None, experiment=None, diverge_factor=100.0, theta=None):
    """Move θ with ``integrator`` until ``L̃(θ) ≤ until_loss`` or a limit; returns a :class:`Run`.

    ``until_loss`` defaults to the criterion's threshold of the 2024 paper
    (0.01 cross-entropy, 0.02 MSE). ``max_steps`` bounds the steps and
    ``max_time`` the continuous time ``t = Σ Δt``. A run whose loss turns NaN
    or exceeds ``diverge_factor`` times its initial loss stops as 'diverged'.
    ``telemetry`` (eos.Telemetry) is measured whenever t reaches its schedule,
    and at the final θ of a run stopped by a limit when the schedule falls
    due there (with the last step's Δt as η).
    With ``run_dir`` everything is written as it goes (module docstring);
    ``resume=True`` continues from the directory's checkpoint. Ctrl-C writes a
    checkpoint and raises :class:`TrainingInterrupted` (a KeyboardInterrupt).
    ``progress`` shows a bar towards ``max_time`` (else ``max_steps``) with
    an ETA. The network's θ is set to the final θ.
    """
    limits = Limits(loss.criterion.default_target_loss if until_loss is None else until_loss, max_steps, max_time,
                    diverge_factor)
    snapshot_every = check_integer(snapshot_every, "snapshot_every", optional=True)
    net = loss.net
    theta = (net.theta if theta is None else net.check_theta(theta)).copy()
    step, t, initial_loss, directory = 0, 0.0, None, None
    if run_dir is not None:
        directory = RunDirectory(run_dir)
        config = manifest(loss, integrator, limits, snapshot_every, telemetry, data, experiment)
        step, t, resumed_theta, initial_loss = _open_run(directory, config, resume, integrator, telemetry, net)
        theta = theta if resumed_theta is None else resumed_theta

    value, gradient = loss.value_and_gradient(theta)
    if initial_loss is None:
        initial_loss = value
        if directory is not None:
            directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            if snapshot_every:
                directory.save_snapshot(step, theta)
    rows = [] if directory is None else read_rows(directory.metrics_path)
    telemetry_rows = [] if directory is None else read_rows(directory.telemetry_path)
    stopped = limits.stop(value, step, t, initial_loss)
    bar = Progress(limits, step, t, show=progress and stopped is None)   # a finished run shows no empty bar
    start = time.perf_counter()
    try:
        while stopped is None:
            new_theta, dt, info = integrator.step(loss, theta, gradient)
            if telemetry is not None and telemetry.due(t):
                row = telemetry.measure(loss, theta, gradient, eta=dt, step=step, t=t)
                telemetry_rows.append(row)
                if directory is not None:
                    directory.append("telemetry", row)
            row = {"step": step, "t": t, "loss": value, "dt": dt, "wall": time.perf_counter() - start, **info}
            rows.append(row)
            if directory is not None:
                directory.append("metrics", row)
            if not bool(array_module(new_theta).isfinite(new_theta).all()):
                stopped = ("diverged", f"diverged at step {step + 1} (t = {t + dt:.4g}): θ is no longer finite; "
                                       f"the run keeps the last finite θ, of step {step}")
                break
            theta, step, t = new_theta, step + 1, t + dt
            value, gradient = loss.value_and_gradient(theta)
            if directory is not None and snapshot_every and step % snapshot_every == 0:
                directory.save_snapshot(step, theta)
                directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            bar.update(step, t, dt, value, info)
            stopped = limits.stop(value, step, t, initial_loss)
        if telemetry is not None and rows and stopped[0] in ("max_time", "max_steps") and telemetry.due(t):
            row = telemetry.measure(loss, theta, gradient, eta=rows[-1]["dt"], step=step, t=t)   # the last θ
            telemetry_rows.append(row)
            if directory is not None:
                directory.append("telemetry", row)
    except KeyboardInterrupt:
        bar.close()
        if directory is not None:
            directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            directory.close()
        raise TrainingInterrupted(step, None if directory is None else directory.path) from None
    bar.close()
    status, message = stopped
    net.set_theta(theta)
    if directory is not None:
        directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
        directory.save_snapshot(step, theta)
        write_json(os.path.join(directory.path, "result.json"),
                   {"status": status, "message": message, "steps": step, "t": t, "loss": value})
        directory.close()
    return Run(status=status, message=message, steps=step, t=t, loss=value, theta=theta, metrics=columns(rows),
               telemetry=telemetry_rows, run_dir=None if directory is None else directory.path)
