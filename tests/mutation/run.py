"""Mutation testing of the core: run mutmut, then write the report (mutants, killed, survived, equivalent, score
per module).

    pip install -e ".[mutation]"
    python tests/mutation/run.py [--workers 2] [--only 'nn_eos.integrators*' …] [--retest] [--report FILE]
                                 [--only-report]

mutmut (configured in setup.cfg, section [mutmut]: the core modules and the test files that exercise them)
changes one thing at a time in the core — an operator, a constant, a comparison, an argument — and runs the
tests that reach the changed function; a mutant is *killed* when a test fails. Hypothesis runs under the
``mutation`` profile (tests/conftest.py: few examples, derandomised, so a verdict does not depend on luck; no
shrinking). The tests run on the strict stand-in device (``NN_EOS_DEVICE=strict``), so that a mutant mixing
host and device arrays fails as it would on a GPU, and each mutant's tests run quickest first (tests/conftest.py
reads mutmut's timings), as mutmut stops at the first failure. A full pass from nothing takes about 47
minutes on 2 cores (docs/architecture.md); the report says how long its run took.
Mutants that change no behaviour are listed with the reason in tests/mutation/equivalent.toml and count as
killed; everything else that survives is a hole in the suite. A run is incremental (mutmut keeps ``mutants/``)
and stops cleanly on Ctrl-C; ``--only-report`` rewrites the report from what is there. After tests are
added or edited (in the listed files, or as a new file in setup.cfg's selection), ``--retest`` maps the tests
to the functions they reach again and runs the survivors; the other verdicts stand, as more tests cannot
revive a killed mutant.

The score of a module is (killed + timeouts + crashes + equivalent) / (mutants that tests reach). Mutants that no test
reaches are listed apart: they are code the selected tests never run.
"""

import argparse
import configparser
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:                                               # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# mutmut's exit codes (its stats.status_by_exit_code); a worker that dies of SIGABRT (-6) crashed, as one that
# dies of SIGSEGV (-11), and that is not a passing run
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          -11: "crashed", -9: "crashed", -6: "crashed"}


def run_mutmut(workers, only=()):
    # on the strict stand-in device (nn_eos/strict.py), so that a mutant mixing host and device arrays is caught
    # and with each mutant's tests quickest first (tests/conftest.py), as mutmut stops at the first failure
    env = {**os.environ, "HYPOTHESIS_PROFILE": "mutation", "NN_EOS_DEVICE": "strict", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "NN_EOS_MUTATION_STATS": str(ROOT / "mutants" / "mutmut-stats.json")}
    return subprocess.call([sys.executable, "-m", "mutmut", "run", "--max-children", str(workers), *only],
                           cwd=ROOT, env=env)


def selection():
    """The test files of setup.cfg's [mutmut] section, in order."""
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser.get("mutmut", "pytest_add_cli_args_test_selection").split()


def keep_verdicts_when_tests_are_added():
    """Adding test files can kill more mutants but never revive one. mutmut (3.8) drops every verdict when the
    test selection changes; when the selection only grew since the last run (recorded as selection.json in
    mutmut's directory), its fingerprint in mutmut's stats is brought up to date, so the verdicts stand and
    mutmut collects the new tests' coverage alone. Returns the files added (``--retest`` gives the survivors to
    them)."""
    stats_path, recorded = ROOT / "mutants" / "mutmut-stats.json", ROOT / "mutants" / "selection.json"
    files = selection()
    old = json.loads(recorded.read_text()) if recorded.exists() else None
    if not stats_path.exists():
        recorded.parent.mkdir(exist_ok=True)
        recorded.write_text(json.dumps(files))
        return []
    stats = json.loads(stats_path.read_text())
    fingerprint = stats.get("config_fingerprint", {})
    added = [f for f in files if old is not None and f not in old]
    if old is not None and set(old) <= set(files) and "test_selection" in fingerprint:
        # mutmut's own hash of the selection (its Config.config_fingerprint, group "test_selection")
        fingerprint["test_selection"] = hashlib.sha256(repr(tuple(files)).encode()).hexdigest()[:12]
        stats_path.write_text(json.dumps(stats))
    recorded.write_text(json.dumps(files))
    return added


def forget_coverage():
    """Make mutmut map every test to the functions it reaches again. It records the mapping once per test name
    (its mutmut-stats.json), so a test edited to reach a new function would not be run on that function's
    mutants; the verdicts (mutants/*.meta) stay."""
    stats_path = ROOT / "mutants" / "mutmut-stats.json"
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        stats["tests_by_mangled_function_name"], stats["duration_by_test"] = {}, {}
        stats_path.write_text(json.dumps(stats))


