"""Each criterion's ∂l/∂z, H_z l · u and R = sqrt(H_z l), against finite differences and identities."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

from checks import TOL, assert_close, check_criterion, device_xp
from nn_eos import backend
from nn_eos.criteria import MSE, CrossEntropy, criterion

xp = device_xp          # the suite's device, looked up at first use (checks.py)
CRITERIA = [CrossEntropy(), MSE()]


@st.composite
def outputs(draw):
    n, O = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    z = rng.standard_normal((n, O)) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    return z, rng.integers(0, O, size=n), rng


def host(a):
    return backend.to_numpy(a)


@pytest.mark.parametrize("crit", CRITERIA, ids=lambda c: c.name)
@given(n=st.integers(1, 6), O=st.integers(2, 6), scale=st.sampled_from([0.1, 1.0, 5.0]),
       seed=st.integers(0, 2**32 - 1))
def test_every_derivative_of_the_criterion(crit, n, O, scale, seed):
    """∂l/∂z and H_z l u against central differences, H_z l against H_z l u, sqrt(H_z l) symmetric PSD squaring
    to H_z l (nn_eos.testing.check_criterion)."""
    check_criterion(crit, O, seed=seed, n=n, scale=scale)


@pytest.mark.parametrize("crit", CRITERIA, ids=lambda c: c.name)
@given(data=outputs(), width=st.integers(1, 5))
def test_operator_norms_do_not_depend_on_the_square_root(crit, data, width):
    """Any S with Sᵀ S = H_z l is S = U R with U orthogonal, so ‖S M‖ = ‖R M‖ for every M."""
    z, y, rng = data
    H = host(crit.hessian(xp.asarray(z), xp.asarray(y)))
    R = host(crit.sqrt_hessian(xp.asarray(z), xp.asarray(y)))
    mu, Q = np.linalg.eigh(H)
    S = np.sqrt(np.clip(mu, 0, None))[:, :, None] * Q.transpose(0, 2, 1)   # diag(√μ) Qᵀ, not symmetric
    assert_close(S.transpose(0, 2, 1) @ S, H, TOL["exact"], "Sᵀ S = H_z l")
    M = rng.standard_normal((z.shape[0], z.shape[1], width))
    assert_close(np.linalg.norm(S @ M, ord=2, axis=(1, 2)), np.linalg.norm(R @ M, ord=2, axis=(1, 2)), TOL["exact"],
                 "operator norms of S M and R M")


def test_cross_entropy_is_stable_for_huge_logits():
    z = xp.asarray([[1000.0, -1000.0, 0.0], [-800.0, 800.0, 799.0]])
    y = xp.asarray([1, 1])
    with np.errstate(over="raise", invalid="raise"):
        value = host(CrossEntropy().value(z, y))
        grad = host(CrossEntropy().gradient(z, y))
    assert np.allclose(value, [2000.0, np.log1p(np.exp(-1.0))])
    assert np.all(np.isfinite(grad)) and np.allclose(grad.sum(axis=1), 0)


def test_mse_is_the_mean_over_outputs_against_one_hot_targets():
    z, y = xp.asarray([[0.5, 0.0, 2.0]]), xp.asarray([2])
    assert host(MSE().value(z, y))[0] == pytest.approx((0.25 + 0.0 + 1.0) / 3)


def test_criterion_names():
    assert isinstance(criterion("cross_entropy"), CrossEntropy) and isinstance(criterion("CE"), CrossEntropy)
    assert isinstance(criterion("mse"), MSE)
    assert (repr(criterion("CE")), repr(criterion("mse"))) == ("CrossEntropy()", "MSE()")    # errors name them
    with pytest.raises(ValueError, match="unknown criterion 'hinge'"):
        criterion("hinge")
    with pytest.raises(TypeError, match="criterion must be"):
        criterion(3)


def test_cross_entropy_products_stay_accurate_in_float32_when_the_softmax_saturates():
    """Late in training p_max ≈ 1, where ``u − pᵀu`` would cancel to float32 rounding of u: the product shifts
    u by its entry at the argmax first (H_z l 1 = 0), which keeps it to a few float32 ulps of the result."""
    z = np.array([[12.0, 0.0, -3.0, 1.0], [0.5, 14.0, 1.0, -2.0]])         # 1 − p_max ≈ 1e-5 and 1e-6
    y = np.array([0, 1])
    u = np.random.default_rng(0).standard_normal((3, 2, 4)) + 5.0            # entries far from 0, as R{z} is
    exact = host(CrossEntropy().hessian_product(xp.asarray(z), xp.asarray(y), xp.asarray(u)))
    single = host(CrossEntropy().hessian_product(xp.asarray(z.astype(np.float32)), xp.asarray(y),
                                                 xp.asarray(u.astype(np.float32))))
    assert single.dtype == np.float32
    assert np.abs(single - exact).max() <= 1e-4 * np.abs(exact).max()


def test_cross_entropy_third_derivatives_stay_accurate_in_float32_when_the_softmax_saturates():
    """The same saturation for ∂³l[a, b, ·]: a and b are shifted by their entries at the argmax before they are
    centred, which keeps the result to a few float32 ulps (docs/third.md)."""
    z = np.array([[12.0, 0.0, -3.0, 1.0], [0.5, 14.0, 1.0, -2.0]])
    y = np.array([0, 1])
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 2, 4)) + 5.0
    exact = host(CrossEntropy().third_product(xp.asarray(z), xp.asarray(y), xp.asarray(a), xp.asarray(b)))
    single = host(CrossEntropy().third_product(*(xp.asarray(v.astype(np.float32)) for v in (z, y, a, b))))
    assert single.dtype == np.float32
    assert np.abs(single - exact).max() <= 1e-5 * np.abs(exact).max()


@pytest.mark.parametrize("name", ["cross_entropy", "mse"])
def test_every_derivative_of_a_float32_output_is_float32(name):
    crit = criterion(name)
    rng = np.random.default_rng(2)
    z = xp.asarray(rng.standard_normal((3, 4)).astype(np.float32))
    y = xp.asarray(np.array([0, 3, 1]))
    u = xp.asarray(rng.standard_normal((2, 3, 4)).astype(np.float32))
    results = {"value": crit.value(z, y), "gradient": crit.gradient(z, y), "hessian": crit.hessian(z, y),
               "hessian_product": crit.hessian_product(z, y, u), "output_hessian": crit.output_hessian(z, y)(u),
               "sqrt_hessian": crit.sqrt_hessian(z, y), "third_product": crit.third_product(z, y, u, u)}
    assert {key: value.dtype for key, value in results.items()} == {key: np.float32 for key in results}
    np.testing.assert_allclose(host(results["output_hessian"]), host(results["hessian_product"]), rtol=1e-6)


def test_cross_entropy_of_rows_far_apart_is_computed_row_by_row():
    """The softmax is shifted by each row's own maximum: rows 2000 apart (one example's logits near 1000,
    another's near −1000) give every derivative exactly as each row alone does, finite."""
    z = np.array([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -999.0]])
    y = np.array([0, 2])
    u = np.random.default_rng(0).standard_normal((2, 2, 3))
    crit = CrossEntropy()
    together = {"gradient": crit.gradient(xp.asarray(z), xp.asarray(y)),
                "hessian_product": crit.hessian_product(xp.asarray(z), xp.asarray(y), xp.asarray(u)),
                "hessian": crit.hessian(xp.asarray(z), xp.asarray(y))}
    for i in range(2):
        alone = {"gradient": crit.gradient(xp.asarray(z[i:i + 1]), xp.asarray(y[i:i + 1]))[0],
                 "hessian_product": crit.hessian_product(xp.asarray(z[i:i + 1]), xp.asarray(y[i:i + 1]),
                                                         xp.asarray(u[:, i:i + 1]))[:, 0],
                 "hessian": crit.hessian(xp.asarray(z[i:i + 1]), xp.asarray(y[i:i + 1]))[0]}
        for key, value in alone.items():
            row = host(together[key])[:, i] if key == "hessian_product" else host(together[key])[i]
            assert np.isfinite(row).all(), key
            np.testing.assert_allclose(row, host(value), rtol=1e-12, atol=1e-15, err_msg=key)


@pytest.mark.parametrize("name", ["cross_entropy", "Cross-Entropy", "crossentropy", "CE", "ce"])
def test_every_spelling_of_cross_entropy_is_it(name):
    assert isinstance(criterion(name), CrossEntropy)
