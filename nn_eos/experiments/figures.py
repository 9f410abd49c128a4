"""Every figure of both papers, from a run directory or a sweep folder.

``build(path)`` reads the runs (a sweep's runs are coloured by what its grid
varies: dataset size D, learning rate η or number of classes n_c, as the papers
colour them; the seeds of one value share its colour) and returns
``{name: Figure}`` for every figure the runs hold the data for:

2022 paper (telemetry of ``nn-eos train`` with a [telemetry] section)
    rho             Figures 1–2: ρ_{n_c−1} (solid) and ρ_{n_c} (dotted) against t = nη
    projections     Figure 3: ‖P_top g‖ (solid) and ‖P_bulk g‖ (dotted)
    entering        Figure 4: ρ_1 … ρ_{n_c−1} and |d_i| = |h_i · g| of one run
    peak_curvature  Figure 5: λ_1 against t (measured every step by the flows)
    cusp            Figure 6: L̃(θ* + Δ h_1) − L̃(θ*) at the snapshot of peak λ_1 —
                    computed (an eigensolve per run), so only on request
2024 paper (after ``nn-eos analyze --alignment``, or a sweep with analyze = ["alignment"])
    sharpness_G_H   Figures 1, 6–9: λ_1 of ∇²L̃, of H and of G
    overlap         Figures 2, 10–13: ρ(K) and E‖K‖²
    K_layers        Figures 3, 14–18: E‖K^i‖² for every layer i
    components      Figures 4, 19–22: the five factors of E‖Δ^1‖² (eq. 7)
    chi2            Figures 23–27: E(χ^i)²
    r_chi           Figures 28–32: r(χ^i, Δ^i/χ^i)
    jacobian_norms  Figures 33–37: E‖∂x̂^{i+1}/∂x̂^i‖²
    r_jacobian      Figures 38–42: r(Δ^{i+1}, ∂x̂^{i+1}/∂x̂^i)
    power_law       Table 2 drawn: max_t P^1_{Δ,J} against D with the fit of eq. 9
and ``loss`` (L̃ against t) and ``sharpness`` (λ_1 with 2/η for gradient descent).
A sweep whose grid varies more than the colour key gets one figure per group
(named ``<figure>__<group>``).
"""

import os
import re
from dataclasses import dataclass

import numpy as np

from . import plots
from ..rundir import columns, load_run, read_rows

COLOUR_KEYS = (("data.size", "D"), ("integrator.lr", "η"), ("data.classes", "n_c"), ("integrator.lr_max", "η_max"),
               ("net.hidden", "hidden"), ("net.activation", "σ"), ("net.arch", "net"))
ON_REQUEST = ("cusp",)


@dataclass
class RunRecord:
    name: str
    run_dir: str
    config: dict            # config.json
    metrics: dict
    telemetry: list
    alignment: dict         # columns of alignment.jsonl, or None
    colour: object = None   # the value the run is coloured by
    group: str = ""


def _lookup(config, key):
    section, name = key.split(".")
    return (config.get(section) or {}).get(name)


def _record(name, run_dir):
    config, metrics, telemetry, _ = load_run(run_dir)
    cache = os.path.join(run_dir, "alignment.jsonl")
    # one row per step, in step order (an interrupted analysis may have appended a step twice)
    alignment = (columns(sorted({r["step"]: r for r in read_rows(cache)}.values(), key=lambda r: r["step"]))
                 if os.path.exists(cache) else None)
    return RunRecord(name, run_dir, config, metrics, telemetry, alignment)


