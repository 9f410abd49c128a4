"""Every dataset kind end to end: `nn-eos sweep` with analyses, then `nn-eos analyze` and `nn-eos plot` on the
sweep; the data a run is analysed on are the data it trained on, array for array; a run whose analysis fails
keeps its training and is analysed again by the next sweep."""

import os
import pickle

import numpy as np
import pytest

from nn_eos import alignment, curvature
from nn_eos.experiments import cli, config, sweep

# a multivariate UEA file in the archive's .ts layout: 2 channels × 24 steps, 3 classes, 6 series
TS_HEADER = """# synthetic, in the layout of the UEA archive's AtrialFibrillation (2 channels)
@problemName Synthetic
@timeStamps false
@univariate false
@dimensions 2
@equalLength true
@seriesLength 24
@classLabel true n s t
@data
"""


def write_ucr(folder):
    rng = np.random.default_rng(1)
    folder.mkdir()
    lines = [":".join(",".join(f"{v:.4f}" for v in rng.standard_normal(24) + c) for c in (label, -label))
             + f":{'nst'[label]}" for label in (0, 1, 2, 0, 1, 2)]
    for split in ("TRAIN", "TEST"):
        (folder / f"Synthetic_{split}.ts").write_text(TS_HEADER + "\n".join(lines) + "\n")
    return folder


def write_cifar(folder, per_batch=6):
    """A folder in the layout of the archive's cifar-10-batches-py (pickled batches of 3072 uint8 and labels)."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 3, size=per_batch)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    return folder


def data_section(kind, tmp_path):
    """The [base.data] lines of each dataset kind, with its files written under tmp_path."""
    if kind == "dice":
        return 'dataset = "dice"\nn = 48\n'
    if kind == "arrays":
        rng = np.random.default_rng(2)
        np.savez(tmp_path / "features.npz", X=rng.standard_normal((30, 2, 5)), y=np.arange(30) % 3)
        return f'dataset = "arrays"\npath = "{tmp_path / "features.npz"}"\n'
    if kind == "ucr":       # the AtrialFibrillation layout: overlapping windows, standardised
        return (f'dataset = "ucr"\npath = "{write_ucr(tmp_path / "Synthetic")}"\nsegment = 8\nstride = 4\n'
                f'standardize = true\n')
    if kind == "cifar10":
        return f'dataset = "cifar10"\npath = "{write_cifar(tmp_path / "cifar-10-batches-py")}"\n'
    raise ValueError(kind)


def sweep_file(kind, tmp_path, analyze='["alignment", "spectrum", "eos"]'):
    text = f"""
[sweep]
analyze = {analyze}
analyze_every = 2
analyze_skip = 2
spectrum_steps = 6
spectrum_probes = 2
{'tables = ["table2"]' if "alignment" in analyze else ""}

[base.data]
{data_section(kind, tmp_path)}
[base.net]
arch = "mlp"
hidden = [5, 5]

[base.integrator]
name = "gd"
lr = 0.3

[base.train]
until_loss = 0.0
max_steps = 6
snapshot_every = 2

[base.telemetry]
k = 3
every_time = 0.6
method = "lanczos"

