"""The derivations live in the repository: every file that code or docs cite exists, and docs/ code runs.

A docstring or comment that cites a path (``docs/passes.md``, ``bench/dynamics.py``) must name a file of
this repository, so that a user who clones it can follow the citation; links in the Markdown files must
resolve too. Every Python block of docs/*.md runs (README.md's are run by tests/test_readme.py), and the
example layer of docs/layers.md passes the layer checks the shipped layers pass.
"""

import os
import re

import pytest

from checks import check_layer
from test_readme import python_blocks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_FOLDERS = ("nn_eos", "bench", "tests", "examples")
DOCS = sorted(os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md"))
CITED_PATH = re.compile(r"(?<![\w/.~<-])((?:\.\./)?(?:[\w.-]+/)+[\w.-]+\.(?:md|py|toml|json|txt|png|sh|cfg))\b")
PLACEHOLDERS = ("OUT/", "DIR/", "run_dir/")        # where a docstring names a file a command will write
OUTSIDE = ("DESIGN.md", "STYLE.md", "../shared")    # the founders' notes, which users never see


def python_files():
    for folder in CODE_FOLDERS:
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(directory, name)


def exists(path, directory):
    return os.path.exists(os.path.join(ROOT, path)) or os.path.exists(os.path.join(directory, path))


def test_every_path_the_code_cites_is_in_the_repository():
    missing = []
    for path in python_files():
        text = open(path, encoding="utf-8").read()
        relative = os.path.relpath(path, ROOT)
        if relative == os.path.join("tests", "test_docs.py"):
            continue                                    # the checker itself names what it looks for
        missing += [f"{relative} cites {name}" for name in OUTSIDE if name in text]
        for match in CITED_PATH.finditer(text):
            cited = match.group(1)
            if not cited.startswith(PLACEHOLDERS) and not exists(cited, os.path.dirname(path)):
                missing.append(f"{relative} cites {cited}")
    assert not missing, "\n".join(missing)


def test_the_checker_finds_a_missing_citation(tmp_path):
    """The pattern above recognises the citations it must check (a test that cannot fail is no test)."""
    text = 'Notation (docs/notation.md); see bench/no_such_bench.py and "DESIGN.md §2".'
    cited = [m.group(1) for m in CITED_PATH.finditer(text)]
    assert cited == ["docs/notation.md", "bench/no_such_bench.py"]
    assert exists(cited[0], ROOT) and not exists(cited[1], ROOT)


@pytest.mark.parametrize("page", ["README.md", *DOCS])
def test_every_markdown_link_resolves(page):
    text = open(os.path.join(ROOT, page), encoding="utf-8").read()
    directory = os.path.dirname(os.path.join(ROOT, page))
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text)]
    broken = [t for t in targets if t and not t.startswith(("http://", "https://")) and not exists(t, directory)]
    assert not broken, f"{page} links to {broken}"
    assert not [name for name in OUTSIDE if name in text], f"{page} cites a file outside the repository"


def test_the_docs_hold_each_part_of_the_math():
    for page in ("notation.md", "passes.md", "curvature.md", "integrators.md", "layers.md"):
        assert os.path.join("docs", page) in DOCS


@pytest.mark.parametrize("page", DOCS)
def test_every_python_block_of_the_docs_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for number, code in enumerate(python_blocks(open(os.path.join(ROOT, page), encoding="utf-8").read()), 1):
        exec(compile(code, f"{page} python block {number}", "exec"), namespace)


def test_the_example_layer_of_the_docs_passes_the_layer_checks():
    namespace = {}
    exec(compile(python_blocks(open(os.path.join(ROOT, "docs", "layers.md"), encoding="utf-8").read())[0],
                 "docs/layers.md", "exec"), namespace)
    check_layer(namespace["Scale"](3), (3,), seed=0, n=4)
