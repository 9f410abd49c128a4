"""One loss over Dask workers beside one process: products per second, bytes moved, fixed cost, and where
sharding pays (issue "One run beyond one machine").

    python bench/sharded.py [--rounds 3] [--quick] [--json FILE]

Everything runs on this machine, side by side in one run, with nothing else running; every worker is a local
process with one BLAS thread.

1. The aim: the 2024 paper's MLP (1024-512×5-6, ELU, P = 1,578,502) on n = 4,000 random inputs, a block of 11
   hvp, warm (every call at one θ: an eigensolver's products) and cold (a new θ each call: θ is sent and every
   pass runs). In one process on 1 and on 2 BLAS threads; a ShardedLoss of 2 shards on 1 and on 2 local workers,
   and on 2 with its data routed through the scheduler (``direct=False``). Products per second, the ratio of
   times to the one process with as many cores, the largest relative difference of the results.
2. The cost of going through the cluster: products whose compute is nearly nothing (one example per shard) for
   P from 10⁴ to 10⁶·⁵ and k = 1, 6, 11, 21, on 2 workers (2 shards), warm. Overhead = time − (the same product
   in one process)/2. Bytes moved per product are counted on the loopback interface (/proc/net/dev; Linux) beside
   the count of what must move: V to each of W workers and each of S shares back, (W + S)·P·k·8 bytes, and θ
   (W·P·8) when it changes (through the scheduler, V and the shares cross twice: (1 + W + 2S)·P·k·8). A least-squares fit of overhead = fixed + bytes/rate gives the fixed cost per
   product (scheduling, serialisation) and the rate.
3. The compute of each paper's largest run, measured on one thread: the 2022 paper's VGG-16 on CIFAR-10 shapes
   (P = 14,982,474; a few examples, hvp of 1 and of 3 directions, so that cost = n·(a + b·k)) and the 2024
   paper's width-512 MLP (P = 1,578,502), each scaled to its n (50,000; 7,500) and a block of k = 11.
4. The model: time of a product on W workers (S = W shards) = compute/W + fixed + bytes(W)/rate, against compute
   alone in one process. Sharding pays from the smallest W where the model is faster; the best W is about
   √(compute·rate / (2·P·k·8)). Printed with the rate measured here (loopback) and with 10 GbE (1.25 GB/s), for
   workers that are CPU cores like this one's. On GPU workers (dask-cuda) compute shrinks by the card's speed-up
   (docs/gpu.md) and transfer dominates sooner: the same formula with the card's compute.
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import nn_eos as ne  # noqa: E402
from nn_eos.backend import to_numpy  # noqa: E402
from nn_eos.experiments.arguments import parse, script_parser  # noqa: E402
from nn_eos.sharded import ShardedLoss  # noqa: E402

K_BLOCK = 11
TEN_GBE = 1.25e9                      # bytes per second


def loopback_bytes():
    """Bytes received on the loopback interface so far (Linux), else None."""
    try:
        with open("/proc/net/dev") as f:
            for line in f:
                name, _, counters = line.partition(":")
                if name.strip() == "lo":
                    return int(counters.split()[0])
    except OSError:
        pass
    return None


def timed(call, rounds):
    """Seconds of the fastest of ``rounds`` calls after one untimed call, and the loopback bytes of one call."""
    call()
    seconds, before = [], loopback_bytes()
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    after = loopback_bytes()
    return min(seconds), None if before is None else (after - before) / rounds


def cluster(workers):
    import logging

    from distributed import Client, LocalCluster

    local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                         worker_dashboard_address=":0", silence_logs=logging.ERROR)
    return local, Client(local)


def one_process(threads):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(threads, user_api="blas")


def alternating(loss, thetas, V):
    """A product at θ_0, θ_1, θ_0, …: every call cold."""
    state = {"i": 0}

    def call():
        state["i"] ^= 1
        return loss.hvp(V, thetas[state["i"]])
    return call


# ----- 1. the aim ---------------------------------------------------------------------------------------------

def aim(widths, n, rounds):
    """Every contender's warm and cold block, their rounds interleaved (one call of each in turn, the fastest of
    ``rounds`` kept), so that a slow spell of this shared machine falls on all of them alike."""
    import contextlib

    net = ne.mlp(widths, activation="elu", seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, widths[0])), rng.integers(0, widths[-1], n)
    V = rng.standard_normal((net.num_params, K_BLOCK))
    theta = to_numpy(net.theta).copy()
    thetas = (theta, theta * (1 + 1e-3))
    local = ne.TrainingLoss(net, "cross_entropy", X, y)
    clusters = {workers: cluster(workers) for workers in (1, 2)}
    try:
        contenders = [(f"one process, {threads} BLAS thread(s)", threads, local, threads) for threads in (1, 2)]
        for workers, direct in ((1, True), (2, True), (2, False)):
            sharded = ShardedLoss(net, "cross_entropy", X, y, clusters[workers][1], shards=2, direct=direct)
            route = "" if direct else " via the scheduler"
            contenders.append((f"ShardedLoss, 2 shards on {workers} worker(s){route}", workers, sharded, None))

        def place(threads):
            return one_process(threads) if threads else contextlib.nullcontext()
        calls = {}
        for name, _, loss, threads in contenders:
            calls[name] = {"warm": lambda loss=loss: loss.hvp(V, thetas[0]), "cold": alternating(loss, thetas, V)}
            with place(threads):
                calls[name]["cold"](), calls[name]["warm"]()                  # placed and warm
        seconds = {(name, mode): [] for name in calls for mode in ("warm", "cold")}
        for _ in range(rounds):
            for name, _, _, threads in contenders:
                for mode in ("warm", "cold"):
                    with place(threads):
                        start = time.perf_counter()
                        calls[name][mode]()
                        seconds[(name, mode)].append(time.perf_counter() - start)
        with one_process(1):
            reference = to_numpy(local.hvp(V, thetas[0]))
        rows = []
        for name, cores, loss, threads in contenders:
            moved = {}
            for mode in ("warm", "cold"):
                before = loopback_bytes()
                with place(threads):
                    result = to_numpy(calls[name][mode]())
                moved[mode] = None if before is None else loopback_bytes() - before
            with place(threads):
                result = to_numpy(loss.hvp(V, thetas[0]))
            rows.append({"who": name, "cores": cores, "warm_s": min(seconds[(name, "warm")]),
                         "cold_s": min(seconds[(name, "cold")]), "bytes_warm": moved["warm"],
                         "bytes_cold": moved["cold"],
                         "rel_diff": float(np.abs(result - reference).max() / np.abs(reference).max())})
            if isinstance(loss, ShardedLoss):
                loss.close()
    finally:
        for local_cluster, client in clusters.values():
            client.close()
            local_cluster.close()
    return {"P": net.num_params, "n": n, "k": K_BLOCK, "widths": widths, "rows": rows, "rounds": rounds}


def print_aim(result):
    print(f"\n1. A block of {result['k']} hvp: MLP {'-'.join(map(str, result['widths']))} (P = {result['P']:,}), "
          f"n = {result['n']:,}")
    print(f"   {'':52s} {'warm s':>8s} {'hvp/s':>7s} {'ratio':>6s} {'cold s':>8s} {'hvp/s':>7s} {'ratio':>6s} "
          f"{'MiB/block':>10s} {'rel diff':>9s}")
    base = {row["cores"]: row for row in result["rows"] if row["who"].startswith("one process")}
    for row in result["rows"]:
        same = base[row["cores"]]
        moved = "n/a" if row["bytes_warm"] is None else f"{row['bytes_warm'] / 2**20:10.1f}"
        print(f"   {row['who']:52s} {row['warm_s']:8.3f} {K_BLOCK / row['warm_s']:7.2f} "
              f"{row['warm_s'] / same['warm_s']:6.2f} {row['cold_s']:8.3f} {K_BLOCK / row['cold_s']:7.2f} "
              f"{row['cold_s'] / same['cold_s']:6.2f} {moved:>10s} {row['rel_diff']:9.1e}")
    print(f"   fastest of {result['rounds']} rounds, the contenders' calls interleaved; ratio: time over the one "
          f"process with as many cores (workers or BLAS threads); MiB/block: loopback bytes (2**20) of one warm block")


# ----- 2. the cost of the cluster -----------------------------------------------------------------------------

def overhead(hidden_sizes, ks, rounds, workers=2):
    """Nearly no compute (one example per shard): the time of the cluster and what it moves."""
    rows = []
    local_cluster, client = cluster(workers)
    try:
        for h in hidden_sizes:
            net = ne.mlp([h, h, 2], activation="tanh", seed=0)
            rng = np.random.default_rng(1)
            X, y = rng.standard_normal((workers, h)), np.arange(workers) % 2
            local = ne.TrainingLoss(net, "cross_entropy", X, y)
            sharded = ShardedLoss(net, "cross_entropy", X, y, client, shards=workers)
            P = net.num_params
            for k in ks:
                V = rng.standard_normal((P, k))
                with one_process(1):
                    alone, _ = timed(lambda: local.hvp(V), rounds)
                seconds, moved = timed(lambda: sharded.hvp(V), rounds)
                rows.append({"P": P, "k": k, "seconds": seconds, "compute_s": alone / workers,
                             "overhead_s": seconds - alone / workers, "loopback_bytes": moved,
                             "model_bytes": 2 * workers * P * k * 8})
                del V
            sharded.close()
    finally:
        client.close()
        local_cluster.close()
    A = np.array([[1.0, row["model_bytes"]] for row in rows])
    fixed, per_byte = np.linalg.lstsq(A, np.array([row["overhead_s"] for row in rows]), rcond=None)[0]
    return {"workers": workers, "rows": rows, "fixed_s": float(fixed),
            "rate_bytes_per_s": float(1 / per_byte) if per_byte > 0 else float("inf")}


def print_overhead(result):
    print(f"\n2. The cost of the cluster ({result['workers']} workers, {result['workers']} shards, one example "
          f"each, warm)")
    print(f"   {'P':>10s} {'k':>3s} {'product s':>10s} {'overhead s':>11s} {'loopback MiB':>12s} {'model MiB':>9s}")
    for row in result["rows"]:
        moved = "n/a" if row["loopback_bytes"] is None else f"{row['loopback_bytes'] / 2**20:.1f}"
        print(f"   {row['P']:10,d} {row['k']:3d} {row['seconds']:10.4f} {row['overhead_s']:11.4f} {moved:>12s} "
              f"{row['model_bytes'] / 2**20:9.1f}")
    print(f"   fit: overhead = {result['fixed_s'] * 1e3:.1f} ms + bytes / ({result['rate_bytes_per_s'] / 1e9:.2f} "
          f"GB/s)")


# ----- 3. the papers' compute ---------------------------------------------------------------------------------

def compute_cost(net, input_shape, n_classes, n, rounds):
    """Seconds per example of a cold hvp of k directions on one thread: a + b·k from k = 1 and k = 3."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((n, *input_shape)), rng.integers(0, n_classes, n)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    theta = to_numpy(net.theta).copy()
    thetas = (theta, theta * (1 + 1e-3))
    seconds = {}
    with one_process(1):
        for k in (1, 3):
            seconds[k], _ = timed(alternating(loss, thetas, rng.standard_normal((net.num_params, k))), rounds)
    b = (seconds[3] - seconds[1]) / 2 / n
    return {"P": net.num_params, "a_s": seconds[1] / n - b, "b_s": b}