[grid]
"data.size" = [12, 24]
"""
    path = tmp_path / f"{kind}.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("kind", ["dice", "arrays", "ucr", "cifar10"])
def test_every_dataset_kind_through_sweep_analyze_and_plot(kind, tmp_path, capsys, monkeypatch):
    """The AtrialFibrillation layout among them (ucr: multivariate windows with a stride, an MLP): trained,
    analysed (alignment, spectrum, the 2022 bulk claim) by the sweep, then by `nn-eos analyze`, then drawn."""
    trained, analysed = [], []
    original_init, original_analyze = curvature.TrainingLoss.__init__, alignment.analyze

    def recording_init(self, net, criterion, X, y, *args, **kwargs):
        original_init(self, net, criterion, X, y, *args, **kwargs)
        trained.append((self.X_host.copy(), self.y_host.copy()))

    def recording_analyze(net, criterion, X, y, *args, **kwargs):
        analysed.append((np.asarray(X).copy(), np.asarray(y).copy()))
        return original_analyze(net, criterion, X, y, *args, **kwargs)

    monkeypatch.setattr(curvature.TrainingLoss, "__init__", recording_init)
    monkeypatch.setattr(alignment, "analyze", recording_analyze)
    out = tmp_path / "out"
    cli.main(["sweep", sweep_file(kind, tmp_path), "--out", str(out), "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert "2 runs finished (0 already were), 0 failed" in printed, printed
    assert "c1 D^{c2}" in printed
    for name in ("size-12", "size-24"):
        run_dir = out / "runs" / name
        assert (run_dir / "alignment.jsonl").exists() and (run_dir / "spectrum.jsonl").exists()
        assert "bulk_claim" in (run_dir / "eos.json").read_text()
    # the data the analysis read are the data the run trained on, array for array (the first TrainingLoss of
    # each run is the one it trained with: runs are trained in grid order, then analysed)
    assert analysed, "no analysis ran"
    trained_X = {}
    for X, y in trained:
        trained_X.setdefault(X.shape[0], (X, y))                # the first loss of each size: its training
    for X, y in analysed:
        np.testing.assert_array_equal(X, trained_X[X.shape[0]][0])
        np.testing.assert_array_equal(y, trained_X[X.shape[0]][1])
    assert cli.main(["analyze", str(out), "--eos", "--alignment", "--spectrum", "--every", "2", "--skip", "2",
                     "--lanczos-steps", "6", "--probes", "2"]) in (0, None)
    printed = capsys.readouterr().out
    assert "2 of 2 runs analysed" in printed and "2022 telemetry" in printed, printed
    assert cli.main(["plot", str(out)]) in (0, None)
    figures = os.listdir(out / "figures")
    assert any(f.startswith("power_law") for f in figures) and any(f.startswith("spectrum") for f in figures)


@pytest.mark.parametrize("kind", ["dice", "arrays", "ucr", "cifar10"])
def test_training_data_is_what_the_loss_of_a_run_holds(kind, tmp_path):
    """config.training_data gives the data as the net trains on them (an MLP: each example flattened), and a run
    rebuilt from its directory holds those same arrays."""
    spec = sweep.load(sweep_file(kind, tmp_path, analyze="[]"))
    name, experiment = spec.runs()[0]
    X, y = config.training_data(experiment)
    assert X.ndim == 2 and len(X) == len(y) == 12
    run_dir = tmp_path / name
    config.run(experiment, str(run_dir), progress=False)
    loss = config.rebuild_loss(str(run_dir))
    np.testing.assert_array_equal(loss.X_host, X)
    np.testing.assert_array_equal(loss.y_host, y)


def test_a_run_whose_analysis_fails_keeps_its_training_and_the_next_sweep_redoes_only_the_analysis(
        tmp_path, capsys, monkeypatch):
    path = sweep_file("dice", tmp_path, analyze='["alignment"]')
    out = tmp_path / "out"
    from nn_eos.experiments import analysis
    original = analysis.analyze_run

    def broken(run_dir, *args, **kwargs):
        raise RuntimeError("the analysis broke")

    monkeypatch.setattr(analysis, "analyze_run", broken)
    with pytest.raises(SystemExit, match="1"):
        cli.main(["sweep", path, "--out", str(out), "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert ("0 runs finished (0 already were), 2 trained but their analysis failed: size-12, size-24 (see "
            "analysis_error.txt in each; the same command again redoes only the analysis), 0 failed") in printed
    run_dir = out / "runs" / "size-12"
    assert (run_dir / "result.json").exists() and (run_dir / "analysis_error.txt").exists()
    assert not (run_dir / "error.txt").exists()
    rows = (out / "tables" / "runs.md").read_text()
    assert "trained, analysis failed: RuntimeError: the analysis broke" in rows
    assert "| size-12 | max_steps" in rows or "max_steps; trained" in rows
    checkpoint = os.path.getmtime(run_dir / "result.json")

    monkeypatch.setattr(analysis, "analyze_run", original)
    trainings = []
    monkeypatch.setattr(config, "run", lambda *args, **kwargs: trainings.append(args))
    cli.main(["sweep", path, "--out", str(out), "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert "2 runs finished (0 already were), 0 failed" in printed, printed
    assert trainings == [] and os.path.getmtime(run_dir / "result.json") == checkpoint   # not trained again
    assert (run_dir / "alignment.jsonl").exists() and not (run_dir / "analysis_error.txt").exists()
    assert "analysis failed" not in (out / "tables" / "runs.md").read_text()


def test_a_sweep_refuses_an_eos_analysis_without_telemetry_and_an_unknown_spectrum(tmp_path):
    text = open(sweep_file("dice", tmp_path, analyze='["eos"]')).read()
    no_telemetry = text[:text.index("[base.telemetry]")] + text[text.index("[grid]"):]
    (tmp_path / "a.toml").write_text(no_telemetry)
    with pytest.raises(config.ConfigError, match=r"sweep.analyze has 'eos'.*add a \[base.telemetry\] section"):
        sweep.load(str(tmp_path / "a.toml"))
    (tmp_path / "b.toml").write_text(text.replace("spectrum_steps = 6", 'spectrum = "gnn"'))
    with pytest.raises(config.ConfigError, match=r"sweep.spectrum must be one of \['hessian', 'ggn', 'residual'\]"):
        sweep.load(str(tmp_path / "b.toml"))


@pytest.mark.parametrize("data", ['dataset = "modular_addition"\nmodulus = 5\n',
                                  'dataset = "characters"\nn = 24\nlength = 6\n'])
def test_a_transformer_through_sweep_analyze_and_plot(data, tmp_path, capsys):
    """Token data built in (modular addition, characters of the generated text) on `arch = "transformer"`: trained
    with its telemetry, its spectrum and the 2022 bulk claim analysed by the sweep, then by `nn-eos analyze`, then
    drawn; the layerwise alignment refuses it in one line."""
    text = f"""
