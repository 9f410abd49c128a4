"""A checker that cannot go soft (issue 39): for every public check of nn_eos.testing, bugs planted one per part it
claims to check — each of the size of its tolerance (a relative 1e-5 where the tolerance is 1e-6) — must raise
AssertionError naming that part, while the correct objects pass. A checker weakened in any of the ways seen by
hand (tolerance raised, error scale taken as a sum, a third-order or criterion part switched off, a case of the
third-order check skipped, u and v made equal) turns one of these red."""

import numpy as np
import pytest

import nn_eos as ne
from nn_eos import testing
from nn_eos.testing import TOL, assert_close, central_difference

SIZE = 1 + 1e-5          # ten times the finite-difference tolerance


# ----- the comparison itself ---------------------------------------------------------------------------------------

def test_assert_close_holds_errors_to_the_largest_entry_not_the_sum():
    expected = np.ones(1000)
    actual = expected.copy()
    actual[7] += 2e-6                                  # 2e-6 of the largest entry: 2e-9 of the sum
    with pytest.raises(AssertionError, match=r"what: max error 2\.000e-06 > 1e-06 × scale 1\.000e\+00, at index "
                                             r"\(7,\)"):
        assert_close(actual, expected, 1e-6, "what")
    actual[7] = 1 + 0.9e-6
    assert_close(actual, expected, 1e-6, "what")      # below the tolerance: passes
    with pytest.raises(AssertionError, match="not finite"):
        assert_close(np.array([1.0, np.nan]), np.ones(2), 1e-6, "what")
    with pytest.raises(AssertionError, match="shape"):
        assert_close(np.ones(3), np.ones(4), 1e-6, "what")


def test_central_differences_are_second_order_accurate():
    """d/dx x³ at 1.3 is 3·1.69; the central difference errs by step² = 1e-10, far below TOL['fd']."""
    assert abs(central_difference(lambda t: t ** 3, 1.3, 1.0) - 3 * 1.3 ** 2) < 1e-9
    assert TOL["fd"] == 1e-6 and TOL["exact"] == 1e-10


# ----- activations ---------------------------------------------------------------------------------------------------

class PlantedGELU(ne.GELU):
    """GELU with one of σ', σ'', σ''' or the derivatives given σ(x) off by a relative 1e-5."""

    def __init__(self, bug):
        self.bug = bug

    def slope(self, x):
        return ne.GELU.slope(x) * (SIZE if self.bug == "slope" else 1)

    def curvature(self, x):
        return ne.GELU.curvature(x) * (SIZE if self.bug == "curvature" else 1)

    def third_derivative(self, x):
        return ne.GELU.third_derivative(x) * (SIZE if self.bug == "third" else 1)

    def derivatives(self, x_hat, x_plus):
        slope, curvature = self.slope(x_hat), self.curvature(x_hat)
        return slope * (1 + 1e-8 if self.bug == "derivatives" else 1), curvature

    def forward(self, x_hat, cache):
        return ne.Activation.forward(self, x_hat, cache)