def collect(path):
    """(records, legend title) of a run directory, a folder of runs (runs/*, as the demo writes) or a sweep
    folder's started runs."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "config.json")):
        return [_record(os.path.basename(os.path.normpath(path)), path)], "run"
    runs = os.path.join(path, "runs")
    if not os.path.exists(os.path.join(path, "sweep.json")) and os.path.isdir(runs):   # a folder of runs (the demo's)
        found = [name for name in sorted(os.listdir(runs)) if os.path.exists(os.path.join(runs, name, "config.json"))]
        if found:
            return [_record(name, os.path.join(runs, name)) for name in found], "run"
    from .tables import load_sweep

    info, runs = load_sweep(path)
    grid = [k for k in info["grid"] if not k.endswith("seed")]
    colour_key, legend = next(((k, t) for k, t in COLOUR_KEYS if k in grid), (None, "run"))
    records = []
    for name, run_config, run_dir in runs:
        if not os.path.exists(os.path.join(run_dir, "config.json")):
            continue
        record = _record(name, run_dir)
        if colour_key is None:
            record.colour = name
        elif colour_key == "data.size":
            record.colour = record.config["num_examples"]
        elif colour_key == "data.classes":
            record.colour = len(_lookup(run_config, colour_key))
        else:
            value = _lookup(run_config, colour_key)
            record.colour = "x".join(map(str, value)) if isinstance(value, list) else value
        record.group = ", ".join(f"{k} = {_lookup(run_config, k)}" for k in grid if k != colour_key)
        records.append(record)
    if not records:
        raise FileNotFoundError(f"{path!r}: no run of this sweep has started yet")
    return records, legend


def _lines(records, legend, x, ys, style="-"):
    """Lines for plots.panel_grid: one per run, coloured by its colour value."""
    colours = plots.colour_scale([r.colour if r.colour is not None else r.name for r in records])
    out = []
    for r in records:
        value = r.colour if r.colour is not None else r.name
        label = f"{legend} = {value}" if legend != "run" else str(value)
        out.append((label, colours[value], style, x(r), ys(r)))
    return out


# ----- 2024 paper: the alignment series ----------------------------------------------

def _alignment_panels(records, legend, title, panels, values, logy=()):
    runs = [r for r in records if r.alignment is not None and len(r.alignment.get("step", []))]
    if not runs:
        return None
    return plots.panel_grid(panels, _lines(runs, legend, lambda r: r.alignment["t"], values), title,
                            legend_title=legend, logy=logy)


def _layers(records, field):
    runs = [r for r in records if r.alignment is not None and len(r.alignment.get(field, []))]
    return len(runs[0].alignment[field][0]) if runs else 0


def _layer_series(field, i):
    return lambda r: [row[i] if row is not None else np.nan for row in r.alignment[field]]


def sharpness_G_H(records, legend):
    names = ("hessian", "residual", "ggn")
    return _alignment_panels(records, legend, r"Sharpness of $\nabla^2\tilde{L}$ (left), $H$ (middle) and $G$ (right)",
                             [r"$\lambda_1(\nabla^2\tilde{L})$", r"$\lambda_1(H)$", r"$\lambda_1(G)$"],
                             lambda r: [[(s or {}).get(n, np.nan) for s in r.alignment["sharpness"]] for n in names])


def overlap(records, legend):
    return _alignment_panels(records, legend, r"Overlap ratio $\rho(K)$ (left) and $\mathbb{E}\|K\|^2$ (right)", [r"$\rho(K)$", r"$\mathbb{E}\|K\|^2$"],
                             lambda r: [r.alignment["overlap_ratio"], r.alignment["K_norm2"]])


def _per_layer(field, label, title):
    def figure(records, legend):
        L = _layers(records, field)
        if not L:
            return None
        return _alignment_panels(records, legend, title, [label(i + 1) for i in range(L)],
                                 lambda r: [_layer_series(field, i)(r) for i in range(L)])
    figure.__doc__ = title
    return figure


K_layers = _per_layer("K_layer_norm2", lambda i: rf"$\mathbb{{E}}\|K^{i}\|^2$", r"$\mathbb{E}\|K^i\|^2 = \mathbb{E}\|\Delta^i\|^2$ of each layer $i$ (eq. 4)")
chi2 = _per_layer("chi2", lambda i: rf"$\mathbb{{E}}(\chi^{i})^2$", r"Mean squared activation ratios $\mathbb{E}(\chi^i)^2$")
r_chi = _per_layer("r_chi", lambda i: rf"$r(\chi^{i}, \Delta^{i}/\chi^{i})$", r"Alignment ratios $r(\chi^i, \Delta^i/\chi^i)$")
jacobian_norms = _per_layer("jacobian_norm2", lambda i: rf"$\mathbb{{E}}\|\partial\hat x^{{{i + 1}}}/\partial\hat x^{i}\|^2$",
                            "Mean squared operator norms of the layerwise Jacobians")
r_jacobian = _per_layer("r_delta_jacobian", lambda i: rf"$r(\Delta^{{{i + 1}}}, \partial\hat x^{{{i + 1}}}/\partial\hat x^{i})$",
                        r"Alignment ratios $r(\Delta^{i+1}, \partial\hat x^{i+1}/\partial\hat x^i)$")

COMPONENTS = (("Pi_chi", r"$\Pi_\chi^1$"), ("P_chi", r"$P^1_{\chi,\Delta/\chi}$"), ("Pi_J", r"$\Pi_J^1$"),
              ("P_J", r"$P^1_{\Delta,J}$"), ("delta_L", r"$\mathbb{E}\|\Delta^L\|^2$"))


def components(records, legend):
    return _alignment_panels(records, legend, r"The five factors of $\mathbb{E}\|\Delta^1\|^2$ (eq. 7)", [t for _, t in COMPONENTS],
                             lambda r: [[c[k] for c in r.alignment["components_1"]] for k, _ in COMPONENTS],
                             logy=range(5))


def power_law(records, legend):
    from ..alignment import power_law as fit

    points = [(r.config["num_examples"], np.nanmax([c["P_J"] for c in r.alignment["components_1"]]))
              for r in records if r.alignment is not None and len(r.alignment.get("step", []))]
    sizes = sorted({d for d, _ in points})
    if len(sizes) < 2:
        return None
    D, peak = np.array(points, dtype=float).T
    c1, c2, r2 = fit(D, peak)
    fig, ax = plots.subplots()
    ax.loglog(D, peak, "o", color=plots.colours(1)[0], label="runs")
    grid = np.geomspace(D.min(), D.max(), 50)
    ax.loglog(grid, c1 * grid ** c2, "k--", lw=1, label=rf"${c1:.3g}\,D^{{{c2:.2f}}}$ ($R^2$ = {r2:.2f})")
    ax.set_xlabel(r"dataset size $D$")
    ax.set_ylabel(r"$\max_t P^1_{\Delta,J}$")
    ax.legend(fontsize=8)
    return plots.finish(fig, ax, None, r"Peak layerwise Jacobian alignment against $D$ (eq. 9, Table 2)")


# ----- 2022 paper: telemetry and metrics ----------------------------------------------

def _telemetry_runs(records):
    """Runs with the 2022 paper's telemetry (eos.Telemetry: rows of eigenvalues)."""
    return [r for r in records if r.telemetry and "eigenvalues" in r.telemetry[0]]


