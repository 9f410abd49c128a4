"""Hypothesis profiles and the device switch for the whole suite.

HYPOTHESIS_PROFILE=ci (used by .ci/run) bounds the examples and lifts deadlines
so that the suite fits in CI on two cores; 'dev' (the default) searches
harder; 'thorough' is for a long local run; 'mutation' for tests/mutation/run.py.

NN_EOS_DEVICE=gpu builds every network on CuPy; without a working CuPy the
whole suite is skipped with the reason, rather than failing.
"""

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from nn_eos import backend

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=20, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
# mutation testing (tests/mutation/run.py): each mutant reruns the tests that reach it, so few examples, and the
# same ones every time, so that a verdict does not depend on the draw; a failing example is not shrunk or
# explained (a mutant is caught by the first one; shrinking took seconds a test, more than some whole runs)
settings.register_profile("mutation", max_examples=8, derandomize=True, database=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NN_EOS_DEVICE") == "gpu" and not backend.gpu_available():
        skip = pytest.mark.skip(reason="NN_EOS_DEVICE=gpu but CuPy (or a CUDA device) is not available")
        for item in items:
            item.add_marker(skip)
    stats = os.environ.get("NN_EOS_MUTATION_STATS")
    if stats and Path(stats).exists():
        # mutation testing (tests/mutation/run.py): mutmut stops a mutant's tests at the first failure (-x), so the
        # quickest tests run first; their durations are those mutmut measured on the unmutated code
        duration = json.loads(Path(stats).read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: duration.get(item.nodeid, 0.0))