def papers(quick, rounds):
    if quick:
        runs = [("2022 (stand-in: a small VGG)", ne.vgg_like((3, 32, 32), 10, depth=11, width=0.0625, seed=0),
                 (3, 32, 32), 10, 2, 50_000),
                ("2024 (stand-in: a small MLP)", ne.mlp([16, 8, 8, 6], activation="elu", seed=0), (16,), 6, 8,
                 7_500)]
    else:
        runs = [("2022: VGG-16, CIFAR-10", ne.vgg_like((3, 32, 32), 10, depth=16, width=1.0, seed=0), (3, 32, 32),
                 10, 4, 50_000),
                ("2024: MLP width 512, dice", ne.mlp([1024] + [512] * 5 + [6], activation="elu", seed=0), (1024,),
                 6, 64, 7_500)]
    rows = []
    for name, net, shape, classes, measured_n, n in runs:
        cost = compute_cost(net, shape, classes, measured_n, rounds)
        rows.append({"run": name, "n": n, "k": K_BLOCK, "measured_on": measured_n, **cost,
                     "compute_s": n * (cost["a_s"] + cost["b_s"] * K_BLOCK)})
    return rows


# ----- 4. the model -------------------------------------------------------------------------------------------

def model(compute, P, k, W, fixed, rate, cold=True):
    """Seconds of a product of k directions on W workers (S = W shards): compute/W + fixed + bytes/rate."""
    moved = (2 * W * P * k + (W * P if cold else 0)) * 8
    return compute / W + fixed + moved / rate


