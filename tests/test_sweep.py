"""Sweeps: grid expansion and checks before compute, failures kept, a killed sweep resumed on a 2-worker
LocalCluster, and the aggregate tables computed from the runs."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from nn_eos import loop
from nn_eos.experiments import config, sweep, tables
from nn_eos.experiments.config import tomllib
from nn_eos.rundir import load_run, load_snapshot, snapshot_steps

BASE = """
[base.data]
dataset = "dice"
n = 96

[base.net]
hidden = [6, 6]

[base.integrator]
name = "gd"
lr = 0.5

[base.train]
until_loss = 0.0
max_steps = 40
snapshot_every = 10
"""

TELEMETRY = """
[base.telemetry]
k = 7
every_time = 2.0
method = "lanczos"
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_grid_expands_to_named_runs_in_file_order(tmp_path):
    spec = sweep.load(write(tmp_path, BASE + '[grid]\n"data.size" = [24, 48]\n"net.seed" = [0, 1]\n'
                                             '"net.hidden" = [[6, 6], [8]]\n'))
    runs = spec.runs()
    assert [name for name, _ in runs][:3] == ["size-24_seed-0_hidden-6x6", "size-24_seed-0_hidden-8",
                                              "size-24_seed-1_hidden-6x6"]
    assert len(runs) == 8 and len({name for name, _ in runs}) == 8
    _, cfg = runs[-1]
    assert cfg["data"] == {"dataset": "dice", "n": 96, "size": 48} and cfg["net"] == {"hidden": [8], "seed": 1}
    assert spec.base["data"] == {"dataset": "dice", "n": 96}       # the base is not mutated
    # two keys with the same name keep their sections apart
    spec = sweep.load(write(tmp_path, BASE + '[grid]\n"net.seed" = [0]\n"data.seed" = [3]\n'))
    assert spec.runs()[0][0] == "net-seed-0_data-seed-3"


@pytest.mark.parametrize("text,message", [
    (BASE + '[grid]\n"data.sise" = [1]\n', r"grid key 'data.sise' is not a config key"),
    (BASE + '[grid]\n"data.size" = 24\n', r"grid.data.size must be a non-empty list"),
    (BASE + '[grid]\n"data.size" = [24, "48"]\n', r"\(run size-48\): data.size must be an integer, got '48'"),
    (BASE + '[sweep]\nworkers = 3\n', r"unknown key sweep.workers"),
    (BASE + '[sweep]\ntables = ["table3"]\n', r"sweep.tables has 'table3'"),
    (BASE + '[sweep]\ntables = ["table2"]\n', r"'table2', which needs sweep.analyze"),
    (BASE + '[sweep]\ntables = ["table1"]\n', r"'table1', which needs a \[base.telemetry\]"),
    (BASE + '[grid]\n"integrator.lr" = [0.5, -1.0]\n', r"\(run lr--1.0\): \[integrator\]"),
    (BASE + '[runs]\n', r"unknown section \[runs\]"),
])
def test_sweep_errors_are_reported_before_any_compute(tmp_path, text, message):
    with pytest.raises(config.ConfigError, match=message):
        sweep.load(write(tmp_path, text))


def test_failed_run_is_kept_and_does_not_stop_the_sweep(tmp_path):
    path = write(tmp_path, BASE + '[grid]\n"data.classes" = [[0, 1], [0, 99]]\n')
    out = str(tmp_path / "out")
    result = sweep.run_sweep(path, out, workers=0, progress=False)
    good, bad = result["runs"]["classes-0x1"], result["runs"]["classes-0x99"]
    assert good["status"] == "max_steps" and bad["status"] == "failed" and "99" in bad["error"]
    error = (tmp_path / "out" / "runs" / "classes-0x99" / "error.txt").read_text()
    assert "Traceback" in error and "99" in error
    rows = {r["run"]: r for r in tables.runs_table(out)}
    assert rows["classes-0x1"]["status"] == "max_steps" and rows["classes-0x99"]["status"].startswith("failed: ")
    # running it again skips the finished run and tries the failed one again
    again = sweep.run_sweep(path, out, workers=0, progress=False)
    assert again["runs"]["classes-0x1"]["status"] == "skipped (finished)"
    assert again["runs"]["classes-0x99"]["status"] == "failed"


