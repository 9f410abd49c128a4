"""The ``nn-eos`` command.

A user's mistake (a bad config, a missing path, a run directory that exists)
is one line on stderr and exit status 2; Ctrl-C says where the checkpoint is
and exits with 130. ``--debug`` (or ``NN_EOS_DEBUG=1``) shows the traceback
instead.
"""

import argparse
import os
import sys
import warnings

from ..alignment import SHARPNESS_TOL
from ..backend import DEVICES, keep_freed_memory

FIGURE_NAMES = ("loss", "sharpness", "rho", "projections", "entering", "peak_curvature", "cusp", "sharpness_G_H",
                "overlap", "K_layers", "components", "chi2", "r_chi", "jacobian_norms", "r_jacobian", "power_law",
                "self_stabilization", "spectrum")


class UserError(Exception):
    """What the user asked for cannot be done; the message says why, in the command line's words."""


def _demo(args):
    from .demo import run_demo

    overrides = {}
    if args.n is not None:
        overrides["n"] = args.n
    if args.max_time is not None:
        overrides["max_time"] = args.max_time
    run_demo(out=args.out, quick=args.quick, progress=not args.no_progress, device=args.device,
             threads=args.threads, **overrides)


def _data(args):
    import numpy as np

    from .. import datasets

    from . import plots

    os.makedirs(args.out, exist_ok=True)
    for split in ("train", "test"):
        X, y = datasets.dice(split, n=args.n, seed=args.seed)
        path = os.path.join(args.out, f"dice_{split}.npz")
        np.savez_compressed(path, X=X, y=y)
        print(f"wrote {path}: X {X.shape}, y {y.shape}")
    X, y = datasets.dice("train", n=60, seed=args.seed)
    plots.dice_examples(X, y, path=os.path.join(args.out, "dice_examples.png"))
    print(f"wrote {os.path.join(args.out, 'dice_examples.png')}")


def _train(args):
    from . import config

    cfg = config.load(args.config)
    out = args.out or os.path.join("runs", os.path.splitext(os.path.basename(args.config))[0])
    has_run = os.path.exists(os.path.join(out, "checkpoint.npz"))
    if has_run and not args.resume:
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if args.resume and not has_run:
        print(f"nothing to resume in {out}: starting a new run there", file=sys.stderr)
    args.resume_hint = f"nn-eos train {args.config} --out {out} --resume"
    run = config.run(cfg, out, device=args.device, resume=args.resume, progress=not args.no_progress,
                     threads=args.threads, scheduler=args.scheduler)
    print(f"{run.status}: {run.message}\nrun directory: {os.path.abspath(out)}")


