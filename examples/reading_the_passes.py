"""Reading the passes: one tiny network walked through forward, backward, R-forward and R-backward.

    python examples/reading_the_passes.py [--device gpu]

The network is ``x → Dense(3, 4) → tanh → Dense(4, 2) → z`` on N = 2 examples
with the cross-entropy loss. Each intermediate quantity is printed beside the
equation that produced it (docs/passes.md), and checked as it goes:

- a quantity of the forward or backward pass against nothing (it is the
  definition), except the gradient, against central differences of L̃;
- every R-quantity against the central difference of the quantity it is the
  R-operator of: ``R{q} = d/dε q(θ + εv)``, so ``(q(θ + εv) − q(θ − εv)) / 2ε``
  must match it to ~1e-9;
- the end of the R-backward pass against the package's product (one call of
  ``nn_eos.product.curvature_product``) and ``loss.hvp(v)``; its Gauss-Newton
  half ``loss.ggn(v)`` against ``Σ_n J_nᵀ (H_z l / N) J_n v`` with the Jacobian J
  built by differences, and ``loss.residual(v)`` against ∇²L̃ v − G v.

The code calls the layers' passes one by one, as ``Sequential`` does in a loop,
handing each the cache its forward pass filled.
"""

import numpy as np

import nn_eos as ne
from nn_eos.backend import to_numpy
from nn_eos.experiments.arguments import add_device, parse, script_parser
from nn_eos.product import curvature_product

EPS = 1e-5          # the finite-difference step: its error ε² and the rounding 1e-16/ε are both ~1e-10
TOLERANCE = 1e-7    # relative to the largest entry


def show(equation, value, check=None, against="the finite difference"):
    """Print ``equation = value`` and, when given, the relative error of ``value`` against ``check``."""
    value = to_numpy(value)
    text = np.array2string(value.squeeze(), precision=4, suppress_small=True, max_line_width=100)
    text = text.replace("\n", "\n" + " " * 52)
    line = f"  {equation:<48}  {text}"
    if check is not None:
        check = to_numpy(check).reshape(value.shape)
        error = float(np.abs(value - check).max() / max(np.abs(check).max(), 1e-12))
        verdict = "ok" if error < TOLERANCE else "WRONG"
        line += f"\n  {'':<48}  agrees with {against} to {error:.1e}: {verdict}"
        if error >= TOLERANCE:
            raise SystemExit(f"{equation}: off by {error:.1e}")
    print(line)