def print_model(rows, fixed, measured_rate):
    print(f"\n3. and 4. The papers' largest runs, a cold block of {K_BLOCK} hvp: compute measured on one thread of "
          f"this CPU and scaled to n (a + b·k seconds per example); the model compute/W + fixed + bytes/rate with "
          f"fixed = {fixed * 1e3:.1f} ms")
    for row in rows:
        print(f"   {row['run']}: P = {row['P']:,}, n = {row['n']:,}; a = {row['a_s'] * 1e3:.2f} ms, b = "
              f"{row['b_s'] * 1e3:.2f} ms per example (measured on {row['measured_on']}); one process, one "
              f"thread: {row['compute_s']:,.0f} s")
        for label, rate in (("loopback here", measured_rate), ("10 GbE", TEN_GBE)):
            times = {W: model(row["compute_s"], row["P"], K_BLOCK, W, fixed, rate) for W in (1, 2, 4, 8, 16, 32, 64)}
            pays = next((W for W in times if W > 1 and times[W] < row["compute_s"]), None)
            best = (row["compute_s"] * rate / (2 * row["P"] * K_BLOCK * 8)) ** 0.5
            print(f"     {label} ({rate / 1e9:.2f} GB/s): " + ", ".join(
                f"W={W} {times[W]:,.1f} s ({row['compute_s'] / times[W]:.1f}×)" for W in times))
            print(f"       pays from W = {pays}; best W ≈ {best:,.0f}")
        row["model"] = {"fixed_s": fixed, "rate_measured": measured_rate}


def main(argv=None):
    parser = script_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="timed calls per row (the fastest is kept)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that the bench runs")
    parser.add_argument("--json", help="write every row to this file")
    args = parse(parser, argv)
    if args.quick:
        first = aim([16, 8, 8, 6], 40, args.rounds)
        cost = overhead([8, 16], [1, 3], args.rounds)
    else:
        first = aim([1024] + [512] * 5 + [6], 4000, args.rounds)
        cost = overhead([100, 316, 1000, 1778], [1, 6, 11, 21], args.rounds)
    print_aim(first)
    print_overhead(cost)
    rows = papers(args.quick, args.rounds)
    print_model(rows, cost["fixed_s"], cost["rate_bytes_per_s"])
    results = {"machine": f"{os.cpu_count()} cores", "aim": first, "overhead": cost, "papers": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
