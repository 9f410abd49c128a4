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

    from . import datasets, plots

    os.makedirs(args.out, exist_ok=True)
    for split in ("train", "test"):
        X, y = datasets.dice(split, n=args.n, seed=args.seed)
        path = os.path.join(args.out, f"dice_{split}.npz")
        np.savez_compressed(path, X=X, y=y)
        print(f"wrote {path}: X {X.shape}, y {y.shape}")
    X, y = datasets.dice("train", n=60, seed=args.seed)
    plots.dice_examples(X, y, path=os.path.join(args.out, "dice_examples.png"))
    print(f"wrote {os.path.join(args.out, 'dice_examples.png')}")


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
