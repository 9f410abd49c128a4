"""The training loop: continuous time t, stopping rules, telemetry and checkpoints.

``train`` moves θ with an integrator (integrators.py) and records every step;
with a run directory (rundir.py) it writes as it goes and can resume. Given
the same inputs every step is deterministic, so a resumed run ends
bit-identical to an uninterrupted one.
"""

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ._version import __version__
from .backend import to_device
from .rundir import RunDirectory, columns, read_rows, rewrite_rows, write_json
from .validation import check_integer


class _Progress:
    """A silent stand-in for a tqdm bar (progress=False)."""

    def set_postfix(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


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



def train(loss, integrator, until_loss=None, max_steps=None, max_time=None, snapshot_every=None, telemetry=None,
          run_dir=None, resume=False, progress=True, data=None, experiment=None, diverge_factor=100.0, theta=None):
    """Move θ with ``integrator`` until ``L̃(θ) ≤ until_loss`` or a limit; returns a :class:`Run`.

    ``until_loss`` defaults to the criterion's threshold of the 2024 paper
    (0.01 cross-entropy, 0.02 MSE). ``max_steps`` bounds the steps and
    ``max_time`` the continuous time ``t = Σ Δt``. A run whose loss turns NaN
    or exceeds ``diverge_factor`` times its initial loss stops as 'diverged'.
    ``telemetry`` (eos.Telemetry) is measured whenever t reaches its schedule.
    With ``run_dir`` everything is written as it goes (module docstring);
    ``resume=True`` continues from the directory's checkpoint. Ctrl-C writes a
    checkpoint and re-raises. The network's θ is set to the final θ.
    """
    if until_loss is None:
        until_loss = loss.criterion.default_target_loss
    max_steps = check_integer(max_steps, "max_steps", optional=True)
    snapshot_every = check_integer(snapshot_every, "snapshot_every", optional=True)
    if max_time is not None and not max_time > 0:
        raise ValueError(f"max_time must be positive or None, got {max_time!r}")
    net = loss.net
    theta = (net.theta if theta is None else net.check_theta(theta)).copy()
    step, t, initial_loss = 0, 0.0, None
    directory = None
    if run_dir is not None:
        directory = RunDirectory(run_dir)
        settings = {"until_loss": until_loss, "max_steps": max_steps, "max_time": max_time,
                    "snapshot_every": snapshot_every, "diverge_factor": diverge_factor}
        full_config = {"nn_eos_version": __version__, "net": getattr(net, "spec", {"repr": repr(net)}),
                       "dtype": net.dtype.name, "criterion": loss.criterion.name,
                       "num_examples": loss.num_examples, "integrator": integrator.config(),
                       "telemetry": None if telemetry is None else telemetry.config(), "train": settings,
                       "device": net.device, **({"data": data} if data is not None else {}),
                       **({"experiment": experiment} if experiment is not None else {})}
        if directory.has_checkpoint():
            if not resume:
                raise FileExistsError(f"{directory.path!r} already holds a run: pass resume=True to continue it, "
                                      f"or choose another run_dir")
            with open(os.path.join(directory.path, "config.json")) as f:
                saved = json.load(f)
            if saved.get("integrator") != json.loads(json.dumps(integrator.config())):
                raise ValueError(f"cannot resume {directory.path!r}: it was run with integrator "
                                 f"{saved.get('integrator')}, not {integrator.config()}")
            step, t, theta_host, initial_loss, state = directory.load_checkpoint()
            theta = to_device(theta_host, net.device).astype(net.dtype)
            integrator.load_state(state["integrator"])
            if telemetry is not None:
                telemetry.load_state(state["telemetry"])
            rewrite_rows(directory.metrics_path, read_rows(directory.metrics_path, before_step=step))
            rewrite_rows(directory.telemetry_path, read_rows(directory.telemetry_path, before_step=step))
        else:
            write_json(os.path.join(directory.path, "config.json"), full_config)

    value, gradient = loss.value_and_gradient(theta)
    if initial_loss is None:
        initial_loss = value
        if directory is not None:
            directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            if snapshot_every:
                directory.save_snapshot(step, theta)
    rows = [] if directory is None else read_rows(directory.metrics_path)
    telemetry_rows = [] if directory is None else read_rows(directory.telemetry_path)
    if progress:
        from tqdm.auto import tqdm          # only the experiments floor needs tqdm installed
    bar = _Progress() if not progress else tqdm(total=max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    status = message = None
    try:
        while status is None:
            if not np.isfinite(value) or value > diverge_factor * initial_loss:
                status = "diverged"
                message = (f"diverged at step {step} (t = {t:.4g}): loss {value:.4g} is not finite or exceeds "
                           f"{diverge_factor:g} × the initial loss {initial_loss:.4g}")
                break
            if value <= until_loss:
                status, message = "converged", f"reached loss {value:.4g} ≤ {until_loss:g} at step {step}, t = {t:.4g}"
                break
            if max_steps is not None and step >= max_steps:
                status, message = "max_steps", f"stopped at max_steps = {max_steps} (t = {t:.4g}, loss {value:.4g})"
                break
            if max_time is not None and t >= max_time:
                status, message = "max_time", f"stopped at t = {t:.4g} ≥ max_time (step {step}, loss {value:.4g})"
                break
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
            theta, step, t = new_theta, step + 1, t + dt
            value, gradient = loss.value_and_gradient(theta)
            if directory is not None and snapshot_every and step % snapshot_every == 0:
                directory.save_snapshot(step, theta)
                directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            postfix = {"t": f"{t:.3g}", "loss": f"{value:.4g}"}
            if "lambda_1" in info:
                postfix["λ1"] = f"{info['lambda_1']:.4g}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        if directory is not None:
            directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
            directory.close()
            print(f"\ninterrupted at step {step}: checkpoint written to {directory.path}; resume=True continues")
        bar.close()
        raise
    bar.close()
    net.set_theta(theta)
    if directory is not None:
        directory.save_checkpoint(step, t, theta, initial_loss, integrator, telemetry)
        directory.save_snapshot(step, theta)
        write_json(os.path.join(directory.path, "result.json"),
                   {"status": status, "message": message, "steps": step, "t": t, "loss": value})
        directory.close()
    return Run(status=status, message=message, steps=step, t=t, loss=value, theta=theta, metrics=columns(rows),
               telemetry=telemetry_rows, run_dir=None if directory is None else directory.path)
