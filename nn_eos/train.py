"""The training loop: continuous time t, stopping rules, telemetry, and run directories that survive interruption.

A run directory holds

    config.json        everything needed to rebuild the run (net, data, criterion, integrator, settings)
    metrics.jsonl      one JSON row per step: step, t, loss, dt, lambda_1 (when measured), wall
    telemetry.jsonl    one JSON row per telemetry measurement (eos.Telemetry)
    snapshots/         θ every ``snapshot_every`` steps, as theta_<step>.npy
    checkpoint.npz     the latest resumable state: θ, step, t and the integrator's and
                       telemetry's carried state (warm-start eigenvectors)
    result.json        how the run ended

Every file but the two append-only logs is written atomically (a temporary file,
then ``os.replace``), so a run killed at any instant leaves a consistent
checkpoint; on resume the logs are cut back to the checkpoint's step. Given
the same inputs every step is deterministic, so a resumed run ends
bit-identical to an uninterrupted one.
"""

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from . import __version__
from .backend import to_device, to_numpy


@dataclass
class Run:
    status: str          # converged | max_steps | max_time | diverged | interrupted
    message: str
    steps: int
    t: float
    loss: float
    theta: object
    metrics: dict = field(default_factory=dict)     # column name → numpy array, one entry per step
    telemetry: list = field(default_factory=list)   # one dict per measurement
    run_dir: str = None


# ----- files ----------------------------------------------------------------------

def atomic_write(path, write):
    """Write a file through ``write(file_object)`` to a temporary name, then rename it into place."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path, obj):
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=_json_default).encode()))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_rows(path, before_step=None):
    """Rows of a JSON-lines log; a torn last line (a killed writer) is dropped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path, "rb") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if before_step is None or row["step"] < before_step:
                rows.append(row)
    return rows


def rewrite_rows(path, rows):
    atomic_write(path, lambda f: f.write(b"".join(json.dumps(r).encode() + b"\n" for r in rows)))


def columns(rows):
    """Rows of dicts → dict of numpy arrays (NaN where a row lacks a key)."""
    keys = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return {k: np.array([row.get(k, np.nan) for row in rows]) for k in keys}


def load_run(run_dir):
    """Read a run directory back: (config, metrics columns, telemetry rows, result or None)."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = json.load(f)
    metrics = columns(read_rows(os.path.join(run_dir, "metrics.jsonl")))
    telemetry = read_rows(os.path.join(run_dir, "telemetry.jsonl"))
    result_path = os.path.join(run_dir, "result.json")
    result = None
    if os.path.exists(result_path):
        with open(result_path) as f:
            result = json.load(f)
    return config, metrics, telemetry, result


def snapshot_steps(run_dir):
    """The steps at which θ snapshots exist, sorted."""
    folder = os.path.join(run_dir, "snapshots")
    if not os.path.isdir(folder):
        return []
    return sorted(int(f[6:-4]) for f in os.listdir(folder) if f.startswith("theta_") and f.endswith(".npy"))


def load_snapshot(run_dir, step):
    return np.load(os.path.join(run_dir, "snapshots", f"theta_{step:08d}.npy"))


class RunDirectory:
    """The files of one run (see the module docstring)."""

    def __init__(self, path):
        self.path = os.path.expanduser(os.fspath(path))
        os.makedirs(os.path.join(self.path, "snapshots"), exist_ok=True)
        self.metrics_path = os.path.join(self.path, "metrics.jsonl")
        self.telemetry_path = os.path.join(self.path, "telemetry.jsonl")
        self.checkpoint_path = os.path.join(self.path, "checkpoint.npz")
        self._logs = {}

    def has_checkpoint(self):
        return os.path.exists(self.checkpoint_path)

    def append(self, which, row):
        path = self.metrics_path if which == "metrics" else self.telemetry_path
        f = self._logs.get(path)
        if f is None:
            f = self._logs[path] = open(path, "ab")
        f.write(json.dumps(row, default=_json_default).encode() + b"\n")
        f.flush()

    def close(self):
        for f in self._logs.values():
            f.close()
        self._logs.clear()

    def save_snapshot(self, step, theta):
        path = os.path.join(self.path, "snapshots", f"theta_{step:08d}.npy")
        atomic_write(path, lambda f: np.save(f, to_numpy(theta)))

    def save_checkpoint(self, step, t, theta, initial_loss, integrator, telemetry):
        arrays = {"step": np.array(step), "t": np.array(t), "theta": to_numpy(theta),
                  "initial_loss": np.array(initial_loss)}
        arrays.update({f"integrator/{k}": v for k, v in integrator.state().items()})
        if telemetry is not None:
            arrays.update({f"telemetry/{k}": v for k, v in telemetry.state().items()})
        atomic_write(self.checkpoint_path, lambda f: np.savez(f, **arrays))

    def load_checkpoint(self):
        with np.load(self.checkpoint_path) as data:
            arrays = {k: data[k] for k in data.files}
        state = {prefix: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
                 for prefix in ("integrator", "telemetry")}
        return int(arrays["step"]), float(arrays["t"]), arrays["theta"], float(arrays["initial_loss"]), state


# ----- the loop -------------------------------------------------------------------

def train(loss, integrator, until_loss=None, max_steps=None, max_time=None, snapshot_every=None, telemetry=None,
          run_dir=None, resume=False, progress=True, config=None, diverge_factor=100.0, theta=None):
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
    for name, value in (("max_steps", max_steps), ("snapshot_every", snapshot_every)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
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
                       **({"data": config} if config is not None else {})}
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
    bar = tqdm(total=max_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
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
