"""Run directories: the files of one training run, written so that a run survives being killed.

A run directory holds

    config.json        the run's one manifest: everything needed to rebuild it (net, data, criterion,
                       integrator, telemetry, stopping rules, and the TOML config it came from, if any)
    metrics.jsonl      one JSON row per step: step, t, loss, dt, lambda_1 (when measured), wall
    telemetry.jsonl    one JSON row per telemetry measurement (eos.Telemetry)
    snapshots/         θ every ``snapshot_every`` steps, as theta_<step>.npy
    checkpoint.npz     the latest resumable state: θ, step, t and the integrator's and
                       telemetry's carried state (warm-start eigenvectors)
    result.json        how the run ended

Every file but the two append-only logs is written atomically (a temporary file,
then ``os.replace``), so a run killed at any instant leaves a consistent
checkpoint; on resume the logs are cut back to the checkpoint's step.
"""

import json
import os

import numpy as np

from .backend import to_numpy


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


class DamagedRunFile(ValueError):
    """A file of a run directory that cannot be read back (cut short, or edited into invalid JSON)."""


def read_json(path):
    """A JSON file of a run directory, or :class:`DamagedRunFile` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise DamagedRunFile(f"{path} is damaged ({error}): restore it, or start the run again in another "
                             f"directory") from None


def load_manifest(run_dir):
    """The run's manifest, config.json (see the module docstring)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.fspath(run_dir)!r} is not a run directory: it has no config.json")
    return read_json(path)


def load_run(run_dir):
    """Read a run directory back: (manifest, metrics columns, telemetry rows, result or None)."""
    config = load_manifest(run_dir)
    metrics = columns(read_rows(os.path.join(run_dir, "metrics.jsonl")))
    telemetry = read_rows(os.path.join(run_dir, "telemetry.jsonl"))
    result_path = os.path.join(run_dir, "result.json")
    result = None
    if os.path.exists(result_path):
        result = read_json(result_path)
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
        try:
            with np.load(self.checkpoint_path) as data:
                arrays = {k: data[k] for k in data.files}
            missing = {"step", "t", "theta", "initial_loss"} - set(arrays)
            if missing:
                raise ValueError(f"it lacks {sorted(missing)}")
        except Exception as error:              # zipfile.BadZipFile, EOFError, OSError, ValueError…
            raise DamagedRunFile(f"{self.checkpoint_path} is damaged ({type(error).__name__}: {error})") from None
        state = {prefix: {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(prefix + "/")}
                 for prefix in ("integrator", "telemetry")}
        return int(arrays["step"]), float(arrays["t"]), arrays["theta"], float(arrays["initial_loss"]), state
