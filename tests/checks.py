"""The suite's device helpers; the checks, tolerances and strategies are nn_eos.testing's (one implementation)."""

import nn_eos as ne
from nn_eos.testing import (FD_STEP, KINK_MARGIN, TOL, assert_close, away_from_kinks,  # noqa: F401
                            central_difference, check_activation, check_criterion, check_layer, check_loss,
                            dense_ggn, dense_hessian)
from nn_eos.testing.strategies import Problem, build_problem, min_abs_preactivation, problems  # noqa: F401


class _DeviceModule:
    """The array module of the suite's device (NN_EOS_DEVICE), looked up when first used: importing a test
    module never needs CuPy, so without it a GPU run is skipped (conftest.py) instead of failing collection."""

    def __getattr__(self, name):
        return getattr(ne.backend.module_for(ne.backend.default_device()), name)


device_xp = _DeviceModule()


def device_operator(M):
    """The symmetric matrix M as a block operator ``V ↦ M V`` on the suite's device (NN_EOS_DEVICE), so that
    the eigensolvers' tests run where the suite runs."""
    from nn_eos.eigen import BlockOperator

    A = device_xp.asarray(M)
    return BlockOperator(lambda V: A @ V, like=A[:, 0])
