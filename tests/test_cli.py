"""The nn-eos command: configs checked before compute, and train → analyze → plot end to end."""

import json
import os

import numpy as np
import pytest

from nn_eos.experiments import cli, config

TINY = """
[data]
dataset = "dice"
n = 48

[net]
hidden = [6, 6]
activation = "elu"

[integrator]
name = "gd"
lr = 0.5

[train]
until_loss = 0.0
max_steps = 12
snapshot_every = 2

[telemetry]
k = 7
every_time = 1.0
method = "lanczos"
"""


def write(tmp_path, text, name="run.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_train_analyze_plot_end_to_end(tmp_path, capsys):
    cfg = write(tmp_path, TINY)
    out = tmp_path / "run"
    cli.main(["train", cfg, "--out", str(out), "--no-progress"])
    assert "max_steps" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())["experiment"]
    assert not (out / "experiment.json").exists()                     # one manifest per run
    assert saved["integrator"] == {"name": "gd", "lr": 0.5}
    cli.main(["analyze", str(out), "--eos", "--alignment", "--skip", "2"])
    text = capsys.readouterr().out
    assert "2022 telemetry: 6 measurements" in text and "alignment over 6 snapshots" in text   # t = 6, every 1
    rows = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    assert rows[-1]["step"] == result["steps"] and rows[-1]["t"] == result["t"]   # the final θ has its t
    cli.main(["plot", str(out)])
    for name in ("loss", "sharpness", "rho", "projections", "entering", "sharpness_G_H", "overlap", "K_layers",
                 "components", "chi2", "r_chi", "jacobian_norms", "r_jacobian"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.pdf").exists(), name
    assert not (out / "figures" / "cusp.png").exists()          # computed, so drawn only on request
    cli.main(["plot", str(out), "--figure", "cusp"])
    assert (out / "figures" / "cusp.png").exists()
    with pytest.raises(SystemExit, match="no figure named"):
        cli.main(["plot", str(out), "--figure", "figure99"])
    # resuming a finished run is instant and changes nothing
    before = (out / "metrics.jsonl").read_bytes()
    cli.main(["train", cfg, "--out", str(out), "--resume", "--no-progress"])
    assert (out / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("text,message", [
    (TINY.replace('lr = 0.5', 'lr = 0.5\nlearning_rate = 1'), r"unknown key integrator.learning_rate"),
    (TINY.replace('n = 48', 'n = "48"'), r"data.n must be an integer, got '48'"),
    (TINY.replace('hidden = [6, 6]', 'hidden = 6'), r"net.hidden must be a list, got 6"),
    (TINY.replace('[telemetry]', '[telemtry]'), r"unknown section \[telemtry\]"),
    (TINY.replace('dataset = "dice"', 'dataset = "cifar10"\npath = "/no/such/folder"'),
     r"data.path '/no/such/folder' does not exist"),
    (TINY.replace('[integrator]\nname = "gd"', '[integrator]'), r"missing integrator.name"),
    ("[data\n", r"not valid TOML"),
])
def test_config_errors_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError, match=message) as error:
        config.load(path)
    assert path in str(error.value) or "not valid TOML" in str(error.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        cli.main(["train", str(tmp_path / "none.toml")])


def test_shipped_config_is_valid():
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "configs",
                        "dice_exponential_euler.toml")
    cfg = config.load(path)
    assert cfg["integrator"]["name"] == "exponential_euler"
    X, y = config.build_data({**cfg["data"], "n": 12})
    net, X = config.build_net(cfg["net"], X, 6)
    assert net(X).shape == (12, 6) and np.array_equal(np.bincount(y), [2] * 6)


def test_analyze_prints_the_same_table_1_as_the_sweep_tables(tmp_path, capsys):
    """One implementation of Table 1 (eos.bulk_claim): with too few rows at ρ_{n_c−1} > 0.7, both fall back to ρ_1."""
    from nn_eos import eos

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    rows = [{"step": i, "t": float(i), "n_top": 5, "rho": [0.9, 0.6, 0.5, 0.4, 0.3, 0.2],
             "delta_loss_top": 0.001 * i, "delta_loss_bulk": -0.01 - 0.001 * i} for i in range(4)]
    (run / "telemetry.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cli.main(["analyze", str(run), "--eos"])
    printed = capsys.readouterr().out
    claim = eos.bulk_claim(rows, 6)
    assert claim["edge_index"] == 1 and claim["rows"] == 4
    assert eos.describe_bulk_claim(claim, 6) in printed
    assert "4 rows with ρ_1 > 0.7, as too few rows have ρ_5 > 0.7" in printed and f"{claim['bulk_mean']:+.4f}" in printed