@pytest.mark.parametrize("bug, message", [
    ("slope", r"PlantedGELU.slope \(σ'\) against differences of σ"),
    ("curvature", r"PlantedGELU.curvature \(σ''\) against differences of σ'"),
    ("third", r"PlantedGELU.third_derivative \(σ'''\) against differences of σ''"),
    ("derivatives", r"PlantedGELU.derivatives: σ' given σ\(x\) against σ'\(x\)"),
])
def test_check_activation_names_each_derivative(bug, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_activation(PlantedGELU(bug))
    testing.check_activation(PlantedGELU(None))


# ----- criteria ------------------------------------------------------------------------------------------------------

class PlantedCrossEntropy(ne.CrossEntropy):
    """Cross-entropy with one part off: a relative 1e-5 in ∂l/∂z, H_z l u or ∂³l; a relative 1e-8 in the dense
    H_z l or √H (checked against the products to rounding); or ∂³l without its centring (the bug seen by hand)."""

    def __init__(self, bug):
        self.bug = bug

    def gradient(self, z, y):
        return super().gradient(z, y) * (SIZE if self.bug == "gradient" else 1)

    def hessian_product(self, z, y, u):
        return super().hessian_product(z, y, u) * (SIZE if self.bug == "hessian_product" else 1)

    def hessian(self, z, y):
        return super().hessian(z, y) * (1 + 1e-8 if self.bug == "hessian" else 1)

    def sqrt_hessian(self, z, y):
        return super().sqrt_hessian(z, y) * (1 + 1e-8 if self.bug == "sqrt_hessian" else 1)

    def third_product(self, z, y, a, b):
        if self.bug == "uncentred":
            return self.output_hessian(z, y)(a * b)
        return super().third_product(z, y, a, b) * (SIZE if self.bug == "third" else 1)


@pytest.mark.parametrize("positions", [(), (3,)])
@pytest.mark.parametrize("bug, message", [
    ("gradient", r"PlantedCrossEntropy.gradient \(∂l/∂z\) against differences of l"),
    ("hessian_product", r"PlantedCrossEntropy.hessian_product \(H_z l u\) against differences of ∂l/∂z"),
    ("hessian", r"PlantedCrossEntropy.hessian against hessian_product"),
    ("sqrt_hessian", r"PlantedCrossEntropy.sqrt_hessian squared against hessian"),
    ("third", r"PlantedCrossEntropy.third_product \(∂³l\[a, b, ·\]\) against differences"),
    ("uncentred", r"PlantedCrossEntropy.third_product \(∂³l\[a, b, ·\]\) against differences"),
])
def test_check_criterion_names_each_part(bug, message, positions):
    with pytest.raises(AssertionError, match=message):
        testing.check_criterion(PlantedCrossEntropy(bug), 4, positions=positions)
    testing.check_criterion(PlantedCrossEntropy(None), 4, positions=positions)


# ----- a layer's third-order passes: every case, u and v apart ----------------------------------------------------------

class PlantedDense(ne.Dense):
    """Dense with a third-order bug that only one case of the check, or only u ≠ v, can see."""

    def __init__(self, bug):
        super().__init__(3, 2)
        self.bug = bug

    def rr_forward(self, ruv_x, t, u, v, cache):
        if self.bug == "swapped":                              # U and V exchanged: equal only when u = v
            return super().rr_forward(ruv_x, t, v, u, cache)
        out = super().rr_forward(ruv_x, t, u, v, cache)
        if self.bug == "ruv_x_zero" and ruv_x is None and out is not None:   # wrong only when R_uR_v{x} = 0
            return out * SIZE
        return out

    def rr_backward(self, ruv_delta, t, u, v, cache, rr_grad, need_input=True):
        out = super().rr_backward(ruv_delta, t, u, v, cache, rr_grad, need_input)
        if self.bug == "first_layer" and t.ru_x is None:               # wrong only at the first layer (R{x} = 0)
            rr_grad *= SIZE
        if self.bug == "rr_backward_size":
            rr_grad *= SIZE
        return out


@pytest.mark.parametrize("bug, message", [
    ("swapped", r"PlantedDense.rr_forward \(R\{x\} given\)"),
    ("ruv_x_zero", r"PlantedDense.rr_forward \(R_uR_v\{x\} = 0\)"),
    ("first_layer", r"PlantedDense.rr_backward parameters \(R\{x\} = 0\)"),
    ("rr_backward_size", r"PlantedDense.rr_backward parameters \(R\{x\} given\)"),
])
def test_the_third_order_check_runs_every_case_with_u_and_v_apart(bug, message):
    """A U/V swap in rr_forward (the bug seen by hand), and bugs visible only when R_uR_v{x} = 0 or at the
    network's first layer with parameters: each of the check's cases is needed."""
    with pytest.raises(AssertionError, match=message):
        testing.check_layer(PlantedDense(bug), (3,))
    testing.check_layer(PlantedDense(None), (3,))


class PlantedTanh(ne.Tanh):
    """σ' off by a relative 1e-5: the bug a whole loss check must also see, through the passes."""

    @staticmethod
    def slope(x):
        return ne.Tanh.slope(x) * SIZE

    def derivatives(self, x_hat, x_plus):
        return self.slope(x_hat), self.curvature(x_hat)


# ----- a whole loss -----------------------------------------------------------------------------------------------------

class PlantedLoss(ne.TrainingLoss):
    """A TrainingLoss with one product off: ∇²L̃ v, G v or H v by a relative 1e-5, or ∇³L̃ by 1e-5."""

    bug = None

    def curvature_product(self, V, kind, theta=None):
        return super().curvature_product(V, kind, theta) * (SIZE if self.bug == kind else 1)

    def third(self, U, V=None, theta=None):
        return super().third(U, V, theta) * (SIZE if self.bug == "third" else 1)


def small_loss(bug=None, activation="tanh"):
    net = ne.mlp([3, 4, 3], activation=activation, seed=1)
    rng = np.random.default_rng(2)
    loss = PlantedLoss(net, "cross_entropy", rng.standard_normal((6, 3)), np.arange(6) % 3)
    loss.bug = bug
    return loss


@pytest.mark.parametrize("bug, message", [
    ("hessian", r"hvp: ∇²L̃ v against differences of ∇L̃"),
    ("ggn", r"∇²L̃ v = G v \+ H v"),
    ("residual", r"∇²L̃ v = G v \+ H v"),
])
def test_check_loss_names_each_product(bug, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_loss(small_loss(bug))
    testing.check_loss(small_loss())


def test_check_loss_sees_a_layer_bug_of_the_tolerances_size_through_the_whole_net():
    net = ne.Sequential([ne.Dense(3, 4), PlantedTanh(), ne.Dense(4, 3)], (3,), theta=np.zeros(16 + 15))
    net.initialise(seed=1)
    loss = ne.TrainingLoss(net, "cross_entropy", np.random.default_rng(2).standard_normal((6, 3)), np.arange(6) % 3)
    with pytest.raises(AssertionError, match=r"gradient: ⟨∇L̃, v⟩ against differences of L̃"):
        testing.check_loss(loss)


def test_check_third_names_a_third_derivative_off_by_the_tolerances_size():
    with pytest.raises(AssertionError, match=r"third: ∇³L̃\[u, v, ·\] against differences of ∇²L̃ v along u"):
        testing.check_third(small_loss("third"))
    testing.check_third(small_loss())


def test_assert_close_without_a_name_says_what_failed_all_the_same():
    with pytest.raises(AssertionError, match=r"^: max error 1\.000e-03 > 1e-06"):
        assert_close(np.array([1.001]), np.array([1.0]), 1e-6)