def test_changed_sweep_file_does_not_reuse_old_runs(tmp_path):
    out = str(tmp_path / "out")
    sweep.run_sweep(write(tmp_path, BASE + '[grid]\n"net.seed" = [0]\n'), out, workers=0, progress=False)
    changed = write(tmp_path, BASE.replace("lr = 0.5", "lr = 0.25") + '[grid]\n"net.seed" = [0]\n', "changed.toml")
    with pytest.raises(config.ConfigError, match="was made from another config"):
        sweep.run_sweep(changed, out, workers=0, progress=False)


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_killed_sweep_on_a_local_cluster_resumes_and_matches_an_uninterrupted_run(tmp_path):
    pytest.importorskip("distributed")
    # Four tiny runs; the one with 30,000 steps is still running when the whole sweep is SIGKILLed.
    text = BASE.replace("max_steps = 40", "max_steps = 40").replace("snapshot_every = 10", "snapshot_every = 500")
    path = write(tmp_path, text + '[grid]\n"train.max_steps" = [40, 60, 80, 30000]\n')
    out = tmp_path / "out"
    runs = out / "runs"
    long_dir = runs / "max_steps-30000"
    short = [runs / f"max_steps-{n}" for n in (40, 60, 80)]
    process = subprocess.Popen([sys.executable, "-m", "nn_eos.experiments.cli", "sweep", path, "--out", str(out),
                                "--workers", "2", "--no-progress"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: all((d / "done.json").exists() for d in short)
                  and (long_dir / "snapshots" / "theta_00000500.npy").exists(), 120, "the long run to get going")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not (long_dir / "result.json").exists(), "the long run finished before the kill: lengthen it"
    killed_at = max(snapshot_steps(str(long_dir)))
    assert 0 < killed_at < 30000
    finished_at = {d: (d / "result.json").stat().st_mtime_ns for d in short}

    result = sweep.run_sweep(path, str(out), workers=2, progress=False)
    assert [result["runs"][d.name]["status"] for d in short] == ["skipped (finished)"] * 3
    assert {d: (d / "result.json").stat().st_mtime_ns for d in short} == finished_at   # not run again
    assert result["runs"]["max_steps-30000"]["status"] == "max_steps"
    _, metrics, _, end = load_run(str(long_dir))
    assert end["steps"] == 30000 and np.array_equal(metrics["step"], np.arange(30000))   # each step logged once

    # The reference runs in this process, at a BLAS thread count unlike the workers' one thread (the original
    # failure: sums split among 2 threads round differently from step 3 on); the run's recorded count wins.
    reference = tmp_path / "reference"
    cfg = json.loads((long_dir / "config.json").read_text())["experiment"]
    assert cfg["train"]["threads"] == 1
    with threadpool_limits(limits=2):
        config.run(cfg, str(reference), progress=False)
    assert np.array_equal(load_snapshot(str(long_dir), 30000), load_snapshot(str(reference), 30000))
    assert np.array_equal(load_run(str(long_dir))[1]["loss"], load_run(str(reference))[1]["loss"])


def test_tables_from_the_runs_of_a_sweep(tmp_path):
    text = (BASE.replace("max_steps = 40", "max_steps = 24").replace("snapshot_every = 10", "snapshot_every = 4")
            + TELEMETRY + '[sweep]\nanalyze = ["alignment"]\nanalyze_every = 4\nanalyze_skip = 4\n'
            'tables = ["table1", "table2"]\n[grid]\n"data.size" = [24, 48, 96]\n"net.seed" = [0, 1]\n')
    out = str(tmp_path / "out")
    result = sweep.run_sweep(write(tmp_path, text), out, workers=0, progress=False)
    t1, t2 = result["tables"]["table1"], result["tables"]["table2"]
    # Table 1: one group per size, pooling the two seeds' telemetry rows at the edge
    assert [row["group"] for row in t1] == ["data.size = 24", "data.size = 48", "data.size = 96"]
    for row in t1:
        _, _, run_dirs = zip(*tables.groups(out)[row["group"]])
        pooled = [r for d in run_dirs for r in load_run(d)[2]]
        claim = tables.bulk_claim(pooled, 6)
        assert row["rows"] == claim["rows"] and row["bulk_mean"] == pytest.approx(claim["bulk_mean"])
    # Table 2: one group (sizes left out, seeds pooled), the fit of eq. 9 over the six runs' peaks
    (row,) = t2
    peaks = [tables.peak_alignment(d) for _, _, d in tables.groups(out, leave_out=("data.size",))["all runs"]]
    c1, c2, r2 = tables.power_law([24, 24, 48, 48, 96, 96], peaks)
    assert row["runs"] == 6 and row["sizes"] == [24, 48, 96]
    assert (row["c1"], row["c2"], row["r2"]) == pytest.approx((c1, c2, r2))
    assert (row["paper_c1"], row["paper_c2"], row["paper_r2"]) == (0.0017, 0.23, 0.84)
    text = (tmp_path / "out" / "tables" / "table2.md").read_text()
    assert "c1 D^{c2}" in text and f"{c2:.4g}" in text
    assert (tmp_path / "out" / "tables" / "table1.csv").exists()


def test_sweep_cli_then_every_figure_of_the_sweep(tmp_path, capsys):
    from nn_eos.experiments import cli, figures

    text = (BASE.replace("max_steps = 40", "max_steps = 16").replace("snapshot_every = 10", "snapshot_every = 2")
            + TELEMETRY + '[sweep]\nanalyze = ["alignment"]\nanalyze_every = 2\nanalyze_skip = 2\n'
            'tables = ["table1", "table2"]\n[grid]\n"data.size" = [24, 48]\n"integrator.lr" = [0.25, 0.5]\n')
    out = tmp_path / "out"
    cli.main(["sweep", write(tmp_path, text), "--out", str(out), "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert "4 runs finished (0 already were), 0 failed" in printed and "c1 D^{c2}" in printed
    made = figures.build(str(out))
    # colour by dataset size (the first of the papers' colour keys in the grid), one figure per learning rate
    assert {"rho__integrator.lr_=_0.25", "components__integrator.lr_=_0.5", "power_law__integrator.lr_=_0.5"} <= set(made)
    records, legend = figures.collect(str(out))
    assert legend == "D" and sorted({r.colour for r in records}) == [24, 48]
    fig = made["K_layers__integrator.lr_=_0.5"]
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 3             # L = 3 weight layers
    assert {len(ax.lines) for ax in fig.axes if ax.get_visible()} == {2}     # the two runs at this η
    assert set(figures.paper_figures(str(out), ["loss"], folder=str(tmp_path / "f"))) == {
        "loss__integrator.lr_=_0.25", "loss__integrator.lr_=_0.5"}
    assert (tmp_path / "f" / "loss__integrator.lr_=_0.5.png").exists()
    cli.main(["plot", str(out), "--figure", "power_law", "rho"])
    assert (out / "figures" / "power_law__integrator.lr_=_0.25.pdf").exists()
    capsys.readouterr()
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "is neither a run directory (config.json) nor a sweep folder" in capsys.readouterr().err
    capsys.readouterr()
    cli.main(["analyze", str(out), "--alignment"])      # every run (cached: instant), then the tables again
    printed = capsys.readouterr().out
    assert "4 of 4 runs analysed" in printed and "c1 D^{c2}" in printed and "Table 1" in printed
    assert cli.main(["analyze", str(tmp_path)]) == 2
    assert "is not a run directory (config.json), a folder of runs" in capsys.readouterr().err


def test_one_sweep_at_a_time_per_folder_and_a_dead_holder_is_taken_over(tmp_path):
    path = write(tmp_path, BASE + '[grid]\n"net.seed" = [0]\n')
    out = tmp_path / "out"
    out.mkdir()
    lock = out / "sweep.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": "another-host", "started": "earlier"}))
    with pytest.raises(RuntimeError, match="being swept by pid .* on another-host"):
        sweep.run_sweep(path, str(out), workers=0, progress=False)
    import socket

    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "earlier"}))
    with pytest.raises(RuntimeError, match="being swept"):                   # alive: this very process
        sweep.run_sweep(path, str(out), workers=0, progress=False)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    result = sweep.run_sweep(path, str(out), workers=0, progress=False)     # a killed sweep's lock
    assert result["runs"]["seed-0"]["status"] == "max_steps" and not lock.exists()