def verdicts():
    """{module path: {mutant name: status}} from mutmut's records in mutants/."""
    out = {}
    for meta in sorted((ROOT / "mutants").rglob("*.py.meta")):
        module = str(meta.relative_to(ROOT / "mutants"))[:-len(".meta")]
        data = json.loads(meta.read_text())
        out[module] = {name: status(code) for name, code in data.get("exit_code_by_key", {}).items()}
    return out


def status(code):
    if code is None:
        return "not checked"
    if code == 0:
        return "survived"
    if code in (5, 33):
        return "no tests"
    return KILLED.get(code, "suspicious")


def equivalents():
    """{mutant name: reason} from tests/mutation/equivalent.toml."""
    path = HERE / "equivalent.toml"
    if not path.exists():
        return {}
    return {name: entry["reason"] for name, entry in tomllib.loads(path.read_text()).items()}


def report(results, equivalent, command="python tests/mutation/run.py", timing=""):
    lines = ["# Mutation testing of the core", "",
             f"Written by `{command}` (mutmut, configured in setup.cfg; docs/architecture.md).", "",
             *([timing, ""] if timing else []),
             "| module | mutants | killed | timeout | equivalent | survived | no test reaches | not checked | score |",
             "|---|---|---|---|---|---|---|---|---|"]
    survivors, unreached = [], []
    totals = Counter()
    for module, by_name in sorted(results.items()):
        counts = Counter()
        for name, verdict in by_name.items():
            if verdict == "survived" and name in equivalent:
                verdict = "equivalent"
            counts[verdict] += 1
            if verdict == "survived":
                survivors.append(name)
            elif verdict == "no tests":
                unreached.append(name)
        totals.update(counts)
        lines.append(row(module, counts))
    lines.append(row("**all**", totals))
    lines += ["", "## Equivalent mutants (counted as killed)", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in sorted(equivalent.items())] or ["none"]
    lines += ["", "## Surviving mutants", "", "`mutmut show NAME` prints each one's change.", ""]
    lines += [f"- `{name}`" for name in sorted(survivors)] or ["none"]
    lines += ["", "## Mutants no selected test reaches", ""]
    lines += [f"- `{name}`" for name in sorted(unreached)] or ["none"]
    return "\n".join(lines) + "\n"


def row(module, counts):
    reached = sum(counts[k] for k in ("killed", "timeout", "equivalent", "survived", "crashed", "suspicious"))
    caught = counts["killed"] + counts["timeout"] + counts["equivalent"] + counts["crashed"]
    score = f"{100 * caught / reached:.1f}%" if reached else "–"
    total = sum(counts.values())
    return (f"| {module} | {total} | {counts['killed'] + counts['crashed']} | {counts['timeout']} | "
            f"{counts['equivalent']} | {counts['survived'] + counts['suspicious']} | {counts['no tests']} | "
            f"{counts['not checked']} | {score} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--report", default=str(HERE / "report.md"))
    parser.add_argument("--only-report", action="store_true", help="write the report from the last run")
    parser.add_argument("--only", nargs="+", default=(), metavar="GLOB",
                        help="mutants whose names match, e.g. 'nn_eos.integrators*' (default: all)")
    parser.add_argument("--retest", action="store_true",
                        help="map the tests again, then run the mutants that survived or that no test reached "
                             "(after adding or editing tests)")
    args = parser.parse_args()
    timing = ""
    if not args.only_report:
        fresh = not (ROOT / "mutants").exists()
        added = keep_verdicts_when_tests_are_added()
        if added:
            print("test files added since the last run (verdicts kept; --retest runs the survivors against them):",
                  *added)
        only = list(args.only)
        if args.retest:
            forget_coverage()
            only += [name for by_name in verdicts().values() for name, verdict in by_name.items()
                     if verdict in ("survived", "no tests", "suspicious")]
            if not only:
                sys.exit("no survivors to retest")
        start = time.perf_counter()
        run_mutmut(args.workers, only)
        minutes = (time.perf_counter() - start) / 60
        timing = (f"This run{' (a full pass from nothing: mutants, test mapping, every mutant)' if fresh else ''} "
                  f"took {minutes:.0f} min with {args.workers} workers on a {os.cpu_count()}-core CPU.")
    results = verdicts()
    if not results:
        sys.exit("no mutation results in mutants/: run without --only-report first")
    only = " ".join(f"'{glob}'" for glob in args.only)
    command = "python tests/mutation/run.py" + (f" --only {only}" if only else "")
    text = report(results, equivalents(), command, timing)
    Path(args.report).write_text(text)
    print(text.split("\n## ")[0])
    print(f"report: {args.report}")


if __name__ == "__main__":
    main()
