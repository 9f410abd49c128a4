"""The mutation-testing script (tests/mutation/run.py) and the test order it asks of tests/conftest.py: how a
mutant's exit code becomes a verdict, how the report counts and scores, and that each mutant's tests run quickest
first (mutmut stops at the first failure)."""

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load(HERE / "mutation" / "run.py", "mutation_run")


def test_exit_codes_become_verdicts():
    assert run.status(0) == "survived"
    assert run.status(1) == "killed"
    assert run.status(None) == "not checked"
    assert run.status(33) == "no tests" and run.status(5) == "no tests"
    assert run.status(-24) == "timeout" and run.status(36) == "timeout"
    assert run.status(-11) == "crashed" and run.status(-6) == "crashed"
    assert run.status(99) == "suspicious"


def test_the_report_scores_caught_over_reached_and_lists_what_is_left():
    verdicts = ["killed"] * 6 + ["timeout", "crashed", "survived", "survived", "no tests", "suspicious"]
    names = [f"nn_eos.layers.x_f__mutmut_{i}" for i in range(len(verdicts))]
    results = {"nn_eos/layers.py": dict(zip(names, verdicts))}
    equivalent = {names[8]: "the same result either way"}
    text = run.report(results, equivalent, timing="This run took 3 min.")
    # reached: 6 killed + timeout + crashed + 2 survived + suspicious = 11; caught: 6 + 1 + 1 + 1 equivalent = 9
    row = next(line for line in text.splitlines() if line.startswith("| nn_eos/layers.py"))
    assert row == "| nn_eos/layers.py | 12 | 7 | 1 | 1 | 2 | 1 | 0 | 81.8% |"
    assert "This run took 3 min." in text
    survivors = text.split("## Surviving mutants")[1].split("## Mutants no selected test reaches")[0]
    assert f"`{names[9]}`" in survivors and f"`{names[8]}`" not in survivors
    assert f"- `{names[8]}`: the same result either way" in text
    assert f"`{names[10]}`" in text.split("## Mutants no selected test reaches")[1]


def test_each_mutants_tests_run_quickest_first(tmp_path, monkeypatch):
    conftest = _load(HERE / "conftest.py", "conftest_under_test")
    items = [SimpleNamespace(nodeid=name) for name in ("t.py::slow", "t.py::new", "t.py::quick", "t.py::mid")]
    monkeypatch.delenv("NN_EOS_DEVICE", raising=False)
    monkeypatch.delenv("NN_EOS_MUTATION_STATS", raising=False)
    conftest.pytest_collection_modifyitems(None, items)
    assert [item.nodeid for item in items] == ["t.py::slow", "t.py::new", "t.py::quick", "t.py::mid"]

    stats = tmp_path / "mutmut-stats.json"
    stats.write_text(json.dumps({"duration_by_test": {"t.py::slow": 3.0, "t.py::quick": 0.1, "t.py::mid": 1.0}}))
    monkeypatch.setenv("NN_EOS_MUTATION_STATS", str(stats))
    conftest.pytest_collection_modifyitems(None, items)
    # a test mutmut has not timed (added since its stats) runs first
    assert [item.nodeid for item in items] == ["t.py::new", "t.py::quick", "t.py::mid", "t.py::slow"]