SWEEPS = os.path.join(os.path.dirname(__file__), os.pardir, "sweeps")


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(SWEEPS) if f.endswith(".toml")))
def test_shipped_sweep_files_are_valid(tmp_path, name):
    """Every file in sweeps/ passes the checks made before compute, once its data path exists."""
    text = open(os.path.join(SWEEPS, name)).read()
    text = re.sub(r'"/path/to/[^"]*"', json.dumps(str(tmp_path)), text)
    spec = sweep.load(write(tmp_path, text, name))
    runs = spec.runs()
    expected = {"alignment_dice_laptop.toml": 16, "eos_dice_laptop.toml": 6, "alignment_dice_paper.toml": 80,
                "alignment_cifar10_paper.toml": 80, "alignment_atrialfibrillation_paper.toml": 80,
                "alignment_sst_paper.toml": 64, "eos_cifar10_paper.toml": 16, "eos_cifar10_classes_paper.toml": 4,
                "eos_dice_relu_sharpening.toml": 4, "alignment_dice_width512_device.toml": 4}
    assert len(runs) == expected[name]


def test_figure_two_colours_runs_by_number_of_classes(tmp_path):
    """A grid over data.classes colours by n_c, as the 2022 paper's Figure 2 does."""
    from nn_eos.experiments import figures

    text = (BASE.replace("max_steps = 40", "max_steps = 6") + TELEMETRY
            + '[grid]\n"data.classes" = [[0, 1, 2], [0, 1, 2, 3, 4]]\n')
    out = str(tmp_path / "out")
    sweep.run_sweep(write(tmp_path, text), out, workers=0, progress=False)
    records, legend = figures.collect(out)
    assert legend == "n_c" and sorted(r.colour for r in records) == [3, 5]
    fig = figures.build(out, ["rho"])["rho"]
    labels = {line.get_label() for line in fig.axes[0].lines}
    assert {"n_c = 3", "n_c = 5"} <= labels
    # each run's solid line is its own ρ_{n_c−1}: n_c − 1 = 2 and 4
    by_label = {}
    for line in fig.axes[0].lines:
        by_label.setdefault(line.get_label(), []).append(line)
    for r in records:
        solid = by_label[f"n_c = {r.colour}"][0]
        expected = [row["rho"][r.colour - 2] for row in r.telemetry]
        np.testing.assert_array_equal(solid.get_ydata(), expected)


