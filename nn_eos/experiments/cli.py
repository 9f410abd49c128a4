"""The ``nn-eos`` command."""

import argparse
import os
import sys


def _demo(args):
    from .demo import run_demo

    overrides = {}
    if args.n is not None:
        overrides["n"] = args.n
    if args.max_time is not None:
        overrides["max_time"] = args.max_time
    run_demo(out=args.out, quick=args.quick, progress=not args.no_progress, **overrides)


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
    run = config.run(cfg, out, device=args.device, resume=args.resume, progress=not args.no_progress)
    print(f"{run.status}: {run.message}\nrun directory: {os.path.abspath(out)}")


def _analyze(args):
    path = args.run_dir
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
    elif os.path.exists(os.path.join(path, "config.json")):
        _analyze_run(path, args)
    else:
        raise SystemExit(f"nn-eos analyze: {path!r} is neither a run directory (config.json) nor a sweep folder "
                         f"(sweep.json)")


def _analyze_run(run_dir, args):
    import numpy as np

    from .. import eos
    from .analysis import analyze_run
    from ..rundir import load_run

    cfg, metrics, telemetry, result = load_run(run_dir)
    print(f"{run_dir}: {len(metrics.get('step', []))} steps, "
          f"{'status ' + result['status'] if result else 'not finished'}")
    if args.eos or not args.alignment:
        if not telemetry:
            print("  no telemetry in this run (add a [telemetry] section to the config)")
        else:
            n_top = telemetry[0]["n_top"]
            rho = np.array([r["rho"] for r in telemetry])
            print(f"  2022 telemetry: {len(telemetry)} measurements; max ρ_i over t: "
                  + ", ".join(f"ρ_{i + 1} = {v:.3f}" for i, v in enumerate(rho.max(axis=0))))
            print("  " + eos.describe_bulk_claim(eos.bulk_claim(telemetry, n_top + 1), n_top + 1))
    if args.alignment:
        series = analyze_run(run_dir, every=args.every, skip=args.skip)
        if len(series.get("step", [])) == 0:
            print("  no snapshots to analyse (train with train.snapshot_every)")
            return
        first = [c["P_J"] for c in series["components_1"]]
        print(f"  alignment over {len(series['step'])} snapshots: max ρ(K) = {np.nanmax(series['overlap_ratio']):.3f}, "
              f"E‖K‖² from {series['K_norm2'][0]:.4g} to {series['K_norm2'][-1]:.4g}, "
              f"P^1_Δ,J grew ×{np.nanmax(np.array(first) / first[0]):.2f}")


def _plot(args):
    from . import figures

    try:
        made = figures.build(args.path, args.figure)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"nn-eos plot: {error}") from None
    if not made:
        raise SystemExit(f"nn-eos plot: nothing to draw for {args.path} yet" + (
            f" (the figures {args.figure} need data this run does not hold)" if args.figure else ""))
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
                             progress=not args.no_progress)
    statuses = [s["status"] for s in result["runs"].values()]
    failed = [name for name, s in result["runs"].items() if s["status"] == "failed"]
    print(f"{len(statuses) - len(failed)} runs finished ({statuses.count('skipped (finished)')} already were), "
          f"{len(failed)} failed" + (f": {', '.join(failed)} (see error.txt in each)" if failed else ""))
    for name, rows in result["tables"].items():
        if name != "runs":
            print(f"\n{tables.TITLES[name]}\n{tables.markdown(rows)}")
    print(f"tables in {os.path.join(out, 'tables')}")
    if failed:
        raise SystemExit(1)


