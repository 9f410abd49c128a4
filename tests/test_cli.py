"""The nn-eos command: configs checked before compute, and train → analyze → plot end to end."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

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
    assert "2022 telemetry: 7 measurements" in text and "alignment over 6 snapshots" in text   # t = 0..6, every 1
    rows = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    result = json.loads((out / "result.json").read_text())
    assert rows[-1]["step"] == result["steps"] and rows[-1]["t"] == result["t"]   # the final θ has its t
    assert {row["tol"] for row in rows} == {1e-4}                              # the default λ_1 tolerance
    cli.main(["analyze", str(out), "--alignment", "--skip", "2", "--tol", "1e-8"])
    rows = [json.loads(line) for line in (out / "alignment.jsonl").read_text().splitlines()]
    assert [row["tol"] for row in rows] == [1e-4] * 6 + [1e-8] * 6             # solved again, tighter
    with pytest.raises(SystemExit) as exit_:
        cli.main(["analyze", str(out), "--alignment", "--tol", "0"])
    assert exit_.value.code == 2 and "--tol: must be positive, got 0" in capsys.readouterr().err
    cli.main(["plot", str(out)])
    for name in ("loss", "sharpness", "rho", "projections", "entering", "sharpness_G_H", "overlap", "K_layers",
                 "components", "chi2", "r_chi", "jacobian_norms", "r_jacobian"):
        assert (out / "figures" / f"{name}.png").exists() and (out / "figures" / f"{name}.pdf").exists(), name
    assert not (out / "figures" / "cusp.png").exists()          # computed, so drawn only on request
    cli.main(["plot", str(out), "--figure", "cusp"])
    assert (out / "figures" / "cusp.png").exists()
    with pytest.raises(SystemExit):
        cli.main(["plot", str(out), "--figure", "figure99"])
    assert "invalid choice: 'figure99'" in capsys.readouterr().err
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
    (TINY + "\n[self_stabilization]\nevery_steps = 1\n", r"one telemetry: \[telemetry\] or \[self_stabilization\]"),
])
def test_config_errors_name_the_key_and_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(config.ConfigError, match=message) as error:
        config.load(path)
    assert path in str(error.value) or "not valid TOML" in str(error.value)


def test_a_config_runs_the_self_stabilization_telemetry(tmp_path):
    text = TINY[:TINY.index("[telemetry]")] + "[self_stabilization]\nevery_steps = 2\n"
    text = text.replace("max_steps = 12", "max_steps = 4").replace("lr = 0.5", "lr = 0.2")
    run = config.run(config.load(write(tmp_path, text)), str(tmp_path / "run"), progress=False)
    assert [row["step"] for row in run.telemetry] == [0, 2, 4]
    assert {"alpha", "beta", "x", "y", "x_predicted", "constrained_loss"} <= set(run.telemetry[0])
    wrong = text.replace('name = "gd"', 'name = "exponential_euler"')
    with pytest.raises(config.ConfigError, match=r"\[self_stabilization\] follows gradient descent"):
        config.load(write(tmp_path, wrong, "wrong.toml"))


def test_missing_config_file(tmp_path, capsys):
    assert cli.main(["train", str(tmp_path / "none.toml")]) == 2
    assert capsys.readouterr().err == f"nn-eos train: error: config file {str(tmp_path / 'none.toml')!r} not found\n"


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


# ----- the installed command as a user meets it: one line per user error, no tracebacks ----------

def nn_eos(*args, cwd=None, env=None, **kwargs):
    """Run the installed ``nn-eos`` command; returns the CompletedProcess (text)."""
    command = shutil.which("nn-eos")
    assert command, "the nn-eos command is not installed (pip install -e .)"
    environment = {key: value for key, value in os.environ.items() if key != "NN_EOS_DEBUG"}
    environment = {**environment, "NN_EOS_DEVICE": "cpu", **(env or {})}
    return subprocess.run([command, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=300,
                          **kwargs)


@pytest.mark.parametrize("change, message", [
    (("max_steps = 12", "max_step = 12"), "unknown key train.max_step"),
    (("max_steps = 12", 'max_steps = "12"'), "train.max_steps must be an integer, got '12'"),
    (('dataset = "dice"', 'dataset = "arrays"\npath = "/no/such/file.npz"'), "data.path '/no/such/file.npz' does not exist"),
    (('activation = "elu"', 'activation = "swish"'), "swish"),
])
def test_a_config_mistake_is_one_line_and_exit_status_2(tmp_path, change, message):
    done = nn_eos("train", write(tmp_path, TINY.replace(*change)), "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("nn-eos train: error: ") and message in done.stderr


def test_debug_shows_the_traceback(tmp_path):
    path = write(tmp_path, TINY.replace("max_steps = 12", "max_step = 12"))
    for extra, env in ((["--debug"], None), ([], {"NN_EOS_DEBUG": "1"})):
        done = nn_eos("train", path, *extra, env=env)
        assert done.returncode == 1 and "Traceback" in done.stderr and "ConfigError" in done.stderr


def test_a_missing_config_file_and_an_existing_run_speak_cli(tmp_path):
    done = nn_eos("train", str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "not found" in done.stderr and "Traceback" not in done.stderr
    path, out = write(tmp_path, TINY), str(tmp_path / "run")
    assert nn_eos("train", path, "--out", out, "--no-progress").returncode == 0
    again = nn_eos("train", path, "--out", out, "--no-progress")
    assert again.returncode == 2
    assert again.stderr == f"nn-eos train: error: {out} already holds a run: pass --resume to continue it, or " \
                           f"choose another --out\n"
    finished = nn_eos("train", path, "--out", out, "--resume")                  # with the progress bar on
    assert finished.returncode == 0 and "step/s" not in finished.stderr and "max_steps" in finished.stdout


def test_ctrl_c_writes_a_checkpoint_says_how_to_resume_and_exits_130(tmp_path):
    path = write(tmp_path, TINY.replace("max_steps = 12", "max_steps = 1000000"))
    out = tmp_path / "run"
    command = shutil.which("nn-eos")
    # SIGINT as the terminal sends it; the child gets the default handler even where this test runs as a
    # background job (whose children inherit SIGINT ignored, and then Python never raises KeyboardInterrupt)
    process = subprocess.Popen([command, "train", path, "--out", str(out), "--no-progress"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "NN_EOS_DEVICE": "cpu"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").stat().st_size > 2000):
            assert time.time() < deadline and process.poll() is None, "training did not get going"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert re.search(rf"interrupted at step (\d+): checkpoint written to {re.escape(str(out))}; "
                     rf"`nn-eos train {re.escape(path)} --out {re.escape(str(out))} --resume` continues", stderr)
    step = int(re.search(r"interrupted at step (\d+)", stderr).group(1))
    assert int(np.load(out / "checkpoint.npz")["step"]) == step


def test_labels_that_skip_classes_are_warned_about(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", X=rng.standard_normal((40, 5)), y=np.array([0, 1, 2, 9] * 10))
    text = TINY.replace('dataset = "dice"\nn = 48', f'dataset = "arrays"\npath = "{tmp_path / "data.npz"}"')
    done = nn_eos("train", write(tmp_path, text.replace("[telemetry]\nk = 7", "[telemetry]\nk = 4")),
                  "--out", str(tmp_path / "run"), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "nn-eos: warning: [data]: labels hold 4 classes of 0..9, none of 3, 4, 5, 6, 7, 8; the net gets 10 " \
           "outputs anyway" in done.stderr
    assert "data.classes" in done.stderr


def test_a_run_bounded_in_time_shows_progress_in_t_with_an_eta(tmp_path):
    text = TINY.replace("max_steps = 12", "max_time = 5.0")
    done = nn_eos("train", write(tmp_path, text), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\| t 5/5 \[\d\d:\d\d<\d\d:\d\d", done.stderr), done.stderr[-500:]
    assert "max_time" in done.stdout


def test_help_says_what_runs_by_default_and_lists_the_figures():
    analyze = nn_eos("analyze", "--help").stdout
    assert "With no flag, or --eos" in analyze and "--device" in analyze and "the device the run used" in analyze
    plot = nn_eos("plot", "--help").stdout
    assert all(name in plot for name in cli.FIGURE_NAMES)
    assert "(default: 10)" in analyze                                # --skip's default is shown


def test_figure_names_are_the_figures():
    from nn_eos.experiments import figures

    assert set(cli.FIGURE_NAMES) == set(figures.FIGURES)


def test_spectrum_along_a_run_is_cached_and_drawn(tmp_path, capsys):
    text = TINY[:TINY.index("[telemetry]")].replace("max_steps = 12", "max_steps = 4")
    out = tmp_path / "run"
    cli.main(["train", write(tmp_path, text), "--out", str(out), "--no-progress"])
    cli.main(["analyze", str(out), "--spectrum", "--lanczos-steps", "12", "--probes", "3"])
    assert "spectrum of hessian at 3 snapshots" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "spectrum.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 2, 4] and all(len(row["nodes"]) == 3 for row in rows)
    for row in rows:                                     # each probe's Gauss weights sum to 1
        assert np.allclose(np.sum(row["weights"], axis=1), 1.0)
    before = (out / "spectrum.jsonl").read_text()
    cli.main(["analyze", str(out), "--spectrum", "--lanczos-steps", "12", "--probes", "3"])
    assert (out / "spectrum.jsonl").read_text() == before                      # cached: nothing computed again
    cli.main(["analyze", str(out), "--spectrum", "ggn", "--lanczos-steps", "12", "--probes", "3"])
    assert "spectrum of ggn" in capsys.readouterr().out
    cli.main(["plot", str(out), "--figure", "spectrum"])
    assert (out / "figures" / "spectrum.png").exists()


def test_an_adam_run_from_a_config_draws_its_preconditioned_sharpness(tmp_path):
    adam = 'name = "adam"\nlr = 0.01\nsharpness_every = 2'
    text = TINY[:TINY.index("[telemetry]")].replace('name = "gd"\nlr = 0.5', adam)
    out = tmp_path / "run"
    cli.main(["train", write(tmp_path, text.replace("max_steps = 12", "max_steps = 4")), "--out", str(out),
              "--no-progress"])
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [("preconditioned_sharpness" in row) for row in metrics] == [True, False, True, False]
    assert metrics[0]["threshold"] == pytest.approx(38 / 0.01)
    cli.main(["plot", str(out), "--figure", "sharpness"])
    assert (out / "figures" / "sharpness.png").exists()