def main():
    parser = script_parser(__doc__)
    add_device(parser)
    args = parse(parser)

    rng = np.random.default_rng(0)
    net = ne.mlp([3, 4, 2], activation="tanh", seed=0, device=args.device)
    xp = net.xp
    net.set_theta(to_numpy(net.theta) + 0.3 * rng.standard_normal(net.num_params))   # biases non-zero too
    dense1, tanh, dense2 = net.layers
    X, y = xp.asarray(rng.standard_normal((2, 3))), xp.asarray(np.array([0, 1]))
    criterion, N, P = ne.CrossEntropy(), 2, net.num_params
    loss = ne.TrainingLoss(net, criterion, X, y)
    v = xp.asarray(rng.standard_normal(P))
    v1, _, v2 = net.layer_parts(v[None, :])                     # each layer's part of the direction, (1, p)
    print(f"Dense(3, 4) → tanh → Dense(4, 2), cross-entropy, N = {N}, P = {P}; one direction v")

    def passes(theta):
        """Every quantity of the forward and backward passes at θ, and the layers' caches."""
        q = {}
        with net.using(theta):
            c = net.new_caches()
            q["x̂1"] = dense1.forward(X, c[0])
            q["x1"] = tanh.forward(q["x̂1"], c[1])
            q["z"] = dense2.forward(q["x1"], c[2])
            q["L"] = float(criterion.value(q["z"], y).sum()) / N
            q["δ2"] = criterion.gradient(q["z"], y) / N
            grad = xp.empty(P)
            grad1, _, grad2 = net.layer_parts(grad)
            q["∂L/∂x1"] = dense2.backward(q["δ2"], c[2], grad2)
            q["δ1"] = tanh.backward(q["∂L/∂x1"], c[1])
            dense1.backward(q["δ1"], c[0], grad1, need_input=False)
            q["∇L"] = grad
        return q, c

    theta = net.theta.copy()
    q, caches = passes(theta)
    ahead, behind = passes(theta + EPS * v)[0], passes(theta - EPS * v)[0]

    def along_v(name):
        """d/dε q(θ + εv) at ε = 0, by central differences: what R{q} must equal."""
        return (to_numpy(ahead[name]) - to_numpy(behind[name])) / (2 * EPS)

    print("\nforward pass (docs/passes.md: Dense, Activation)")
    show("x̂¹ = x A¹ᵀ + b¹", q["x̂1"])
    show("x¹ = tanh(x̂¹)", q["x1"])
    show("z = x¹ A²ᵀ + b²", q["z"])
    show("L̃ = (1/N) Σ_n −log softmax(z_n)_{y_n}", np.array(q["L"]))

    print("\nbackward pass")
    show("δ² = (1/N)(p − e_y)", q["δ2"])
    show("∂L̃/∂x¹ = δ² A²", q["∂L/∂x1"])
    show("δ¹ = ∂L̃/∂x¹ ⊙ σ'(x̂¹)", q["δ1"])
    show("∇L̃ = (δ¹ᵀx, Σ_n δ¹, δ²ᵀx¹, Σ_n δ²)", q["∇L"])
    show("∇L̃ · v", xp.dot(q["∇L"], v), (ahead["L"] - behind["L"]) / (2 * EPS))

    print("\nR-forward pass: R{q} = d/dε q(θ + εv), checked against finite differences of q")
    r_x_hat1 = dense1.r_forward(None, v1, caches[0])
    show("R{x̂¹} = x V_A¹ᵀ + V_b¹", r_x_hat1, along_v("x̂1"))
    r_x1 = tanh.r_forward(r_x_hat1, None, caches[1])
    show("R{x¹} = σ'(x̂¹) ⊙ R{x̂¹}", r_x1, along_v("x1"))
    r_z = dense2.r_forward(r_x1, v2, caches[2])
    show("R{z} = R{x¹} A²ᵀ + x¹ V_A²ᵀ + V_b² = J v", r_z, along_v("z"))

    print("\nR-backward pass")
    r_delta2 = criterion.hessian_product(q["z"], y, r_z) / N
    show("R{δ²} = (1/N) H_z l R{z}", r_delta2, along_v("δ2"))
    r_grad = xp.empty((1, P))
    r_grad1, _, r_grad2 = net.layer_parts(r_grad)
    r_dx1 = dense2.r_backward(r_delta2, v2, caches[2], r_grad2)
    show("R{∂L̃/∂x¹} = R{δ²} A² + δ² V_A²", r_dx1, along_v("∂L/∂x1"))
    r_delta1 = tanh.r_backward(r_dx1, None, caches[1], None)
    show("R{δ¹} = R{∂L̃/∂x¹} ⊙ σ' + ∂L̃/∂x¹ ⊙ σ'' ⊙ R{x̂¹}", r_delta1, along_v("δ1"))
    dense1.r_backward(r_delta1, v1, caches[0], r_grad1, need_input=False)
    show("R{∇L̃} = ∇²L̃ v", r_grad[0], along_v("∇L"))

    print("\nthe same in one call: the product of nn_eos/product.py, and through the loss")
    show("product.curvature_product(…, 'hessian')", curvature_product(net, criterion, X, y, v[None, :], "hessian")[0],
         r_grad[0], against="R{∇L̃} above")
    hvp, ggn, residual = loss.hvp(v), loss.ggn(v), loss.residual(v)
    show("loss.hvp(v)", hvp, r_grad[0], against="R{∇L̃} above")

    print("\nthe split ∇²L̃ = G + H (2024 paper, eq. 2; docs/curvature.md), G by hand")
    J = np.stack([(to_numpy(passes(theta + EPS * e)[0]["z"]) - to_numpy(passes(theta - EPS * e)[0]["z"])) / (2 * EPS)
                  for e in xp.eye(P)], axis=2)                      # J_n = ∂z_n/∂θ by differences: (N, O, P)
    H_z = to_numpy(criterion.hessian(q["z"], y))                    # H_z l per example: (N, O, O)
    G_v = np.einsum("nop,nor,nrq,q->p", J, H_z / N, J, to_numpy(v))  # Σ_n J_nᵀ (H_z l / N) J_n v
    show("G v: output source only (second_order=False)", ggn, G_v, against="Σ_n J_nᵀ (H_z l / N) J_n v")
    show("H v: second-order sources only (R{δ²} = 0)", residual, hvp - ggn, against="∇²L̃ v − G v")
    show("G v + H v", ggn + residual, hvp, against="loss.hvp(v)")
    print("\nevery check passed")


if __name__ == "__main__":
    main()