def _fixed_step_runs(records):
    """Runs with telemetry and a fixed learning rate η: ρ_i = ηλ_i/2 is defined for those only (gradient descent;
    for the flows, whose Δt changes every step, the telemetry's ρ would compare λ with a step they never take)."""
    from ..integrators import has_fixed_step

    return [r for r in _telemetry_runs(records) if has_fixed_step(r.config.get("integrator"))]


def rho(records, legend):
    runs = _fixed_step_runs(records)
    if not runs:
        return None
    lines = []
    for style, index in (("-", lambda row: row["n_top"] - 1), (":", lambda row: row["n_top"])):   # ρ_{n_c−1}, ρ_{n_c}
        lines += _lines(runs, legend, lambda r: [row["t"] for row in r.telemetry],
                        lambda r, i=index: [[row["rho"][i(row)] if len(row["rho"]) > i(row) else np.nan
                                             for row in r.telemetry]], style)
    fig = plots.panel_grid([r"$\rho_i = \eta\lambda_i/2$"], lines,
                           r"Edge of stability: $\rho_{n_c-1}$ (solid), $\rho_{n_c}$ (dotted); gradient descent runs",
                           xlabel=r"$t = n\eta$", legend_title=legend)
    fig.axes[0].axhline(1.0, color="k", lw=0.8, ls="--")
    fig.axes[0].axhline(plots.EDGE, color="0.5", lw=0.8, ls="-.")      # "at the edge" as Table 1 counts it
    return fig


def projections(records, legend):
    runs = _telemetry_runs(records)
    if not runs:
        return None
    lines = []
    for style, key in (("-", "top_norm"), (":", "bulk_norm")):
        lines += _lines(runs, legend, lambda r: [row["t"] for row in r.telemetry],
                        lambda r, k=key: [[row[k] for row in r.telemetry]], style)
    return plots.panel_grid([r"$\|P_{\mathrm{top}}\,g\|$, $\|P_{\mathrm{bulk}}\,g\|$"], lines, r"Gradient concentration: $\|P_{\mathrm{top}}\,g\|$ (solid), $\|P_{\mathrm{bulk}}\,g\|$ (dotted)",
                            xlabel=r"$t = n\eta$", legend_title=legend, logy=(0,))


