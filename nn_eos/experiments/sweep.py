"""Sweeps: a grid of runs described in one TOML file, run on Dask from a laptop to a cluster.

Both papers are sweeps: the 2024 paper trained 368 networks (Table 1: dataset ×
subset size × 4 initialisation seeds × 4 subset seeds), the 2022 paper a grid
of architectures, activations and learning rates. A sweep file holds a run
config (``[base]``, the sections of ``nn-eos train``), the values to vary
(``[grid]``, dotted keys; every combination is one run) and what to do with
the runs (``[sweep]``)::

    [sweep]
    name = "dice-alignment"            # default: the file's name
    analyze = ["alignment"]            # per run, after training: "alignment" (the 2024 paper's
                                       # decomposition), "spectrum" (spectral densities), "eos" (the 2022
                                       # paper's bulk claim from the run's [telemetry], into eos.json)
    analyze_every = 5                  # snapshots at multiples of this step (the paper: 100)
    analyze_skip = 10                  # the initial transient the paper leaves out
    spectrum = "hessian"               # with "spectrum": "hessian", "ggn" or "residual"
    spectrum_steps = 80                # Lanczos steps and probes of each density
    spectrum_probes = 10
    tables = ["table2"]                # aggregates: "table1" (2022 paper), "table2" (2024 paper)

    [base.data]
    dataset = "dice"
    ...

    [grid]
    "data.size" = [117, 234, 468, 937]
    "net.seed" = [0, 1, 2, 3]
    "data.subset_seed" = [0, 1, 2, 3]

Every run is a resumable run directory ``OUT/runs/<name>``, so running a sweep
again skips finished runs, resumes unfinished ones from their last checkpoint
(a killed sweep or a lost worker costs at most the steps since the last
snapshot), and retries failed ones. A run that raises keeps its traceback in
``error.txt`` in its directory and does not stop the others. A run that
trained but whose analysis raised keeps its training results and says so
("trained, analysis failed", the traceback in ``analysis_error.txt``);
running the sweep again redoes only its analysis.

Runs go to a Dask cluster (``dask.distributed``, the ``[sweep]`` extra): a
``LocalCluster`` with one single-threaded worker per core (per GPU with
``device="gpu"``) by default, or any running cluster by its scheduler address,
e.g. one started with ``dask-jobqueue`` on SLURM or PBS (README). The run
directories must then be on a file system every worker sees. ``workers=0``
runs everything in this process, without Dask.
"""

import itertools
import json
import os
import re
import time
import traceback
import uuid

from . import config as configs
from ..rundir import write_json
from ..validation import check_integer
from .threads import DEFAULT_THREADS

SWEEP_SCHEMA = {"name": str, "analyze": list, "analyze_every": int, "analyze_skip": int, "tables": list,
                "spectrum": str, "spectrum_steps": int, "spectrum_probes": int}
ANALYSES = ("alignment", "eos", "spectrum")
ANALYSIS_FAILED = "trained, analysis failed"
TABLES = ("table1", "table2")
SPECTRUM_DEFAULTS = {"kind": "hessian", "steps": 80, "probes": 10}
FINISHED = ("converged", "max_steps", "max_time", "diverged")


class Sweep:
    """A parsed, validated sweep file: its settings, base config and grid; ``runs`` expands the grid."""

    def __init__(self, name, base, grid, analyze=(), analyze_every=1, analyze_skip=10, tables=(), source=None,
                 spectrum=None):
        self.name, self.base, self.grid = name, base, grid
        self.analyze, self.analyze_every, self.analyze_skip = tuple(analyze), analyze_every, analyze_skip
        self.tables, self.source = tuple(tables), source
        self.spectrum = dict(SPECTRUM_DEFAULTS, **(spectrum or {}))   # kind, steps, probes of "spectrum"

    def runs(self):
        """[(run name, run config)] for every combination of the grid's values, in the file's order."""
        keys = list(self.grid)
        short = {key: key.split(".")[1] for key in keys}
        if len(set(short.values())) < len(keys):     # e.g. net.seed and data.seed: keep the section
            short = {key: key.replace(".", "-") for key in keys}
        out = []
        for values in itertools.product(*self.grid.values()):
            config = json.loads(json.dumps(self.base))
            for key, value in zip(keys, values):
                section, name = key.split(".")
                config.setdefault(section, {})[name] = value
            name = "_".join(f"{short[k]}-{_label(v)}" for k, v in zip(keys, values)) or "run"
            out.append((name, config))
        return out


