"""Measurements over the θ snapshots of a run directory (2024 paper, sections 3–5).

``analyze_run`` applies ``alignment.analyze`` to a run's snapshots, caching
each row beside the run; the tables and figures read those rows.
"""

import json
import os

import numpy as np

from .. import alignment
from ..backend import resolve_device
from ..network import mlp
from ..rundir import columns, load_run, load_snapshot, read_rows, snapshot_steps
from .config import ConfigError, build_data, rebuild_loss, shaped_for_net

SERIES_FIELDS = ("K_norm2", "overlap_ratio", "K_layer_norm2", "chi2", "jacobian_norm2", "r_delta_jacobian", "r_chi")


def report_row(report, step, t):
    """A JSON-ready dict of one report (layer arrays as lists, the five factors of E‖Δ^1‖²)."""
    row = {"step": int(step), "t": float(t)}
    for name in SERIES_FIELDS:
        value = getattr(report, name)
        row[name] = None if value is None else (np.asarray(value).tolist() if np.ndim(value) else float(value))
    row["sharpness"] = report.sharpness
    row["components_1"] = report.components(1)
    return row


def _solved_to(row, sharpness):
    """The tol a cached row's sharpness was solved to, as far as a call asking for ``sharpness`` cares: 1e-6
    for rows written before rows recorded it (the default then), infinite for a row without sharpness when
    sharpness is asked for, and 0 (any row will do) when it is not."""
    if not sharpness:
        return 0.0
    if row.get("sharpness") is None:
        return np.inf
    return row.get("tol") or 1e-6


def analyze_run(run_dir, X=None, y=None, every=1, skip=10, progress=True, sharpness=True, chunk_size=None,
                device=None, tol=alignment.SHARPNESS_TOL):
    """The decomposition at the run's θ snapshots, as columns (2024 paper, sections 3–5).

    Snapshots before step ``skip`` are left out (the paper ignores the first
    ten iterations, an initial transient); of the rest, those at steps that
    are multiples of ``every`` are analysed (the paper: every 100). Results
    are cached in ``alignment.jsonl`` beside the run, so a second call only
    computes snapshots it has not seen, or saw with sharpness solved to a
    looser ``tol`` than it asks for (rows record theirs; rows without
    one were solved to 1e-6). The data default to
    the run's own: for a run made by ``nn-eos train`` or ``sweep``, exactly
    the data it trained on (config.training_data, any dataset kind); for a
    run made in Python, its data spec (dice); pass X, y otherwise (flattened
    for the MLP here).
    The analysis runs on ``device`` if given, else on the device the run
    recorded (backend.resolve_device).
    """
    from tqdm.auto import tqdm

    config, metrics, _, result = load_run(run_dir)
    spec = config["net"]
    if spec.get("kind") != "mlp":
        raise ValueError(f"{run_dir}: alignment needs an MLP, the run's net is {spec!r}")
    device = resolve_device(device, config.get("device"))
    if X is None and config.get("experiment") is not None:
        loss = rebuild_loss(run_dir, device)          # the data exactly as the run trained on them
        net, X, y = loss.net, loss.X_host, loss.y_host
    else:
        if X is None:
            try:
                X, y = build_data(config.get("data") or {})
            except (ConfigError, KeyError) as error:
                raise ValueError(f"{run_dir}: cannot rebuild the data from {config.get('data')!r} ({error}); "
                                 f"pass X and y") from None
        X = shaped_for_net({"arch": "mlp"}, np.asarray(X))
        net = mlp(spec["widths"], activation=spec["activation"], dtype=config.get("dtype", "float64"),
                  device=device)
    times = dict(zip(np.asarray(metrics.get("step", []), dtype=int).tolist(), metrics.get("t", [])))
    if result is not None:
        times[result["steps"]] = result["t"]          # the final θ has no metrics row of its own
    cache = os.path.join(run_dir, "alignment.jsonl")
    rows = {row["step"]: row for row in read_rows(cache) if _solved_to(row, sharpness) <= tol}
    steps = [s for s in snapshot_steps(run_dir) if s >= skip and s % every == 0]
    todo = [s for s in steps if s not in rows]
    previous = None                       # the last snapshot's eigenvectors warm-start the next solves
    with open(cache, "a") as f:
        for step in tqdm(todo, disable=not progress, desc=f"alignment of {os.path.basename(os.fspath(run_dir))}"):
            report = alignment.analyze(net, config["criterion"], X, y, theta=load_snapshot(run_dir, step),
                                       sharpness=sharpness, chunk_size=chunk_size, tol=tol, eigenvectors=True,
                                       start=previous)
            previous = report.eigenvectors
            rows[step] = dict(report_row(report, step, times.get(step, np.nan)), tol=tol if sharpness else None)
            f.write(json.dumps(rows[step]) + "\n")
            f.flush()
    return columns([rows[s] for s in steps])


def spectrum_run(run_dir, kind="hessian", every=1, skip=0, steps=80, probes=10, seed=0, device=None,
                 progress=True):
    """The spectral density of ∇²L̃ ('hessian'), G or H at a run's θ snapshots by stochastic Lanczos quadrature
    (nn_eos.spectrum.spectral_density: ``steps`` Lanczos steps from ``probes`` probes), as a list of rows
    {step, t, kind, nodes, weights, …} cached in ``spectrum.jsonl`` beside the run: a second call computes only
    the snapshots (or settings) it has not seen. The loss is rebuilt from the run's config (runs made by
    ``nn-eos train`` or ``nn-eos sweep``), on ``device`` if given, else on the device the run recorded.
    """
    from tqdm.auto import tqdm

    from .. import spectrum
    from ..curvature import KINDS
    from .config import rebuild_loss

    if kind not in KINDS:
        raise ValueError(f"unknown curvature kind {kind!r}; expected one of {KINDS}")
    loss = rebuild_loss(run_dir, device)
    _, metrics, _, result = load_run(run_dir)
    times = dict(zip(np.asarray(metrics.get("step", []), dtype=int).tolist(), metrics.get("t", [])))
    if result is not None:
        times[result["steps"]] = result["t"]
    settings = {"kind": kind, "steps": steps, "probes": probes, "seed": seed}
    cache = os.path.join(run_dir, "spectrum.jsonl")
    rows = {row["step"]: row for row in read_rows(cache)
            if all(row.get(key) == value for key, value in settings.items())}
    wanted = [s for s in snapshot_steps(run_dir) if s >= skip and s % every == 0]
    with open(cache, "a") as f:
        for step in tqdm([s for s in wanted if s not in rows], disable=not progress,
                         desc=f"spectrum of {os.path.basename(os.fspath(run_dir))}"):
            operator = loss.operator(kind, loss.net.check_theta(load_snapshot(run_dir, step)))
            density = spectrum.spectral_density(operator, steps=steps, probes=probes, seed=seed)
            rows[step] = {"step": int(step), "t": float(times.get(step, np.nan)), **settings,
                          "nodes": density.nodes.tolist(), "weights": density.weights.tolist()}
            f.write(json.dumps(rows[step]) + "\n")
            f.flush()
    return [rows[s] for s in wanted]