def entering(records, legend):
    runs = _fixed_step_runs(records)
    if not runs:
        return None
    # the run that goes deepest into the edge (the paper shows one AlexNet-ReLU run at η = 0.001)
    run = max(runs, key=lambda r: max(row["rho"][row["n_top"] - 1] for row in r.telemetry))
    n_top = run.telemetry[0]["n_top"]
    t = [row["t"] for row in run.telemetry]
    colours = plots.colours(n_top)
    lines = [(f"i = {i + 1}", colours[i], "-", t, [[row["rho"][i] for row in run.telemetry],
                                                   [abs(row["d"][i]) for row in run.telemetry]])
             for i in range(n_top)]
    return plots.panel_grid([r"$\rho_i$", r"$|d_i| = |h_i \cdot g|$"], lines,
                            rf"Entering the edge of stability ({run.name}): $\rho_1 \ldots \rho_{{{n_top}}}$ and $|d_i|$",
                            xlabel=r"$t = n\eta$", legend_title="eigenpair", logy=(1,))


def peak_curvature(records, legend):
    runs = [r for r in records if "lambda_1" in r.metrics and np.any(np.isfinite(r.metrics["lambda_1"]))]
    if not runs:
        return None
    lines = _lines(runs, legend, lambda r: r.metrics["t"], lambda r: [r.metrics["lambda_1"]])
    return plots.panel_grid([r"$\lambda_1$"], lines, r"Peak curvature: $\lambda_1$ along the gradient flow", legend_title=legend)


def loss(records, legend):
    lines = _lines(records, legend, lambda r: r.metrics.get("t", []), lambda r: [r.metrics.get("loss", [])])
    return plots.panel_grid([r"training loss $\tilde{L}$"], lines, "Training loss", legend_title=legend, logy=(0,))


def _adaptive_sharpness(runs, legend):
    """Full-batch Adam and RMSProp runs: λ₁(P⁻¹∇²L̃) where measured, the threshold (2 + 2β₁)/((1 − β₁)η) dashed."""
    def measured(r):
        return np.isfinite(np.asarray(r.metrics["preconditioned_sharpness"], dtype=float))

    lines = _lines(runs, legend, lambda r: np.asarray(r.metrics["t"])[measured(r)],
                   lambda r: [np.asarray(r.metrics["preconditioned_sharpness"], dtype=float)[measured(r)]])
    fig = plots.panel_grid([r"$\lambda_1(P^{-1}\nabla^2\tilde L)$"], lines,
                           r"Preconditioned sharpness (its threshold $(2 + 2\beta_1)/((1 - \beta_1)\eta)$ dashed)",
                           legend_title=legend, logy=(0,))
    for (_, colour, _, _, _), r in zip(lines, runs):
        threshold = np.asarray(r.metrics["threshold"], dtype=float)
        fig.axes[0].axhline(threshold[np.isfinite(threshold)][0], color=colour, ls="--", lw=0.8)
    return fig


def sharpness(records, legend):
    runs = _telemetry_runs(records)
    adaptive = [r for r in records if "preconditioned_sharpness" in r.metrics
                and np.any(np.isfinite(np.asarray(r.metrics["preconditioned_sharpness"], dtype=float)))]
    if not runs and adaptive:
        return _adaptive_sharpness(adaptive, legend)
    if not runs:
        return peak_curvature(records, legend)
    lines = _lines(runs, legend, lambda r: [row["t"] for row in r.telemetry],
                   lambda r: [[row["eigenvalues"][0] for row in r.telemetry]])
    fig = plots.panel_grid([r"$\lambda_1$"], lines, r"Sharpness $\lambda_1$ ($2/\eta$ dashed for gradient descent)", legend_title=legend)
    for (_, colour, _, _, _), r in zip(lines, runs):
        lr = (r.config.get("integrator") or {}).get("lr")
        if lr:
            fig.axes[0].axhline(2.0 / lr, color=colour, ls="--", lw=0.8)
    return fig