[sweep]
analyze = ["spectrum", "eos"]
analyze_every = 2
spectrum_steps = 6
spectrum_probes = 2

[base.data]
{data}
[base.net]
arch = "transformer"
d = 4
heads = 2
depth = 1
mlp_ratio = 2

[base.integrator]
name = "gd"

[base.train]
until_loss = 0.0
max_steps = 4
snapshot_every = 2

[base.telemetry]
k = 3
every_time = 0.2
method = "lanczos"

[grid]
"integrator.lr" = [0.1, 0.2]
"""
    path = tmp_path / "transformer.toml"
    path.write_text(text)
    out = tmp_path / "out"
    cli.main(["sweep", str(path), "--out", str(out), "--workers", "0", "--no-progress"])
    printed = capsys.readouterr().out
    assert "2 runs finished (0 already were), 0 failed" in printed, printed
    runs = sorted((out / "runs").iterdir())
    for run_dir in runs:
        assert (run_dir / "spectrum.jsonl").exists() and "bulk_claim" in (run_dir / "eos.json").read_text()
    X, y = config.training_data({"data": config.tomllib.loads(data), "net": {"arch": "transformer"}})
    loss = config.rebuild_loss(str(runs[0]))
    np.testing.assert_array_equal(loss.X_host, X)
    np.testing.assert_array_equal(loss.y_host, y)
    assert loss.net.output_shape == (X.shape[1], max(X.max(), y.max()) + 1)
    assert cli.main(["analyze", str(out), "--eos", "--spectrum", "--lanczos-steps", "6", "--probes", "2"]) in (0, None)
    assert "2 of 2 runs analysed" in capsys.readouterr().out
    assert cli.main(["plot", str(out)]) in (0, None)
    with pytest.raises(ValueError, match="one output vector per example"):
        alignment.analyze(loss.net, "cross_entropy", X, y, sharpness=False)
