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
        if self.bug == "third_asymmetric":                   # 1e-8: under the difference check, over rounding
            return super().third_product(z, y, a, b) + 1e-8 * (a - b)
        return super().third_product(z, y, a, b) * (SIZE if self.bug == "third" else 1)


@pytest.mark.parametrize("positions", [(), (3,)])
@pytest.mark.parametrize("bug, message", [
    ("gradient", r"^PlantedCrossEntropy.gradient \(∂l/∂z\) against differences of l"),
    ("hessian_product", r"^PlantedCrossEntropy.hessian_product \(H_z l u\) against differences of ∂l/∂z"),
    ("hessian", r"^PlantedCrossEntropy.hessian against hessian_product"),
    ("sqrt_hessian", r"^PlantedCrossEntropy.sqrt_hessian squared against hessian"),
    ("third", r"^PlantedCrossEntropy.third_product \(∂³l\[a, b, ·\]\) against differences"),
    ("uncentred", r"^PlantedCrossEntropy.third_product \(∂³l\[a, b, ·\]\) against differences"),
    ("third_asymmetric", r"^PlantedCrossEntropy.third_product symmetric in a and b"),
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
        if self.bug == "swapped_without_ruv" and ruv_x is None and t.ru_x is not None:   # seen only if R_u ≠ R_v
            return super().rr_forward(ruv_x, t, v, u, cache)
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
    ("swapped_without_ruv", r"^PlantedDense.rr_forward \(R_uR_v\{x\} = 0\)"),
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
    seen = ()

    def curvature_product(self, V, kind, theta=None):
        product = super().curvature_product(V, kind, theta) * (SIZE if self.bug == kind else 1)
        sign = {"ggn": 1, "residual": -1}.get(kind, 0)          # G and H off in opposite ways: G + H still ∇²L̃
        if self.bug == "dense_hessian":                          # ∇²L̃ and G off together, by 3e-6 in one entry
            sign = 1 if kind in ("hessian", "ggn") else 0
        if self.bug in ("asymmetric", "block", "dense_hessian", "dense_ggn") and sign:
            product = product + sign * self.xp.asarray(self.planted(V))
        return product

    def planted(self, V):
        """(error matrix) V on the host: antisymmetric (a G that is not symmetric), symmetric but applied to
        blocks only (a block unlike its columns), or symmetric in one pair of entries: 3e-6 of the largest
        entry of ∇²L̃ or G, which a random direction's difference check (1e-6 of a sum of P terms) cannot see."""
        V = ne.backend.to_numpy(V)
        P = self.net.num_params
        E = np.zeros((P, P))
        if self.bug == "asymmetric":
            E = 1e-5 * np.triu(np.random.default_rng(0).standard_normal((P, P)), 1)
            E = E - E.T
        elif self.bug == "block" and V.ndim == 2 and V.shape[1] > 1:
            E = 1e-5 * np.eye(P)
        elif self.bug in ("dense_hessian", "dense_ggn"):
            E[0, 1] = E[1, 0] = 3e-6 * self.largest
        return E @ V

    def third(self, U, V=None, theta=None):
        """Off by 1e-5 ("third"), or by 1e-8 — below the difference check's tolerance, above rounding — for a
        single pair ("third_pair"), for v = None ("third_v_none"), or antisymmetrically in u and v."""
        result = super().third(U, V, theta) * (SIZE if self.bug == "third" else 1)
        if self.bug == "third_pair" and np.ndim(U) == 1 or self.bug == "third_v_none" and V is None:
            result = result * (1 + 1e-8)
        if self.bug == "third_asymmetric" and V is not None:
            result = result + 1e-8 * self.xp.asarray(ne.backend.to_numpy(U) - ne.backend.to_numpy(V))
        self.seen.append(np.array(ne.backend.to_numpy(U)))
        return result


def small_loss(bug=None, activation="tanh", widths=(3, 4, 3), criterion="cross_entropy"):
    net = ne.mlp(list(widths), activation=activation, seed=1)
    rng = np.random.default_rng(2)
    loss = PlantedLoss(net, criterion, rng.standard_normal((6, widths[0])), np.arange(6) % widths[-1])
    P = net.num_params
    loss.largest = float(np.abs(ne.backend.to_numpy(loss.hvp(np.eye(P)))).max())
    loss.bug, loss.seen = bug, []
    return loss


@pytest.mark.parametrize("bug, message", [
    ("hessian", r"^hvp: ∇²L̃ v against differences of ∇L̃"),
    ("ggn", r"^∇²L̃ v = G v \+ H v"),
    ("residual", r"^∇²L̃ v = G v \+ H v"),
    ("asymmetric", r"^ggn: uᵀ M v = vᵀ M u"),
    ("block", r"^ggn: a block of 3 against 3 single products"),
    ("dense_hessian", r"^hvp against the dense Hessian"),
    ("dense_ggn", r"^ggn against Jᵀ H_z J from finite-difference Jacobians"),
])
def test_check_loss_names_each_product(bug, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_loss(small_loss(bug))
    testing.check_loss(small_loss())


def test_check_loss_sees_a_layer_bug_of_the_tolerances_size_through_the_whole_net():
    net = ne.Sequential([ne.Dense(3, 4), PlantedTanh(), ne.Dense(4, 3)], (3,), theta=np.zeros(16 + 15))
    net.initialise(seed=1)
    loss = ne.TrainingLoss(net, "cross_entropy", np.random.default_rng(2).standard_normal((6, 3)), np.arange(6) % 3)
    with pytest.raises(AssertionError, match=r"^gradient: ⟨∇L̃, v⟩ against differences of L̃"):
        testing.check_loss(loss)


@pytest.mark.parametrize("bug, message", [
    ("third", r"^third: ∇³L̃\[u, v, ·\] against differences of ∇²L̃ v along u"),
    ("third_pair", r"^third: pair 0 against the block"),
    ("third_asymmetric", r"^third: ∇³L̃\[u, v, ·\] = ∇³L̃\[v, u, ·\]"),
    ("third_v_none", r"^third: V=None against v = u given"),
])
def test_check_third_names_each_part(bug, message):
    with pytest.raises(AssertionError, match=message):
        testing.check_third(small_loss(bug))
    testing.check_third(small_loss())


def test_check_third_draws_by_seed_in_blocks_of_k():
    def directions(**kwargs):
        loss = small_loss()
        testing.check_third(loss, **kwargs)
        return loss.seen
    default, given_, other = directions(), directions(seed=0, k=2), directions(seed=1)
    assert len(default) == len(given_) and all(np.array_equal(a, b) for a, b in zip(default, given_))
    assert not np.array_equal(default[0], other[0]) and default[0].shape == (31, 2)


def test_assert_close_without_a_name_says_what_failed_all_the_same():
    with pytest.raises(AssertionError, match=r"^: max error 1\.000e-03 > 1e-06"):
        assert_close(np.array([1.001]), np.array([1.0]), 1e-6)


class NegatedMSE(ne.MSE):
    """−MSE, consistent in every part: its G = Jᵀ H_z J is negative semi-definite, which only the PSD check sees."""

    def value(self, z, y):
        return -super().value(z, y)

    def gradient(self, z, y):
        return -super().gradient(z, y)

    def hessian_product(self, z, y, u):
        return -super().hessian_product(z, y, u)

    def hessian(self, z, y):
        return -super().hessian(z, y)

    def output_hessian(self, z, y, scale=1.0):
        return super().output_hessian(z, y, scale=-scale)


def test_check_loss_names_a_gauss_newton_matrix_that_is_not_psd():
    net = ne.mlp([3, 4, 3], activation="tanh", seed=1)
    loss = ne.TrainingLoss(net, NegatedMSE(), np.random.default_rng(2).standard_normal((6, 3)), np.arange(6) % 3)
    with pytest.raises(AssertionError, match=r"^ggn: G is not positive semi-definite"):
        testing.check_loss(loss)


def test_check_loss_draws_by_seed_in_blocks_of_k_and_goes_dense_up_to_dense_below(monkeypatch):
    """Directions from the seed alone (default 0), blocks of k = 3 (default); the dense matrices are built when
    P ≤ dense_below (default 120: here P = 120 exactly) and not above."""
    from nn_eos.testing import losses

    def blocks(**kwargs):
        loss, seen = small_loss(), []
        original = loss.curvature_product

        def recording(V, kind, theta=None):
            seen.append(np.array(ne.backend.to_numpy(V)))
            return original(V, kind, theta)
        loss.curvature_product = recording
        testing.check_loss(loss, dense_below=0, **kwargs)
        return seen
    default, again, zero, other = blocks(), blocks(), blocks(seed=0, k=3), blocks(seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(default, again)) and len(default) == len(again)
    assert all(np.array_equal(a, b) for a, b in zip(default, zero)) and len(default) == len(zero)
    assert not np.array_equal(default[0], other[0])
    assert {v.shape for v in default if v.ndim == 2} == {(31, 3)}
    dense, original_ggn = [], losses.dense_ggn

    def counting(loss, theta):
        dense.append(len(theta))
        return original_ggn(loss, theta)
    monkeypatch.setattr(losses, "dense_ggn", counting)
    loss = small_loss(widths=(5, 8, 8))
    assert loss.net.num_params == 120
    testing.check_loss(loss)
    testing.check_loss(loss, dense_below=119)
    assert dense == [120]



class RecordedCrossEntropy(ne.CrossEntropy):
    """Cross-entropy recording the outputs and labels every part is handed."""

    def __init__(self):
        self.seen = []

    def _record(self, part, z, y):
        self.seen.append((part, np.array(ne.backend.to_numpy(z)),
                          None if y is None else np.array(ne.backend.to_numpy(y))))

    def gradient(self, z, y):
        self._record("gradient", z, y)
        return super().gradient(z, y)

    def hessian_product(self, z, y, u):
        self._record("hessian_product", z, y)
        return super().hessian_product(z, y, u)

    def hessian(self, z, y):
        self._record("hessian", z, y)
        return super().hessian(z, y)

    def sqrt_hessian(self, z, y):
        self._record("sqrt_hessian", z, y)
        return super().sqrt_hessian(z, y)

    def third_product(self, z, y, a, b):
        self._record("third_product", a, y)
        return super().third_product(z, y, a, b)


def test_check_criterion_draws_by_seed_and_hands_every_part_the_labels():
    """Outputs scale × N(0, 1) (none beyond 5 scales here) and labels in 0..O−1 from the seed alone (default 0,
    n 4, scale 1), every label value drawn among 40 examples; every part — the third product too, whose
    directions also come from the seed — gets the same labels."""
    def run(**kwargs):
        criterion = RecordedCrossEntropy()
        testing.check_criterion(criterion, 3, **kwargs)
        return criterion.seen
    default, given_, again, other = run(), run(seed=0, n=4, scale=1.0), run(), run(seed=1)
    for a in (given_, again):
        assert len(a) == len(default) and all(
            x[0] == y[0] and np.array_equal(x[1], y[1]) and np.array_equal(x[2], y[2]) for x, y in zip(default, a))
    assert not np.array_equal(default[0][1], other[0][1])
    assert default[0][1].shape == (4, 3) and np.abs(default[0][1]).max() < 5
    assert {part for part, _, _ in default} == {"gradient", "hessian_product", "hessian", "sqrt_hessian",
                                                 "third_product"}
    many = run(n=40)
    labels = many[0][2]
    assert labels.shape == (40,) and set(labels.tolist()) == {0, 1, 2}
    assert all(y is not None and np.array_equal(y, labels) for _, _, y in many)
    assert np.abs(run(scale=0.25)[0][1]).max() < 5 * 0.25


class AsymmetricRoot(ne.CrossEntropy):
    """√H with 1e-8 added to entry (0, 1) and taken from (1, 0) of every example: squares to H to rounding, but is
    not symmetric."""

    def sqrt_hessian(self, z, y):
        root = super().sqrt_hessian(z, y)
        skew = ne.backend.array_module(root).zeros_like(root)
        skew[:, 0, 1], skew[:, 1, 0] = 1e-8, -1e-8
        return root + skew


def test_check_criterion_names_a_square_root_that_is_not_symmetric():
    with pytest.raises(AssertionError, match=r"^AsymmetricRoot.sqrt_hessian symmetric"):
        testing.check_criterion(AsymmetricRoot(), 3)