def _run_directories(path):
    """The run directories under ``path``: itself (config.json), or its runs/* (a demo's or example's folder)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return [path]
    runs = os.path.join(path, "runs")
    found = sorted(os.path.join(runs, name) for name in os.listdir(runs)) if os.path.isdir(runs) else []
    return [run_dir for run_dir in found if os.path.exists(os.path.join(run_dir, "config.json"))]


def _analyze(args):
    path = args.run_dir
    if not os.path.exists(path):
        raise UserError(f"{path} does not exist")
    if os.path.exists(os.path.join(path, "sweep.json")):
        from . import tables

        _, runs = tables.load_sweep(path)
        started = [run_dir for _, _, run_dir in runs if os.path.exists(os.path.join(run_dir, "config.json"))]
        for run_dir in started:
            _analyze_run(run_dir, args)
        names = [n for n in ("table1", "table2") if n != "table2" or args.alignment]
        written = tables.write_tables(path, names)
        for name in names:
            print(f"\n{tables.TITLES[name]}\n{tables.markdown(written[name])}")
        print(f"{len(started)} of {len(runs)} runs analysed; tables in {os.path.join(path, 'tables')}")
        return
    run_dirs = _run_directories(path)
    if not run_dirs:
        raise UserError(f"{path} is not a run directory (config.json), a folder of runs (runs/*/config.json, as "
                        f"the demo writes) or a sweep folder (sweep.json)")
    for run_dir in run_dirs:
        _analyze_run(run_dir, args)


def _analyze_run(run_dir, args):
    import numpy as np

    from .. import eos
    from ..integrators import has_fixed_step
    from .analysis import analyze_run
    from ..rundir import load_run

    cfg, metrics, telemetry, result = load_run(run_dir)
    print(f"{run_dir}: {len(metrics.get('step', []))} steps, "
          f"{'status ' + result['status'] if result else 'not finished'}")
    if args.eos or not (args.alignment or args.spectrum):
        if not telemetry:
            print("  no telemetry in this run (add a [telemetry] section to the config)")
        elif "x" in telemetry[0]:
            edge = 2 / telemetry[0]["eta"]
            share = [row["sharpness"] / edge for row in telemetry]
            print(f"  self-stabilisation telemetry: {len(telemetry)} rows; S/(2/η) from {min(share):.3f} to "
                  f"{max(share):.3f}; ‖θ − θ†‖ up to {max(row['deviation_norm'] for row in telemetry):.3g} "
                  f"(examples/self_stabilization.py tests Damian et al.'s claims on such runs)")
        else:
            n_top = telemetry[0]["n_top"]
            rho = np.array([r["rho"] for r in telemetry])
            fixed_step = has_fixed_step(cfg.get("integrator"))
            print(f"  2022 telemetry: {len(telemetry)} measurements; max ρ_i over t: "
                  + ", ".join(f"ρ_{i + 1} = {v:.3f}" for i, v in enumerate(rho.max(axis=0)))
                  + ("" if fixed_step else " (a flow: ρ_i = Δt λ_i / 2 with its own changing step Δt, not a fixed η)"))
            print("  " + eos.describe_bulk_claim(eos.bulk_claim(telemetry, n_top + 1), n_top + 1))
    if args.alignment:
        series = analyze_run(run_dir, every=args.every, skip=args.skip, device=args.device, tol=args.tol)
        if len(series.get("step", [])) == 0:
            print("  no snapshots to analyse (train with train.snapshot_every)")
            return
        first = [c["P_J"] for c in series["components_1"]]
        print(f"  alignment over {len(series['step'])} snapshots: max ρ(K) = {np.nanmax(series['overlap_ratio']):.3f}, "
              f"E‖K‖² from {series['K_norm2'][0]:.4g} to {series['K_norm2'][-1]:.4g}, "
              f"P^1_Δ,J grew ×{np.nanmax(np.array(first) / first[0]):.2f}")
    if args.spectrum:
        from .analysis import spectrum_run

        try:
            rows = spectrum_run(run_dir, kind=args.spectrum, every=args.every, skip=args.spectrum_skip,
                                steps=args.lanczos_steps, probes=args.probes, device=args.device)
        except FileNotFoundError as error:
            raise UserError(str(error)) from None
        if not rows:
            print("  no snapshots to analyse (train with train.snapshot_every)")
            return
        top = [max(node for node, weight in zip(sum(row["nodes"], []), sum(row["weights"], [])) if weight > 0)
               for row in rows]
        print(f"  spectrum of {args.spectrum} at {len(rows)} snapshots ({args.lanczos_steps} Lanczos steps × "
              f"{args.probes} probes, cached in spectrum.jsonl): largest Ritz value from {top[0]:.4g} to "
              f"{top[-1]:.4g}; `nn-eos plot {run_dir} --figure spectrum` draws the densities")


def _plot(args):
    from . import figures

    made = figures.build(args.path, args.figure, device=args.device)
    if not made:
        raise UserError(f"nothing to draw for {args.path} yet" + (
            f" (the figures {', '.join(args.figure)} need data this run does not hold)" if args.figure else ""))
    folder = os.path.join(args.path, "figures")
    figures.save(made, folder)
    print(f"wrote {len(made)} figures to {folder}: {', '.join(made)} (PNG and PDF)")


def _sweep(args):
    from . import sweep, tables

    spec = sweep.load(args.sweep)
    out = args.out or os.path.join("sweeps_out", spec.name)
    runs = spec.runs()
    print(f"sweep {spec.name}: {len(runs)} runs into {os.path.abspath(out)}")
    result = sweep.run_sweep(spec, out, workers=args.workers, scheduler=args.scheduler, device=args.device,
                             progress=not args.no_progress, threads=args.threads)
    statuses = [s["status"] for s in result["runs"].values()]
    failed = [name for name, s in result["runs"].items() if s["status"] == "failed"]
    unanalysed = [name for name, s in result["runs"].items() if s["status"] == sweep.ANALYSIS_FAILED]
    print(f"{len(statuses) - len(failed) - len(unanalysed)} runs finished "
          f"({statuses.count('skipped (finished)')} already were), "
          + (f"{len(unanalysed)} trained but their analysis failed: {', '.join(unanalysed)} (see "
             f"analysis_error.txt in each; the same command again redoes only the analysis), " if unanalysed else "")
          + f"{len(failed)} failed" + (f": {', '.join(failed)} (see error.txt in each)" if failed else ""))
    for name, rows in result["tables"].items():
        if name != "runs":
            print(f"\n{tables.TITLES[name]}\n{tables.markdown(rows)}")
    print(f"tables in {os.path.join(out, 'tables')}")
    if failed or unanalysed:
        raise SystemExit(1)


class _HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, where it has one and its help does not say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


class _ListingHelpFormatter(_HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The same, keeping the description's line breaks (a listing)."""


