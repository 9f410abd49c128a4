"""Aggregate tables of a sweep: the 2022 paper's Table 1 and the 2024 paper's Table 2, from run directories.

Runs are grouped by the grid values that are not seeds (``*.seed``,
``*.subset_seed``): the seeds are repetitions, pooled within a group.

* ``table1`` — 2022 paper, Table 1 ("learning occurs in the bulk, not the
  top"): the mean (std) change of L̃ after a step ``−η P_top g`` and after a
  step ``−η P_bulk g``, over the telemetry measurements with ρ_{n_c−1} > 0.7,
  pooled over the group's runs; groups with fewer than three such
  measurements are left out, as in the paper.
* ``table2`` — 2024 paper, Table 2: the power law ``max_t P^1_{Δ,J} ≈ c1 D^{c2}``
  (eq. 9) fitted over the group's runs, D the number of training examples
  (``data.size`` is left out of the grouping), with R² in log–log space.
* ``runs`` — every run with its status, steps, final loss and time.

Each table is written as Markdown (with the paper's numbers beside ours where
the paper has the same setting), CSV and JSON under ``SWEEP_DIR/tables``.
"""

import csv
import json
import os

import numpy as np

from ..alignment import power_law
from ..eos import EDGE, bulk_claim
from ..rundir import load_run, read_rows

# 2024 paper, Table 2: (dataset, criterion) → (c1, c2, R²). "ucr" is AtrialFibrillation there.
PAPER_TABLE_2 = {("dice", "cross_entropy"): (0.0017, 0.23, 0.84), ("cifar10", "cross_entropy"): (0.0004, 0.49, 0.97),
                 ("cifar10", "mse"): (0.0004, 0.20, 0.74), ("ucr", "cross_entropy"): (0.0026, 0.45, 0.93)}


def _is_seed(key):
    return key.endswith("seed")


def load_sweep(sweep_dir):
    """(sweep.json, [(run name, run config, run directory)]) of a sweep folder."""
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{sweep_dir!r} is neither a run directory (config.json) nor a sweep folder "
                                f"(sweep.json; make one with nn-eos sweep)")
    with open(path) as f:
        info = json.load(f)
    return info, [(name, config, os.path.join(sweep_dir, "runs", name)) for name, config in info["runs"].items()]


def _value(config, key):
    section, name = key.split(".")
    return config.get(section, {}).get(name)


def groups(sweep_dir, leave_out=()):
    """{group label: [(name, config, run_dir)]}, grouping by the non-seed grid keys not in ``leave_out``."""
    info, runs = load_sweep(sweep_dir)
    keys = [k for k in info["grid"] if not _is_seed(k) and k not in leave_out]
    out = {}
    for run in runs:
        label = ", ".join(f"{k} = {_value(run[1], k)}" for k in keys) or "all runs"
        out.setdefault(label, []).append(run)
    return out


def _finished(run_dir):
    return os.path.exists(os.path.join(run_dir, "result.json"))


def runs_table(sweep_dir):
    """One row per run: status (or 'failed' with the error's last line, '…; trained, analysis failed: …' beside a
    trained run's results, or 'not run'), steps, loss, t, D."""
    _, runs = load_sweep(sweep_dir)
    rows = []
    for name, _, run_dir in runs:
        row = {"run": name, "status": "not run", "steps": None, "t": None, "loss": None, "examples": None}
        if _finished(run_dir):
            config, _, _, result = load_run(run_dir)
            row.update(status=result["status"], steps=result["steps"], t=result["t"], loss=result["loss"],
                       examples=config.get("num_examples"))
            if os.path.exists(os.path.join(run_dir, "analysis_error.txt")):
                with open(os.path.join(run_dir, "analysis_error.txt")) as f:
                    last = f.read().strip().splitlines()[-1]
                row["status"] = f"{result['status']}; trained, analysis failed: {last}"
        elif os.path.exists(os.path.join(run_dir, "error.txt")):
            with open(os.path.join(run_dir, "error.txt")) as f:
                row["status"] = "failed: " + f.read().strip().splitlines()[-1]
        elif os.path.exists(os.path.join(run_dir, "checkpoint.npz")):
            row["status"] = "unfinished"
        rows.append(row)
    return rows


