"""Every Python block of the README runs, in order, as one session (in a scratch folder)."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
NOT_RUN = "<!-- not run by tests/test_readme.py"


def python_blocks(text):
    """The README's ```python blocks in order, without those marked as not run (the line before says why)."""
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", text, re.S):
        if not match.group("before").startswith(NOT_RUN):
            blocks.append(match.group("code"))
    return blocks


def test_the_readme_has_python_blocks_and_marks_every_block_it_skips():
    text = open(README, encoding="utf-8").read()
    assert len(python_blocks(text)) >= 3
    skipped = text.count(NOT_RUN)
    assert text.count("```python") == len(python_blocks(text)) + skipped


def test_every_readme_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for number, code in enumerate(python_blocks(open(README, encoding="utf-8").read()), 1):
        try:
            exec(compile(code, f"README.md python block {number}", "exec"), namespace)
        except Exception as error:                       # say which block, then fail with the error
            pytest.fail(f"README python block {number} raised {type(error).__name__}: {error}\n{code}")
    assert namespace["run"].steps == 30 and namespace["res"].values.shape == (8,)
    assert len(namespace["series"]["step"]) == 4                    # snapshots 0, 10, 20, 30
