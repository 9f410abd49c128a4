"""Command-line options shared by the example scripts and benchmarks: defaults shown, one device rule."""

import argparse

from ..backend import DEVICES, keep_freed_memory, resolve_device


def script_parser(doc):
    """An ArgumentParser described by the first line of a script's docstring, showing every default in --help."""
    return argparse.ArgumentParser(description=doc.splitlines()[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_device(parser, note=""):
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help=f"where to compute (None: NN_EOS_DEVICE, else cpu){note}")


def parse(parser, argv=None):
    """Parsed arguments, with ``device`` resolved by the one rule (explicit, else NN_EOS_DEVICE, else cpu).

    A script that parses its arguments here is an application: its process keeps freed memory for reuse
    (:func:`nn_eos.backend.keep_freed_memory`).
    """
    keep_freed_memory()
    args = parser.parse_args(argv)
    if hasattr(args, "device"):
        args.device = resolve_device(args.device)
    return args