def table1(sweep_dir):
    """The 2022 paper's Table 1 per group (module docstring); rows with too few edge measurements say so."""
    rows = []
    for label, runs in groups(sweep_dir).items():
        telemetry = [r for _, _, run_dir in runs if _finished(run_dir)
                     for r in read_rows(os.path.join(run_dir, "telemetry.jsonl"))]
        row = {"group": label, "runs": sum(_finished(d) for _, _, d in runs)}
        if not telemetry:
            rows.append({**row, "rows": 0, "note": "no telemetry"})
            continue
        claim = bulk_claim(telemetry, telemetry[0]["n_top"] + 1)
        if claim["holds"] is None:
            rows.append({**row, "rows": 0, "note": f"fewer than 3 measurements with ρ_1 > {EDGE} (omitted, as in "
                                                   f"the paper)"})
            continue
        rows.append({**row, "rows": claim["rows"], "edge": f"ρ_{claim['edge_index']} > {EDGE}",
                     "top_mean": claim["top_mean"], "top_std": claim["top_std"], "bulk_mean": claim["bulk_mean"],
                     "bulk_std": claim["bulk_std"], "learning_in_bulk": claim["holds"]})
    return rows


def peak_alignment(run_dir):
    """max over the analysed snapshots of P^1_{Δ,J} (from alignment.jsonl), or None before analysis."""
    rows = read_rows(os.path.join(run_dir, "alignment.jsonl"))
    values = [r["components_1"]["P_J"] for r in rows if r["components_1"]["P_J"] is not None]
    return float(np.nanmax(values)) if values else None


def table2(sweep_dir):
    """The 2024 paper's Table 2 per group (module docstring), with the paper's fit where it has one."""
    rows = []
    for label, runs in groups(sweep_dir, leave_out=("data.size",)).items():
        sizes, peaks = [], []
        for _, config, run_dir in runs:
            peak = peak_alignment(run_dir) if _finished(run_dir) else None
            if peak is not None:
                sizes.append(load_run(run_dir)[0]["num_examples"])
                peaks.append(peak)
        config = runs[0][1]
        key = (config["data"]["dataset"], config.get("criterion", {}).get("name", "cross_entropy"))
        row = {"group": label, "dataset": key[0], "criterion": key[1], "runs": len(peaks),
               "sizes": sorted(set(sizes))}
        if len(set(sizes)) >= 2:
            row["c1"], row["c2"], row["r2"] = power_law(sizes, peaks)
        else:
            row["note"] = "needs analysed runs of at least two dataset sizes"
        if key in PAPER_TABLE_2:
            row["paper_c1"], row["paper_c2"], row["paper_r2"] = PAPER_TABLE_2[key]
        rows.append(row)
    return rows


def _format(value):
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def markdown(rows):
    """A Markdown table of dict rows (columns in first-seen order)."""
    columns = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


TITLES = {"runs": "Runs of the sweep",
          "table1": "2022 paper, Table 1: learning occurs in the bulk, not the top (ΔL̃ of a step along P_top g and "
                    "P_bulk g while at the edge)",
          "table2": "2024 paper, Table 2: power law max_t P^1_{Δ,J} ≈ c1 D^{c2} (eq. 9)"}
BUILDERS = {"runs": runs_table, "table1": table1, "table2": table2}


def write_tables(sweep_dir, names=("table1", "table2")):
    """Compute the named tables (and ``runs``, always) and write .md/.csv/.json; returns {name: rows}."""
    folder = os.path.join(sweep_dir, "tables")
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name in ("runs", *[n for n in names if n != "runs"]):
        if name not in BUILDERS:
            raise ValueError(f"unknown table {name!r}; expected one of {sorted(BUILDERS)}")
        rows = out[name] = BUILDERS[name](sweep_dir)
        with open(os.path.join(folder, f"{name}.md"), "w") as f:
            f.write(f"# {TITLES[name]}\n\n" + markdown(rows))
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
            json.dump(rows, f, indent=2)
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        with open(os.path.join(folder, f"{name}.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows({k: _format(v) for k, v in row.items()} for row in rows)
    return out