def _label(value):
    text = "x".join(map(str, value)) if isinstance(value, list) else str(value)
    return re.sub(r"[^A-Za-z0-9.-]+", "", text)


def load(path):
    """Read a sweep file and check it, and every run it expands to, before any compute."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise configs.ConfigError(f"sweep file {path!r} not found")
    with open(path, "rb") as f:
        try:
            raw = configs.tomllib.load(f)
        except configs.tomllib.TOMLDecodeError as error:
            raise configs.ConfigError(f"{path}: not valid TOML ({error})") from None
    unknown = sorted(set(raw) - {"sweep", "base", "grid"})
    if unknown:
        raise configs.ConfigError(f"{path}: unknown section [{unknown[0]}]; a sweep file has [sweep], [base] "
                                  f"(a run config, as for nn-eos train) and [grid]")
    settings = raw.get("sweep", {})
    for key, value in settings.items():
        if key not in SWEEP_SCHEMA:
            raise configs.ConfigError(f"{path}: unknown key sweep.{key}; expected one of {sorted(SWEEP_SCHEMA)}")
        if not isinstance(value, SWEEP_SCHEMA[key]) or isinstance(value, bool):
            raise configs.ConfigError(f"{path}: sweep.{key} must be {configs._type_name(SWEEP_SCHEMA[key])}, "
                                      f"got {value!r}")
    for key, allowed in (("analyze", ANALYSES), ("tables", TABLES)):
        for value in settings.get(key, []):
            if value not in allowed:
                raise configs.ConfigError(f"{path}: sweep.{key} has {value!r}; expected some of {list(allowed)}")
    grid = raw.get("grid", {})
    for key, values in grid.items():
        section, _, name = key.partition(".")
        if section not in configs.SCHEMA or name not in configs.SCHEMA[section]:
            raise configs.ConfigError(f"{path}: grid key {key!r} is not a config key (section.key, e.g. "
                                      f"\"data.size\")")
        if not isinstance(values, list) or not values:
            raise configs.ConfigError(f"{path}: grid.{key} must be a non-empty list of values, got {values!r}")
    sweep = Sweep(settings.get("name", os.path.splitext(os.path.basename(path))[0]), raw.get("base", {}), grid,
                  analyze=settings.get("analyze", []), analyze_every=settings.get("analyze_every", 1),
                  analyze_skip=settings.get("analyze_skip", 10), tables=settings.get("tables", []), source=path,
                  spectrum={"kind": settings.get("spectrum", SPECTRUM_DEFAULTS["kind"]),
                            "steps": settings.get("spectrum_steps", SPECTRUM_DEFAULTS["steps"]),
                            "probes": settings.get("spectrum_probes", SPECTRUM_DEFAULTS["probes"])})
    from ..curvature import KINDS

    if sweep.spectrum["kind"] not in KINDS:
        raise configs.ConfigError(f"{path}: sweep.spectrum must be one of {list(KINDS)}, got "
                                  f"{sweep.spectrum['kind']!r}")
    if "cluster" in sweep.base or any(key.startswith("cluster.") for key in grid):
        raise configs.ConfigError(f"{path}: a sweep distributes whole runs over its workers; [cluster] shards one "
                                  f"run (nn-eos train --scheduler): leave it out of the sweep")
    if "eos" in sweep.analyze and "telemetry" not in sweep.base:
        raise configs.ConfigError(f"{path}: sweep.analyze has 'eos', which reads the 2022 telemetry recorded during "
                                  f"training: add a [base.telemetry] section")
    from ..integrators import from_config

    for name, config in sweep.runs():
        configs.validate(config, f"{path} (run {name})")
        try:
            from_config(dict(config["integrator"]))
        except (TypeError, ValueError) as error:
            raise configs.ConfigError(f"{path} (run {name}): [integrator]: {error}") from None
    if "table2" in sweep.tables and "alignment" not in sweep.analyze:
        raise configs.ConfigError(f"{path}: sweep.tables has 'table2', which needs sweep.analyze = ['alignment']")
    if "table1" in sweep.tables and "telemetry" not in sweep.base:
        raise configs.ConfigError(f"{path}: sweep.tables has 'table1', which needs a [base.telemetry] section")
    return sweep


# ----- one run, in a worker ------------------------------------------------------------

def run_state(run_dir):
    """'finished', 'failed', 'started' or 'new': what a run directory holds now."""
    result = os.path.join(run_dir, "result.json")
    if os.path.exists(result):
        with open(result) as f:
            if json.load(f).get("status") in FINISHED:
                return "finished"
    if os.path.exists(os.path.join(run_dir, "error.txt")):
        return "failed"
    return "started" if os.path.exists(os.path.join(run_dir, "checkpoint.npz")) else "new"


def is_done(run_dir, analyses):
    """True when the run is trained and every requested analysis has been recorded as complete."""
    marker = os.path.join(run_dir, "done.json")
    if run_state(run_dir) != "finished" or not os.path.exists(marker):
        return False
    with open(marker) as f:
        return set(analyses) <= set(json.load(f)["analyses"])


def run_one(name, config, run_dir, analyses=(), analyze_every=1, analyze_skip=10, device=None, spectrum=None):
    """Train (or resume, or skip) one run of a sweep and analyse it; never raises.

    Returns a summary dict with ``status``: the run's final status; 'failed' with the error when training
    raised (its traceback in ``run_dir/error.txt``); or 'trained, analysis failed' with the error and the
    training results when only an analysis raised (its traceback in ``run_dir/analysis_error.txt``: the run
    is kept, and the next sweep redoes only the analysis).
    """
    start = time.perf_counter()
    error_path = os.path.join(run_dir, "error.txt")
    try:
        _use_worker_gpu(device)
        if run_state(run_dir) != "finished":
            resume = os.path.exists(os.path.join(run_dir, "checkpoint.npz"))
            configs.run(config, run_dir, device=device, resume=resume, progress=False)
        with open(os.path.join(run_dir, "result.json")) as f:
            result = json.load(f)
    except Exception as error:   # a failed run is reported, and the sweep goes on
        os.makedirs(run_dir, exist_ok=True)
        with open(error_path, "w") as f:
            f.write(traceback.format_exc())
        return {"name": name, "status": "failed", "error": f"{type(error).__name__}: {error}",
                "seconds": time.perf_counter() - start}
    if os.path.exists(error_path):
        os.remove(error_path)
    trained = {"name": name, "steps": result["steps"], "loss": result["loss"]}
    analysis_error_path = os.path.join(run_dir, "analysis_error.txt")
    try:
        analyze(run_dir, analyses, analyze_every, analyze_skip, spectrum)
    except Exception as error:   # the training results stand; the next sweep redoes the analysis
        with open(analysis_error_path, "w") as f:
            f.write(traceback.format_exc())
        return {**trained, "status": ANALYSIS_FAILED, "error": f"{type(error).__name__}: {error}",
                "seconds": time.perf_counter() - start}
    if os.path.exists(analysis_error_path):
        os.remove(analysis_error_path)
    write_json(os.path.join(run_dir, "done.json"), {"analyses": list(analyses)})
    return {**trained, "status": result["status"], "seconds": time.perf_counter() - start}


def analyze(run_dir, analyses, every=1, skip=10, spectrum=None):
    """The analyses a sweep asks for, on one trained run: 'alignment' (analysis.analyze_run), 'spectrum'
    (analysis.spectrum_run with ``spectrum``'s kind, steps and probes), 'eos' (the 2022 paper's bulk claim from
    the run's telemetry, into ``eos.json``). Each caches what it computed, so a repeat computes only what is new."""
    from . import analysis

    if "alignment" in analyses:
        analysis.analyze_run(run_dir, every=every, skip=skip, progress=False)
    if "spectrum" in analyses:
        options = dict(SPECTRUM_DEFAULTS, **(spectrum or {}))
        analysis.spectrum_run(run_dir, kind=options["kind"], every=every, skip=skip, steps=options["steps"],
                              probes=options["probes"], progress=False)
    if "eos" in analyses:
        from .. import eos
        from ..rundir import load_run

        telemetry = load_run(run_dir)[2]
        if not telemetry or "n_top" not in telemetry[0]:
            raise ValueError(f"{run_dir}: no 2022 telemetry to analyse (the run has no [telemetry] section)")
        n_c = telemetry[0]["n_top"] + 1
        write_json(os.path.join(run_dir, "eos.json"), {"n_classes": n_c, "bulk_claim": eos.bulk_claim(telemetry, n_c)})


def _use_worker_gpu(device):
    """On a LocalCluster with one worker per GPU, worker i computes on GPU i."""
    if device != "gpu":
        return
    try:
        from distributed import get_worker

        index = int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return
    import cupy

    cupy.cuda.Device(index % cupy.cuda.runtime.getDeviceCount()).use()


# ----- the sweep -------------------------------------------------------------------------

def _check_run_dir(name, config, run_dir):
    """A run directory made from another config is an error, never silently reused."""
    path = os.path.join(run_dir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f).get("experiment")
        if saved != json.loads(json.dumps(config)):
            raise configs.ConfigError(f"run {name}: {run_dir} was made from another config; the sweep file changed "
                                      f"since — choose another output folder, or delete that run")


def _default_workers(device):
    if device == "gpu":
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    return os.cpu_count() or 1


def run_sweep(sweep, out, workers=None, scheduler=None, device=None, progress=True, threads=None):
    """Run every run of ``sweep`` (a Sweep or a file path) into ``out/runs``; then its tables.

    ``workers``: LocalCluster size (default one per core, one per GPU with
    ``device="gpu"``; 0 runs in this process). ``scheduler``: the address of a
    running Dask scheduler to use instead. Each run uses ``threads`` BLAS
    threads (default: the base config's ``train.threads``, else 1; a grid over
    ``train.threads`` wins), recorded in its config, so a run gives the same
    bits on any worker and in this process (threads.py). Returns a dict with the runs'
    summaries by name and the tables written. One sweep at a time per folder
    (a lock file, ``out/sweep.lock``, taken over when its holder was killed).
    """
    if not isinstance(sweep, Sweep):
        sweep = load(sweep)
    workers = check_integer(workers, "workers", low=0, optional=True)
    threads = check_integer(threads, "threads", optional=True)
    runs = sweep.runs()
    for _, config in runs:
        settings = config.setdefault("train", {})
        if threads is not None and "train.threads" not in sweep.grid:
            settings["threads"] = threads
        settings.setdefault("threads", DEFAULT_THREADS)
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    with _SweepLock(out):
        return _run_locked(sweep, runs, out, workers, scheduler, device, progress)


def _run_locked(sweep, runs, out, workers, scheduler, device, progress):
    from tqdm.auto import tqdm

    from . import tables

    write_json(os.path.join(out, "sweep.json"), {
        "name": sweep.name, "source": sweep.source, "grid": sweep.grid, "analyze": list(sweep.analyze),
        "analyze_every": sweep.analyze_every, "analyze_skip": sweep.analyze_skip, "tables": list(sweep.tables),
        "spectrum": sweep.spectrum,
        "runs": {name: config for name, config in runs}})
    todo, summaries = [], {}
    for name, config in runs:
        run_dir = os.path.join(out, "runs", name)
        _check_run_dir(name, config, run_dir)
        if is_done(run_dir, sweep.analyze):
            summaries[name] = {"name": name, "status": "skipped (finished)"}
        else:
            todo.append((name, config, run_dir))
    args = (sweep.analyze, sweep.analyze_every, sweep.analyze_skip, device, sweep.spectrum)
    bar = tqdm(total=len(runs), initial=len(runs) - len(todo), disable=not progress, unit="run",
               desc=f"sweep {sweep.name}", dynamic_ncols=True)
    counts = {"done": len(runs) - len(todo), "failed": 0, "analysis failed": 0}

    def record(summary, running):
        summaries[summary["name"]] = summary
        kind = {"failed": "failed", ANALYSIS_FAILED: "analysis failed"}.get(summary["status"], "done")
        counts[kind] += 1
        bar.set_postfix(done=counts["done"], running=running, failed=counts["failed"],
                        analysis_failed=counts["analysis failed"], refresh=False)
        bar.update(1)
        if summary["status"] == "failed":
            bar.write(f"run {summary['name']} failed: {summary['error']} (traceback in its error.txt)")
        elif summary["status"] == ANALYSIS_FAILED:
            bar.write(f"run {summary['name']} trained, analysis failed: {summary['error']} (traceback in its "
                      f"analysis_error.txt; the next sweep redoes only the analysis)")

    if workers == 0 and scheduler is None:
        for i, (name, config, run_dir) in enumerate(todo):
            record(run_one(name, config, run_dir, *args), running=min(1, len(todo) - i - 1))
    elif todo:
        with _client(workers if workers is not None else _default_workers(device), scheduler) as client:
            n_workers = max(len(client.scheduler_info().get("workers", {})), 1)
            tag = uuid.uuid4().hex[:8]     # keys unique per call: a shared scheduler may hold an older sweep
            futures = [client.submit(run_one, name, config, run_dir, *args, key=f"nn-eos-{sweep.name}-{name}-{tag}",
                                     pure=False) for name, config, run_dir in todo]
            from distributed import as_completed

            for i, future in enumerate(as_completed(futures)):
                record(future.result(), running=min(n_workers, len(todo) - i - 1))
    bar.close()
    return {"runs": summaries, "tables": tables.write_tables(out, sweep.tables)}


class _SweepLock:
    """Only one sweep at a time per folder: two would train and analyse the same runs at once.

    The lock file records the pid and host of its holder. A lock left by a
    sweep that was killed on this host (its pid is gone) is taken over; one
    held by a live process, or by another host, is an error that says so.
    """

    def __init__(self, out):
        self.path = os.path.join(out, "sweep.lock")

    def __enter__(self):
        import socket

        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    with open(self.path) as f:
                        holder = json.load(f)
                except (OSError, ValueError):
                    holder = {}
                if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    os.remove(self.path)           # left by a sweep that was killed: take over
                    continue
                raise RuntimeError(f"{os.path.dirname(self.path)} is being swept by pid {holder.get('pid')} on "
                                   f"{holder.get('host')} (since {holder.get('started')}); wait for it to finish, "
                                   f"or delete {self.path} if that sweep is gone") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise RuntimeError(f"could not take the lock {self.path}")

    def __exit__(self, *exc):
        if os.path.exists(self.path):
            os.remove(self.path)


def _alive(pid):
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _client:
    """A Dask client on the given scheduler, or on a LocalCluster of ``workers`` single-threaded processes."""

    def __init__(self, workers, scheduler):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ImportError("nn-eos sweep runs on Dask: pip install 'nn_eos[sweep]' (dask.distributed), "
                              "or pass workers=0 (--workers 0) to run the sweep in this process") from None
        self.cluster = None
        if scheduler is None:
            import logging

            # One thread per worker process: the runs are NumPy-bound, and Dask sets OMP/MKL/OpenBLAS
            # to one thread in each worker, so W workers use W cores without oversubscription.
            import warnings

            with warnings.catch_warnings():   # "port … in use, hosting the HTTP server on … instead" is harmless
                warnings.filterwarnings("ignore", message=".*already in use.*")
                self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                            dashboard_address=":0", silence_logs=logging.ERROR)
            self.client = Client(self.cluster)
        else:
            self.client = Client(scheduler)

    def __enter__(self):
        return self.client

    def __exit__(self, *exc):
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