def test_a_run_computes_with_the_blas_threads_its_config_records_and_resumes_with_them(tmp_path, monkeypatch):
    seen = []
    real_train = loop.train

    def spy(*args, **kwargs):
        seen.append(max(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"))
        return real_train(*args, **kwargs)

    monkeypatch.setattr(loop, "train", spy)
    cfg = config.validate(tomllib.loads(BASE.replace("[base.", "[")))
    with threadpool_limits(limits=2):
        config.run(cfg, str(tmp_path / "one"), progress=False)
        config.run(cfg, str(tmp_path / "two"), progress=False, threads=2)
    assert seen == [1, 2]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["experiment"]["train"]["threads"] == 2
    with pytest.raises(config.ConfigError, match="was run with 2 BLAS thread"):
        config.run(cfg, str(tmp_path / "two"), resume=True, progress=False, threads=1)
    config.run(cfg, str(tmp_path / "two"), resume=True, progress=False)     # its own count: no error
    assert seen[-1] == 2


def test_the_width_512_sweep_for_a_device_dry_runs_at_width_8(tmp_path):
    """sweeps/alignment_dice_width512_device.toml runs only where a GPU is lent: the same file at width 8, on two
    small subsets and a few steps, runs through the command it names (sweep, then plot) and leaves Table 2 and
    the alignment caches it promises."""
    with open(os.path.join(SWEEPS, "alignment_dice_width512_device.toml")) as f:
        text = f.read()
    text = (text.replace("hidden = [512, 512, 512, 512, 512]", "hidden = [8, 8, 8, 8, 8]")
            .replace('"data.size" = [468, 937, 1874, 3750]', '"data.size" = [60, 120]')
            .replace('dataset = "dice"', 'dataset = "dice"\nn = 300')
            .replace("snapshot_every = 50", "snapshot_every = 3\nmax_steps = 9")
            .replace("analyze_every = 50", "analyze_every = 3").replace("analyze_skip = 10", "analyze_skip = 0"))
    assert "[8, 8, 8, 8, 8]" in text and "max_steps = 9" in text and '"data.size" = [60, 120]' in text
    out = str(tmp_path / "out")
    result = sweep.run_sweep(write(tmp_path, text, "width.toml"), out, workers=0, progress=False)
    (row,) = result["tables"]["table2"]
    assert row["sizes"] == [60, 120] and (row["paper_c1"], row["paper_c2"]) == (0.0017, 0.23)
    for name in os.listdir(os.path.join(out, "runs")):
        assert os.path.exists(os.path.join(out, "runs", name, "alignment.jsonl"))
    assert (tmp_path / "out" / "tables" / "table2.md").exists()
    from nn_eos.experiments import figures
    made = figures.paper_figures(out, folder=str(tmp_path / "figures"))               # what nn-eos plot draws
    assert made and any(name.endswith(".png") for name in os.listdir(tmp_path / "figures"))