DEVICE_HELP = ("where to compute: cpu (NumPy), gpu (CuPy) or strict (a CPU stand-in that refuses host/device mixing); "
               "default: NN_EOS_DEVICE, else {fallback}")
THREADS_HELP = ("BLAS threads per run (recorded with the run; a resumed run keeps its own count; default: {default}, "
                "which runs fastest at this scale and never oversubscribes the cores)")


def _add_run_options(parser, threads_default="1"):
    """--device, --threads and --no-progress: the options of every command that trains."""
    parser.add_argument("--device", choices=DEVICES, help=DEVICE_HELP.format(fallback="cpu"))
    parser.add_argument("--threads", type=int, help=THREADS_HELP.format(default=threads_default))
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=bool(os.environ.get("NN_EOS_DEBUG")),
                        help="show Python tracebacks for errors (also: NN_EOS_DEBUG=1)")
    parser = argparse.ArgumentParser(prog="nn-eos", description="Why neural network training runs on the edge of "
                                     "stability: exact curvature and the measurements of Lowell (2022) and "
                                     "Lowell & Kastner (2024).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, help, description, run, listing=False):
        sub = commands.add_parser(name, help=help, description=description, parents=[common],
                                  formatter_class=_ListingHelpFormatter if listing else _HelpFormatter)
        sub.set_defaults(run=run)
        return sub

    demo = command("demo", "laptop-scale reproduction on dice (about 2.5 minutes on 2 CPU cores)",
                   "Gradient descent at two learning rates with the 2022 paper's telemetry (ρ_i = ηλ_i/2 over "
                   "t = nη, top/bulk gradient projections and the loss change of a step along each), and exponential "
                   "Euler (2024 paper) beside it, on a dice subset. Writes the runs, figures and a summary saying "
                   "whether each claim holds here. Running it again reuses finished runs and resumes unfinished ones.",
                   _demo)
    demo.add_argument("--out", default="nn_eos_demo", help="folder for runs, figures and summary")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run at a tiny scale")
    demo.add_argument("--n", type=int, help="number of dice training images (default: 1000, --quick: 120)")
    demo.add_argument("--max-time", type=float, help="train each run until this t (default: 40, --quick: 4)")
    _add_run_options(demo)

    train = command("train", "one run from a TOML config",
                    "Train one network as a TOML config describes ([data], [net], [criterion], [integrator], "
                    "[train], [telemetry]; the keys are listed in the README and in nn_eos/experiments/config.py), "
                    "writing a resumable run directory: config, per-step metrics (loss, Δt, λ_1), the 2022 "
                    "paper's telemetry, θ snapshots and a checkpoint.", _train)
    train.add_argument("config", help="the TOML file")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--scheduler", help="shard the run's products over the workers of this Dask scheduler, e.g. "
                                           "tcp://10.0.0.5:8786 (default: the config's cluster.scheduler; "
                                           "docs/sharded.md)")
    _add_run_options(train, "the config's train.threads, else 1")

    analyze = command("analyze", "the papers' measurements over a run",
                      "With no flag, or --eos: the 2022 paper's telemetry summary (max ρ_i = ηλ_i/2, and Table 1's "
                      "top/bulk loss changes while ρ_{n_c−1} > 0.7). --alignment: the 2024 paper's decomposition "
                      "(ρ(K), E‖K‖², the five factors of E‖Δ^1‖²) at every snapshot, cached in alignment.jsonl "
                      "beside the run.", _analyze)
    analyze.add_argument("run_dir", help="a run directory, a folder of runs (the demo's --out), or a sweep folder "
                         "(every run, then its tables)")
    analyze.add_argument("--eos", action="store_true", help="the 2022 telemetry summary (what runs with no flag)")
    analyze.add_argument("--alignment", action="store_true", help="the 2024 decomposition at the run's snapshots")
    analyze.add_argument("--every", type=int, default=1, help="analyse snapshots at multiples of this step")
    analyze.add_argument("--skip", type=int, default=10, help="skip the first steps (the paper: 10)")
    analyze.add_argument("--tol", type=_positive, default=SHARPNESS_TOL,
                         help="--alignment: relative residual of the λ_1 solves of ∇²L̃, G and H (default "
                              "%(default)g, where λ_1 comes out to ~1e-7: its error goes like the square); rows "
                              "cached at a looser tol are computed again")
    analyze.add_argument("--spectrum", nargs="?", const="hessian", choices=("hessian", "ggn", "residual"),
                         help="the spectral density of ∇²L̃ (or ggn, residual) at the run's snapshots by stochastic "
                              "Lanczos quadrature, cached in spectrum.jsonl (runs made by nn-eos train or sweep)")
    analyze.add_argument("--lanczos-steps", type=int, default=80, help="--spectrum: Lanczos steps per probe")
    analyze.add_argument("--probes", type=int, default=10, help="--spectrum: random probes")
    analyze.add_argument("--spectrum-skip", type=int, default=0, help="--spectrum: skip snapshots before this step")
    analyze.add_argument("--device", choices=DEVICES, help=DEVICE_HELP.format(fallback="the device the run used"))

    plot = command("plot", "the papers' figures of a run or a sweep, as PNG and PDF",
                   "Every figure the runs hold data for, into PATH/figures:\n"
                   "  2022 paper: rho (Figures 1–2), projections (3), entering (4), peak_curvature (5),\n"
                   "    cusp (6; computed, so only with --figure cusp);\n"
                   "  2024 paper, after `nn-eos analyze --alignment`: sharpness_G_H (Figures 1, 6–9),\n"
                   "    overlap (2, 10–13), K_layers (3, 14–18), components (4, 19–22), chi2 (23–27),\n"
                   "    r_chi (28–32), jacobian_norms (33–37), r_jacobian (38–42), power_law (Table 2);\n"
                   "  beyond the papers: self_stabilization (runs with [self_stabilization]), spectrum (after\n"
                   "    `nn-eos analyze --spectrum`);\n"
                   "  and loss, sharpness. A sweep's runs are coloured by dataset size, learning rate or\n"
                   "  number of classes, as in the papers.", _plot, listing=True)
    plot.add_argument("path", help="a run directory, a folder of runs (the demo's --out), or a sweep folder")
    plot.add_argument("--figure", nargs="+", choices=FIGURE_NAMES, metavar="NAME",
                      help=f"only these figures: {', '.join(FIGURE_NAMES)}")
    plot.add_argument("--device", choices=DEVICES, help=DEVICE_HELP.format(fallback="the device the run used") +
                      " (only the cusp figure computes)")

    sweep = command("sweep", "a grid of runs on Dask, and its aggregate tables",
                    "Run every combination of a sweep file's [grid] over its [base] run config (e.g. Table 1 of "
                    "the 2024 paper: subset sizes × 4 init seeds × 4 subset seeds), each as a resumable run "
                    "directory under OUT/runs, then the aggregates its [sweep] section asks for: the 2022 paper's "
                    "Table 1 (top/bulk loss changes at the edge) and the 2024 paper's Table 2 (power law of peak "
                    "P^1_Δ,J against dataset size). Running it again skips finished runs and resumes unfinished "
                    "ones. Runs on a Dask LocalCluster (one worker per core) or on a running Dask cluster "
                    "(--scheduler, e.g. from dask-jobqueue on SLURM/PBS; see the README).", _sweep)
    sweep.add_argument("sweep", help="the sweep TOML file (see sweeps/)")
    sweep.add_argument("--out", help="sweep folder (default: sweeps_out/<sweep name>)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="LocalCluster worker processes (default: one per core, or per GPU with --device gpu; "
                       "0 runs in this process without Dask)")
    sweep.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    _add_run_options(sweep, "the base config's train.threads, else 1")

    data = command("data", "write a built-in dataset to files", "Write the dice dataset's train and test splits "
                   "as .npz files, and a preview image.", _data)
    data.add_argument("name", choices=["dice"])
    data.add_argument("--out", required=True, help="folder for dice_train.npz, dice_test.npz and a preview")
    data.add_argument("--n", type=int, default=None, help="images per split (default: all 60,000)")
    data.add_argument("--seed", type=int, default=0)
    return parser


def _positive(text):
    """An argparse type: a positive float."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _user_errors():
    from .config import ConfigError

    return (UserError, ConfigError, OSError, ValueError)


def _one_line_warnings(message, category, filename, lineno, line=None):
    return f"nn-eos: warning: {message}\n"


def main(argv=None):
    keep_freed_memory()                        # an application: freed memory is kept for reuse (backend.py)
    args = build_parser().parse_args(argv)
    if not args.debug:
        warnings.formatwarning = _one_line_warnings
    try:
        args.run(args)
    except KeyboardInterrupt as interrupt:
        if args.debug:
            raise
        print(f"\nnn-eos {args.command}: {_interrupted(args, interrupt)}", file=sys.stderr)
        return 130
    except _user_errors() as error:
        if args.debug:
            raise
        print(f"nn-eos {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


def _interrupted(args, interrupt):
    """What Ctrl-C left behind and how to go on, in the command line's words."""
    run_dir, step = getattr(interrupt, "run_dir", None), getattr(interrupt, "step", None)
    if args.command == "train" and run_dir is not None:
        return (f"interrupted at step {step}: checkpoint written to {run_dir}; `{args.resume_hint}` continues")
    if args.command in ("demo", "sweep"):
        return "interrupted; the same command again continues (finished runs are kept, the others resume)"
    return "interrupted"


if __name__ == "__main__":
    sys.exit(main())