def build_parser():
    parser = argparse.ArgumentParser(prog="nn-eos", description="Why neural network training runs on the edge of "
                                     "stability: exact curvature and the measurements of Lowell (2022) and "
                                     "Lowell & Kastner (2024).")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="laptop-scale reproduction on dice (a few minutes on 2 CPU cores)",
                               description="Gradient descent at two learning rates with the 2022 paper's telemetry "
                               "(ρ_i = ηλ_i/2 over t = nη, top/bulk gradient projections and the loss change of a "
                               "step along each), and exponential Euler (2024 paper) beside it, on a dice subset. "
                               "Writes the runs, figures and a summary saying whether each claim holds here.")
    demo.add_argument("--out", default="nn_eos_demo", help="folder for runs, figures and summary (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a seconds-long smoke run at a tiny scale")
    demo.add_argument("--n", type=int, help="number of dice training images (default 1000)")
    demo.add_argument("--max-time", type=float, help="train each run until this t (default 40)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)
    train = commands.add_parser("train", help="one run from a TOML config",
                                description="Train one network as a TOML config describes ([data], [net], [criterion], "
                                "[integrator], [train], [telemetry]; see nn_eos/experiments/config.py), writing a resumable run "
                                "directory: config, per-step metrics (loss, Δt, λ_1), the 2022 paper's telemetry, θ "
                                "snapshots and a checkpoint.")
    train.add_argument("config", help="the TOML file")
    train.add_argument("--out", help="run directory (default: runs/<config name>)")
    train.add_argument("--device", choices=["cpu", "gpu"], default=None)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)
    analyze = commands.add_parser("analyze", help="the papers' measurements over a run",
                                  description="--eos: the 2022 paper's telemetry summary (max ρ_i = ηλ_i/2, Table 1's "
                                  "top/bulk loss changes while ρ_{n_c−1} > 0.7). --alignment: the 2024 paper's "
                                  "decomposition (ρ(K), E‖K‖², the five factors of E‖Δ^1‖²) at every snapshot, "
                                  "cached in alignment.jsonl beside the run.")
    analyze.add_argument("run_dir", help="a run directory, or a sweep folder (every run, then its tables)")
    analyze.add_argument("--eos", action="store_true")
    analyze.add_argument("--alignment", action="store_true")
    analyze.add_argument("--every", type=int, default=1, help="analyse snapshots at multiples of this step")
    analyze.add_argument("--skip", type=int, default=10, help="skip the first steps (the paper: 10)")
    analyze.set_defaults(run=_analyze)
    plot = commands.add_parser("plot", help="the papers' figures of a run or a sweep, as PNG and PDF",
                               description="Every figure the runs hold data for, into PATH/figures: the 2022 "
                               "paper's ρ_{n_c−1}/ρ_{n_c} (Figures 1–2), ‖P_top g‖/‖P_bulk g‖ (3), ρ_i and |d_i| (4), "
                               "λ_1 along the flow (5) and, on request, the cusp along h_1 (6, --figure cusp); after "
                               "alignment analysis the 2024 paper's sharpness of ∇²L̃/H/G (Figures 1, 6–9), ρ(K) "
                               "and E‖K‖² (2, 10–13), E‖K^i‖² (3, 14–18), the factors of E‖Δ^1‖² (4, 19–22), "
                               "E(χ^i)² (23–27), r(χ^i, Δ^i/χ^i) (28–32), layerwise Jacobian norms (33–37), "
                               "r(Δ^{i+1}, ∂x̂^{i+1}/∂x̂^i) (38–42) and the power law of Table 2. A sweep's runs "
                               "are coloured by dataset size, learning rate or number of classes, as in the "
                               "papers. Figure names: see nn_eos/experiments/figures.py.")
    plot.add_argument("path", help="a run directory or a sweep folder")
    plot.add_argument("--figure", nargs="+", help="only these figures (names in nn_eos/experiments/figures.py)")
    plot.set_defaults(run=_plot)
    sweep = commands.add_parser("sweep", help="a grid of runs on Dask, and its aggregate tables",
                                description="Run every combination of a sweep file's [grid] over its [base] run "
                                "config (e.g. Table 1 of the 2024 paper: subset sizes × 4 init seeds × 4 subset "
                                "seeds), each as a resumable run directory under OUT/runs, then the aggregates "
                                "its [sweep] section asks for: the 2022 paper's Table 1 (top/bulk loss changes at "
                                "the edge) and the 2024 paper's Table 2 (power law of peak P^1_Δ,J against "
                                "dataset size). Running it again skips finished runs and resumes unfinished ones. "
                                "Runs on a Dask LocalCluster (one worker per core) or on a running Dask cluster "
                                "(--scheduler, e.g. from dask-jobqueue on SLURM/PBS; see the README).")
    sweep.add_argument("sweep", help="the sweep TOML file (see sweeps/)")
    sweep.add_argument("--out", help="sweep folder (default: sweeps_out/<sweep name>)")
    sweep.add_argument("--workers", type=int, default=None,
                       help="LocalCluster worker processes (default: one per core, or per GPU with --device gpu; "
                       "0 runs in this process without Dask)")
    sweep.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786")
    sweep.add_argument("--device", choices=["cpu", "gpu"], default=None)
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(run=_sweep)
    data = commands.add_parser("data", help="write a built-in dataset to files")
    data.add_argument("name", choices=["dice"])
    data.add_argument("--out", required=True, help="folder for dice_train.npz, dice_test.npz and a preview")
    data.add_argument("--n", type=int, default=None, help="images per split (default: all 60,000)")
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=_data)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
