"""Experiment configs: one TOML file describes a run (data, net, criterion, integrator, stopping, telemetry).

Every key is checked before any compute starts; an unknown key, a wrong type
or a missing data path is reported with the key and the file.

    [data]        dataset = "dice" | "cifar10" | "ucr" | "arrays" | "modular_addition" | "characters", path,
                  split, n, size, classes, subset_seed, standardize, segment, stride; modulus, train_fraction
                  (modular_addition); length (characters: window length; path, a text file, optional)
    [net]         arch = "mlp" | "alexnet" | "vgg11" | "vgg16" | "transformer", hidden, width, activation, init,
                  seed, dtype; d, heads, depth, mlp_ratio (transformer)
    [criterion]   name = "cross_entropy" | "mse"
    [integrator]  name = "gd" | "adaptive_flow" | "exponential_euler" | "adam" | "rmsprop" | "sgd" and its settings
    [train]       until_loss, max_steps, max_time, snapshot_every, threads (BLAS threads; default 1)
    [telemetry]   k, every_time, n_classes, tol, method, lambda_min (optional: the 2022 paper's telemetry)
    [self_stabilization]  every_steps, tol, eig_tol, max_projection_steps (optional, gd only, instead of
                  [telemetry]: Damian et al.'s constrained trajectory beside the run; docs/self_stabilization.md)
    [cluster]     scheduler (a Dask scheduler's address), shards (default: its workers at the start), direct
                  (default true; false where only the scheduler is reachable) — optional: one run's products
                  sharded over a cluster's workers (ShardedLoss; docs/sharded.md)
"""

import contextlib
import os
import sys

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

from ..validation import check_integer

SCHEMA = {
    "data": {"dataset": str, "path": str, "split": str, "n": int, "size": int, "classes": list,
             "subset_seed": int, "standardize": bool, "segment": int, "stride": int, "seed": int, "modulus": int,
             "train_fraction": (int, float), "length": int},
    "net": {"arch": str, "hidden": list, "width": (int, float), "activation": str, "init": str, "seed": int,
            "dtype": str, "d": int, "heads": int, "depth": int, "mlp_ratio": int},
    "criterion": {"name": str},
    "integrator": {"name": str, "lr": (int, float), "lr_max": (int, float), "safety": (int, float), "k": int,
                   "tol": (int, float), "maxiter": int, "method": str, "stop": str, "beta1": (int, float),
                   "beta2": (int, float), "eps": (int, float), "sharpness_every": int, "batch_size": int,
                   "seed": int, "batches": int},
    "train": {"until_loss": (int, float), "max_steps": int, "max_time": (int, float), "snapshot_every": int,
              "threads": int},
    "telemetry": {"k": int, "every_time": (int, float), "n_classes": int, "tol": (int, float), "method": str,
                  "lambda_min": bool},
    "self_stabilization": {"every_steps": int, "tol": (int, float), "eig_tol": (int, float),
                           "max_projection_steps": int},
    "cluster": {"scheduler": str, "shards": int, "direct": bool},
}
REQUIRED = {"data": ("dataset",), "integrator": ("name",)}
BUILT_IN = ("dice", "modular_addition", "characters")         # datasets that need no data.path


class ConfigError(ValueError):
    """A config file that cannot describe a run; the message names the file and the key."""


def _type_name(kind):
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({int: "an integer", float: "a number", str: "a string", bool: "true or false",
                        list: "a list"}[k] for k in kinds)


def validate(config, source="<config>"):
    """Check sections, keys and value types against SCHEMA; return the config."""
    for section, values in config.items():
        if section not in SCHEMA:
            raise ConfigError(f"{source}: unknown section [{section}]; expected one of {sorted(SCHEMA)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table of keys")
        for key, value in values.items():
            if key not in SCHEMA[section]:
                raise ConfigError(f"{source}: unknown key {section}.{key}; expected one of {sorted(SCHEMA[section])}")
            kind = SCHEMA[section][key]
            kinds = kind if isinstance(kind, tuple) else (kind,)
            if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
                raise ConfigError(f"{source}: {section}.{key} must be {_type_name(kind)}, got {value!r}")
    for section, keys in REQUIRED.items():
        for key in keys:
            if key not in config.get(section, {}):
                raise ConfigError(f"{source}: missing {section}.{key}")
    if "self_stabilization" in config:
        if "telemetry" in config:
            raise ConfigError(f"{source}: a run has one telemetry: [telemetry] or [self_stabilization], not both")
        if config["integrator"]["name"] != "gd" or "lr" not in config["integrator"]:
            raise ConfigError(f"{source}: [self_stabilization] follows gradient descent: it needs integrator.name "
                              f"= \"gd\" and integrator.lr")
    data = config["data"]
    if data["dataset"] not in BUILT_IN or "path" in data:
        if "path" not in data:
            raise ConfigError(f"{source}: data.path is required for dataset {data['dataset']!r}")
        if not os.path.exists(os.path.expanduser(data["path"])):
            raise ConfigError(f"{source}: data.path {data['path']!r} does not exist")
    return config


