"""Hypothesis profiles and the device switch for the whole suite.

HYPOTHESIS_PROFILE=ci (used by .ci/run) bounds the examples and lifts deadlines
so that the suite fits in CI on two cores; 'dev' (the default) searches
harder; 'thorough' is for a long local run; 'mutation' for tests/mutation/run.py.

NN_EOS_DEVICE=gpu builds every network on CuPy; without a working CuPy the
whole suite is skipped with the reason, rather than failing.
"""

import os

import pytest
from hypothesis import HealthCheck, settings

from nn_eos import backend

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=20, derandomize=True, print_blob=True, **_common)
settings.register_profile("dev", max_examples=40, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
# mutation testing (tests/mutation/run.py): each mutant reruns the tests that reach it, so few examples, and the
# same ones every time, so that a verdict does not depend on the draw
settings.register_profile("mutation", max_examples=8, derandomize=True, database=None, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("NN_EOS_DEVICE") == "gpu" and not backend.gpu_available():
        skip = pytest.mark.skip(reason="NN_EOS_DEVICE=gpu but CuPy (or a CUDA device) is not available")
        for item in items:
            item.add_marker(skip)