def sharpened_peak(steps, lam):
    """The step where progressive sharpening peaks: the largest λ_1 after the lowest λ_1 of the run's first half.

    The 2022 paper's Figure 6 looks at θ* where gradient flow has sharpened the
    most; the largest λ_1 of a run can instead be at initialisation, before an
    early drop. Returns (step, True), or (step of the largest λ_1, False) where
    λ_1 never rises after its early low (no sharpening to look at).
    """
    steps, lam = np.asarray(steps), np.asarray(lam, dtype=float)
    finite = np.isfinite(lam)
    steps, lam = steps[finite], lam[finite]
    low = int(np.argmin(lam[:max(len(lam) // 2, 1)]))
    peak = low + int(np.argmax(lam[low:]))
    if lam[peak] > lam[low]:
        return int(steps[peak]), True
    return int(steps[int(np.argmax(lam))]), False


def cusp(records, legend, points=41, device=None):
    """Figure 6 of the 2022 paper: the loss along h_1 at the snapshot nearest each run's sharpened peak
    (:func:`sharpened_peak`)."""
    from .config import rebuild_loss
    from ..eos import cusp_scan
    from ..rundir import load_snapshot, snapshot_steps

    lines = []
    runs = [r for r in records if snapshot_steps(r.run_dir)]
    colours = plots.colour_scale([r.colour if r.colour is not None else r.name for r in runs])
    for r in runs:
        steps = snapshot_steps(r.run_dir)
        if "lambda_1" in r.metrics and np.any(np.isfinite(r.metrics["lambda_1"])):
            peak, sharpened = sharpened_peak(r.metrics["step"], r.metrics["lambda_1"])
        elif r.telemetry:
            peak, sharpened = sharpened_peak([row["step"] for row in r.telemetry],
                                             [row["eigenvalues"][0] for row in r.telemetry])
        else:
            peak, sharpened = steps[-1], False
        nearest = min(steps, key=lambda s: abs(s - peak))
        training_loss = rebuild_loss(r.run_dir, device)
        deltas, change, lam = cusp_scan(training_loss, load_snapshot(r.run_dir, nearest), points=points)
        value = r.colour if r.colour is not None else r.name
        label = f"{legend} = {value}" if legend != "run" else str(value)
        where = "sharpened peak" if sharpened else "largest λ_1: no sharpening"
        lines.append((f"{label} (λ_1 = {lam:.3g}, step {nearest}, {where})", colours[value], "-", deltas, [change]))
    if not lines:
        return None
    return plots.panel_grid([r"$\tilde{L}(\theta^* + \Delta h_1) - \tilde{L}(\theta^*)$"], lines, r"Cusp formation: the loss along $h_1$ where progressive sharpening peaks",
                            xlabel=r"$\Delta$ along $h_1$", legend_title=legend)


# ----- beyond the papers: self-stabilisation (docs/self_stabilization.md) -------------------------------------

def self_stabilization(records, legend):
    """Damian et al.'s picture: S, loss, x and y of GD (solid) beside the constrained trajectory and the model
    (dotted): S(θ†), L̃(θ†) + S(θ†) x²/2, x* and y*; 2/η dashed."""
    runs = [r for r in records if r.telemetry and "x" in r.telemetry[0]]
    if not runs:
        return None

    def series(*keys):
        return lambda r: [[np.nan if row[k] is None else row[k] for row in r.telemetry] for k in keys]

    steps = lambda r: [row["step"] for row in r.telemetry]          # noqa: E731
    lines = (_lines(runs, legend, steps, series("sharpness", "loss", "x", "y"))
             + _lines(runs, legend, steps, series("constrained_sharpness", "loss_predicted", "x_predicted",
                                                  "y_predicted"), ":"))
    fig = plots.panel_grid([r"$S = \lambda_1$", r"$\tilde{L}$", r"$x = u\cdot(\theta - \theta^\dagger)$",
                            r"$y \approx S - 2/\eta$"], lines,
                           r"Self-stabilisation: GD (solid) against $\theta^\dagger$ and the model (dotted)",
                           xlabel="step", legend_title=legend, logy=(1,), ncols=2)
    for (_, colour, _, _, _), r in zip(lines, runs):
        fig.axes[0].axhline(2.0 / r.telemetry[0]["eta"], color=colour, ls="--", lw=0.8)
    for ax in fig.axes[2:4]:                # the model can blow up: keep the measured range in view
        measured = [v for line in ax.lines[:len(runs)] for v in line.get_ydata() if np.isfinite(v)]
        if measured:
            span = 1.5 * max(abs(min(measured)), abs(max(measured)), 1e-12)
            ax.set_ylim(-span, span)
    return fig


def spectrum(records, legend):
    """The spectral density of ∇²L̃ (or G, H) along each run, one line per analysed snapshot, coloured by t, on a log
    scale: the top outliers separating from the bulk (after ``nn-eos analyze --spectrum``)."""
    from ..rundir import read_rows
    from ..spectrum import Density

    runs = []
    for r in records:
        path = os.path.join(r.run_dir, "spectrum.jsonl")
        rows = sorted({row["step"]: row for row in read_rows(path)}.values(), key=lambda row: row["step"]) \
            if os.path.exists(path) else []
        if rows:
            runs.append((r, rows))
    if not runs:
        return None
    fig, axes = plots.subplots(1, len(runs), squeeze=False, figsize=(5.2 * len(runs), 4.2))
    for ax, (r, rows) in zip(axes[0], runs):
        densities = [Density(np.array(row["nodes"]), np.array(row["weights"]), 0) for row in rows]
        nodes = np.concatenate([d.nodes[d.weights > 0] for d in densities])
        low, high = nodes.min(), nodes.max()
        margin = 0.05 * (high - low or 1.0)
        grid = np.linspace(low - margin, high + margin, 1000)
        width = (high - low or 1.0) / 150
        colours = plots.colours(len(rows))
        for row, density, colour in zip(rows, densities, colours):
            ax.plot(grid, np.maximum(density.smoothed(grid, width), 1e-12), color=colour, lw=1.0,
                    label=f"t = {row['t']:.3g}")
        ax.set_yscale("log")
        ax.set_ylim(bottom=1e-6)
        ax.set_xlabel(r"$\lambda$")
        ax.set_ylabel("spectral density")
        ax.set_title(f"{r.name}: {rows[0]['kind']}, {rows[0]['steps']} Lanczos steps × {rows[0]['probes']} probes",
                     fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Spectral density along the run (stochastic Lanczos quadrature)")
    fig.tight_layout()
    return fig


FIGURES = {"loss": loss, "sharpness": sharpness, "rho": rho, "projections": projections, "entering": entering,
           "peak_curvature": peak_curvature, "cusp": cusp, "sharpness_G_H": sharpness_G_H, "overlap": overlap,
           "K_layers": K_layers, "components": components, "chi2": chi2, "r_chi": r_chi,
           "jacobian_norms": jacobian_norms, "r_jacobian": r_jacobian, "power_law": power_law,
           "self_stabilization": self_stabilization, "spectrum": spectrum}


def build(path, names=None, device=None):
    """{figure name: Figure} for a run directory or sweep folder (module docstring).

    ``names``: only these figures (``cusp`` is drawn only when named, since it
    computes an eigenvector per run, on ``device`` if given, else on the
    device the run recorded); unknown names raise ValueError.
    """
    if names is not None:
        unknown = sorted(set(names) - set(FIGURES))
        if unknown:
            raise ValueError(f"no figure named {unknown}; the figures are {sorted(FIGURES)}")
    records, legend = collect(path)
    groups = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    out = {}
    for name in names if names is not None else [n for n in FIGURES if n not in ON_REQUEST]:
        for group, runs in groups.items():
            fig = FIGURES[name](runs, legend, device=device) if name in ON_REQUEST else FIGURES[name](runs, legend)
            if fig is None:
                continue
            if group:
                fig.suptitle(f"{fig._suptitle.get_text()}  [{group}]" if fig._suptitle else group, x=0.02,
                             ha="left", fontsize=10)
            out[name if len(groups) == 1 else f"{name}__{re.sub(r'[^A-Za-z0-9.=-]+', '_', group)}"] = fig
    return out


def save(figures, folder, formats=("png", "pdf")):
    """Write each figure as PNG and PDF into ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        for ext in formats:
            paths.append(os.path.join(folder, f"{name}.{ext}"))
            fig.savefig(paths[-1], dpi=110)
    return paths


def paper_figures(path, names=None, folder=None):
    """Every figure of both papers the runs in ``path`` (a run directory or sweep folder) hold data for.

    Returns ``{name: Figure}`` (see ``FIGURES`` above for the names and the
    papers' figure numbers); with ``folder``, also writes each as PNG and PDF.
    """
    made = build(path, names)
    if folder is not None:
        save(made, folder)
    return made