def load(path):
    """Read and validate a TOML config file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} not found")
    with open(path, "rb") as f:
        try:
            config = tomllib.load(f)
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML ({error})") from None
    return validate(config, path)


def build_data(data):
    """(X, y) from the [data] section: load, subset, standardise (the explicit steps of datasets.py)."""
    from .. import datasets, tokens

    name = data["dataset"]
    split = data.get("split", "train")
    if name == "modular_addition":
        X, y = tokens.modular_addition(data.get("modulus", 11), split, data.get("train_fraction", 0.5),
                                       seed=data.get("seed", 0))
    elif name == "characters":
        text = None
        if "path" in data:
            with open(os.path.expanduser(data["path"]), encoding="utf-8") as f:
                text = f.read()
        X, y = tokens.characters(data.get("n", 512), data.get("length", 16), text=text, seed=data.get("seed", 0))
    elif name == "dice":
        X, y = datasets.dice(split, n=data.get("n"), seed=data.get("seed", 0))
    elif name == "cifar10":
        X, y = datasets.load_cifar10(data["path"], split)
    elif name == "ucr":
        X, y = datasets.load_ucr(data["path"], split, segment=data.get("segment"), stride=data.get("stride"))
    elif name == "arrays":
        X, y = datasets.load_arrays(data["path"])
    else:
        raise ConfigError(f"unknown data.dataset {name!r}; expected dice, cifar10, ucr, arrays, modular_addition or "
                          f"characters")
    if "size" in data or "classes" in data:
        X, y = datasets.subset(X, y, size=data.get("size"), classes=data.get("classes"),
                               seed=data.get("subset_seed", 0))
    if data.get("standardize", False):
        X, _ = datasets.standardize(X)
    return X, y


def shaped_for_net(net_cfg, X):
    """X as the [net] section's network takes it: 'mlp' flattens each example (a UCR window of C channels × T
    steps becomes C·T features); the conv nets take (C, H, W) images (flat dice vectors become 1×32×32)."""
    arch = net_cfg.get("arch", "mlp")
    if arch == "transformer":
        if X.ndim != 2 or X.dtype.kind not in "iu":
            raise ConfigError(f"net.arch = 'transformer' needs (n, T) integer token ids (data.dataset = "
                              f"'modular_addition' or 'characters'), got data of shape {X.shape}, dtype {X.dtype}")
        return X
    if arch == "mlp":
        return X.reshape(len(X), -1)
    if X.ndim == 2 and X.shape[1] == 1024:
        X = X.reshape(len(X), 1, 32, 32)
    if X.ndim != 4:
        raise ConfigError(f"net.arch = {arch!r} needs (n, C, H, W) images, got data of shape {X.shape}")
    return X


def training_data(experiment):
    """(X, y) of a run's config exactly as its network trains on them: loaded, windowed, subset and standardised
    by the [data] section (:func:`build_data`), shaped for the [net] section (:func:`shaped_for_net`), on the host
    in float64 (token ids in int64). The one place every command gets a run's data from — training (:func:`run`), the analyses and
    spectra (:func:`rebuild_loss`), the plots and the sweep — so that the data a run was analysed on are the data
    it trained on. (The network's device and dtype are applied by the TrainingLoss that takes them.)"""
    X, y = build_data(experiment["data"])
    return shaped_for_net(experiment.get("net", {}), X), y


def describe_data(experiment):
    """What the client needs to build a run's network without holding its data (a sharded run:
    :func:`sharded_loss` runs this on a worker): N, the example holding the largest input value (its shape, and for
    token ids the vocabulary it needs) and the classes present."""
    import numpy as np

    X, y = training_data(experiment)
    row = int(np.argmax(X.reshape(len(X), -1).max(axis=1)))
    return len(X), X[row:row + 1].copy(), np.unique(y)


def shard_data(experiment, start, stop):
    """Examples start..stop−1 of a run's :func:`training_data`, loaded where this runs (a worker of a sharded
    run); copies, so that the rest of the data is freed."""
    X, y = training_data(experiment)
    return X[start:stop].copy(), y[start:stop].copy()


def sharded_loss(experiment, client, shards=2, chunk_size=None, max_memory=None, device=None, direct=True):
    """The ShardedLoss of a run's config on the cluster of ``client``, each shard loading the config's data on its
    worker (``ShardedLoss.from_loader`` with :func:`shard_data`), so the data never pass through the client. One
    worker first reads the data's size, an example and the classes present (:func:`describe_data`), from which the
    client builds the [net] section's network on ``device``. (It lives here, not on ShardedLoss, because the core
    never imports the experiments floor.)"""
    from functools import partial

    from ..sharded import ShardedLoss

    num_examples, example, present = client.submit(describe_data, experiment, pure=False).result()
    net, _ = build_net(experiment.get("net", {}), example, count_classes(present, "[data]"), device)
    return ShardedLoss.from_loader(net, experiment.get("criterion", {}).get("name", "cross_entropy"), num_examples,
                                   partial(shard_data, experiment), client, shards, chunk_size, max_memory, direct)


def build_net(net_cfg, X, n_classes, device=None):
    """The network of the [net] section for inputs X; returns (net, X shaped for it: :func:`shaped_for_net`).

    'mlp' puts ``hidden`` between the input size and n_classes; 'transformer' takes its vocabulary from the token
    ids and n_classes (whichever is larger) and its length from X.
    """
    from ..architectures import transformer
    from ..network import alexnet_like, mlp, vgg_like

    arch = net_cfg.get("arch", "mlp")
    default_activation = {"mlp": "elu", "transformer": "gelu"}.get(arch, "relu")
    common = {"activation": net_cfg.get("activation", default_activation),
              "init": net_cfg.get("init", "xavier" if arch in ("mlp", "transformer") else "kaiming"),
              "seed": net_cfg.get("seed", 0),
              "dtype": net_cfg.get("dtype", "float64"), "device": device}
    X = shaped_for_net(net_cfg, X)
    if arch == "mlp":
        return mlp([X.shape[1], *net_cfg.get("hidden", [512] * 5), n_classes], **common), X
    if arch == "transformer":
        vocab = max(int(X.max()) + 1, n_classes)
        return transformer(vocab, net_cfg.get("d", 32), net_cfg.get("heads", 2), net_cfg.get("depth", 1), X.shape[1],
                           mlp_ratio=net_cfg.get("mlp_ratio", 4), **common), X
    width = net_cfg.get("width", 1.0)
    if arch == "alexnet":
        return alexnet_like(X.shape[1:], n_classes, width=width, **common), X
    if arch in ("vgg11", "vgg16"):
        return vgg_like(X.shape[1:], n_classes, depth=int(arch[3:]), width=width, **common), X
    raise ConfigError(f"unknown net.arch {arch!r}; expected mlp, alexnet, vgg11, vgg16 or transformer")


class MissingClassesWarning(UserWarning):
    """The labels skip some classes below the largest: the net gets outputs no example trains."""


def count_classes(y, source="the data", warn=True):
    """The number of network outputs for labels y: ``max(y) + 1``, with a warning (unless ``warn=False``)
    naming the classes that no example has (e.g. labels {0, 1, 2, 9} give 10 outputs, 6 of them never trained)."""
    import warnings

    import numpy as np

    present = np.unique(np.asarray(y))
    n_classes = int(present.max()) + 1
    if warn and len(present) < n_classes:
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        warnings.warn(f"{source}: labels hold {len(present)} classes of 0..{n_classes - 1}, none of "
                      f"{_few(missing)}; the net gets {n_classes} outputs anyway. To train on the present classes "
                      f"only, list them in data.classes (they are renumbered 0..{len(present) - 1})",
                      MissingClassesWarning, stacklevel=2)
    return n_classes


def _few(values, most=6):
    return ", ".join(map(str, values[:most])) + (f" … ({len(values)} in all)" if len(values) > most else "")


def run(config, out, device=None, resume=False, progress=True, threads=None, scheduler=None):
    """Train the run a validated config describes into the run directory ``out``; returns the Run.

    The config is kept in the run's manifest (config.json, key 'experiment'),
    from which ``rebuild_loss`` rebuilds the run's loss. The run uses
    ``threads`` BLAS threads (else the config's ``train.threads``, else 1;
    on resume, the count the run was made with: see threads.py). With a Dask
    ``scheduler`` address (else the config's ``cluster.scheduler``) its
    products are sharded over that cluster's workers (a ShardedLoss loading its
    shards there; the shard count is recorded, and a resumed run keeps it on a
    cluster of any size).
    """
    import copy

    from ..curvature import TrainingLoss
    from ..eos import Telemetry
    from ..self_stabilization import SelfStabilizationTelemetry
    from ..integrators import from_config
    from ..loop import train
    from .threads import DEFAULT_THREADS, blas_threads

    config = copy.deepcopy(config)
    settings = config.setdefault("train", {})
    settings["threads"] = _run_threads(out, resume, threads, settings.get("threads", DEFAULT_THREADS))
    scheduler = scheduler or config.get("cluster", {}).get("scheduler")
    try:
        integrator = from_config(config["integrator"])
    except TypeError as error:
        raise ConfigError(f"[integrator]: {error}") from None
    telemetry = Telemetry(**config["telemetry"]) if "telemetry" in config else None
    if "self_stabilization" in config:
        telemetry = SelfStabilizationTelemetry(config["integrator"]["lr"], **config["self_stabilization"])
    limits = {key: value for key, value in settings.items() if key != "threads"}
    with contextlib.ExitStack() as stack:
        if scheduler is None:
            _check_not_sharded(out, resume)
            config.pop("cluster", None)               # shards without a scheduler: a run in this process
            X, y = training_data(config)
            net, X = build_net(config.get("net", {}), X, count_classes(y, "[data]"), device)
            loss = TrainingLoss(net, config.get("criterion", {}).get("name", "cross_entropy"), X, y)
        else:
            loss = stack.enter_context(_sharded_loss(config, out, resume, scheduler, device))
        with blas_threads(settings["threads"]):
            return train(loss, integrator, telemetry=telemetry, run_dir=out, resume=resume, progress=progress,
                         data=config["data"], experiment=config, **limits)


def _made_with(out, resume):
    """The experiment config of the run in ``out`` when resuming it, else None."""
    from ..rundir import load_manifest

    if resume and os.path.exists(os.path.join(out, "config.json")):
        return load_manifest(out).get("experiment", {})
    return None


def _check_not_sharded(out, resume):
    made = _made_with(out, resume) or {}
    if "shards" in made.get("cluster", {}):
        raise ConfigError(f"{out} was sharded over {made['cluster']['shards']} shards; it resumes with the same "
                          f"sums only sharded again: give a scheduler (--scheduler ADDRESS; any number of workers)")


@contextlib.contextmanager
def _sharded_loss(config, out, resume, scheduler, device):
    """A ShardedLoss of the config on the cluster at ``scheduler``, its shard count written into config
    (``cluster.shards``: the config's, else on resume the run's, else the cluster's workers), closed at the end."""
    try:
        from distributed import Client
    except ImportError:
        raise ImportError("a sharded run needs Dask: pip install 'nn_eos[sweep]' (dask.distributed)") from None

    made = _made_with(out, resume)
    if made is not None and "shards" not in made.get("cluster", {}):
        raise ConfigError(f"{out} was run in one process; it resumes with the same sums only there (leave out the "
                          f"scheduler)")
    cluster = config.setdefault("cluster", {})
    recorded = (made or {}).get("cluster", {}).get("shards")
    if recorded is not None and cluster.get("shards", recorded) != recorded:
        raise ConfigError(f"{out} was sharded over {recorded} shards; it resumes with the same sums only over "
                          f"{recorded} (leave out cluster.shards, or set it to {recorded})")
    cluster.pop("scheduler", None)                 # an address is not part of the run: it may resume elsewhere
    with Client(scheduler) as client:
        if not client.scheduler_info()["workers"]:
            print(f"waiting for the first worker of {scheduler} …", file=sys.stderr)
            client.wait_for_workers(1)
        cluster["shards"] = recorded or cluster.get("shards") or len(client.scheduler_info()["workers"])
        loss = sharded_loss(config, client, shards=cluster["shards"], device=device,
                            direct=cluster.get("direct", True))
        try:
            yield loss
        finally:
            loss.close()


def _run_threads(out, resume, asked, configured):
    """The BLAS thread count of a run: on resume the one it was made with (a different one would change its
    rounding), else the one asked for, else the config's."""
    made = _made_with(out, resume)
    if made is not None:
        made_with = made.get("train", {}).get("threads", 1)
        if asked is not None and asked != made_with:
            raise ConfigError(f"{out} was run with {made_with} BLAS thread(s); it resumes bit-identically only with "
                              f"the same count (leave out the thread count, or ask for {made_with})")
        return made_with
    return check_integer(configured if asked is None else asked, "train.threads (--threads)")


def rebuild_loss(run_dir, device=None):
    """The TrainingLoss of a run made by ``nn-eos train``/``sweep`` (from its manifest's 'experiment').

    The net goes on ``device`` if given, else on the device the run recorded
    (backend.resolve_device).
    """
    from ..backend import resolve_device
    from ..curvature import TrainingLoss
    from ..rundir import load_manifest

    manifest = load_manifest(run_dir)
    experiment = manifest.get("experiment")
    if experiment is None:
        raise FileNotFoundError(f"{run_dir}: its config.json holds no experiment config (only runs made by "
                                f"`nn-eos train` or `nn-eos sweep` can be rebuilt)")
    X, y = training_data(experiment)
    net, X = build_net(experiment.get("net", {}), X, count_classes(y, warn=False),   # warned when trained
                       resolve_device(device, manifest.get("device")))
    return TrainingLoss(net, experiment.get("criterion", {}).get("name", "cross_entropy"), X, y)
