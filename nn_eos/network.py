"""A sequential network over one flat parameter vector θ, and its builders.

``θ = (A^1 | b^1 | A^2 | b^2 | …)`` (docs/notation.md): every layer holds views into
one flat array, so optimisers, eigensolvers and integrators see the network as
a single vector of P parameters, and a direction ``v`` in parameter space is a
(P,) array, or a block of k of them stored as the rows of a (k, P) array.
"""

import contextlib
import math
import warnings

import numpy as np

from . import backend
from .validation import check_inputs, check_integer, check_token_ids
from .activations import activation as make_activation
from .conv import Conv2d, MaxPool2d
from .layers import Cache, Dense, Flatten, Layer


class Sequential:
    """Layers applied in order, parameters in one flat vector ``theta``.

    ``forward``/``backward``/``r_forward``/``r_backward`` run the passes of every
    layer (layers.py), splitting flat (…, P) arrays of gradients and directions
    into each layer's views. What one evaluation keeps for its later passes lives
    in ``caches`` (one :class:`~nn_eos.layers.Cache` per layer, from
    :meth:`new_caches`), held by whoever ran the forward pass and handed back to
    each later pass: the network and its layers keep nothing of an evaluation.
    """

    def __init__(self, layers, input_shape, dtype="float64", device=None, theta=None):
        """``theta``: the parameters (P,); without it θ starts at 0 — a warning says so, since a net at θ = 0 has
        a constant output — until :meth:`initialise` or :meth:`set_theta`."""
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("Sequential needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential takes Layer instances, got {type(layer).__name__}")
            layer.check_contract()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.dtype = backend.resolve_dtype(dtype)
        self.device = backend.check_device(device or backend.default_device())
        late = [layer for layer in self.layers[1:] if getattr(layer, "takes_token_ids", False)]
        if late:
            raise ValueError(f"{late[0]!r} takes token ids, which only the network's inputs are: it must be the "
                             f"first layer")
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
        if len(shape) < 1:
            raise ValueError(f"the last layer must output (n, O) or (n, …, O), got (n, *{shape})")
        self.output_shape = tuple(shape)
        self.num_outputs = shape[-1]
        self.positions = tuple(shape[:-1])    # () for one output vector per example, (T,) for a sequence's tokens
        self.offsets = np.cumsum([0] + [layer.num_params for layer in self.layers])
        self.num_params = int(self.offsets[-1])
        # the first layer never needs ∂L̃/∂x^0: skipping it saves its largest product
        self.first_with_params = next((i for i, l in enumerate(self.layers) if l.num_params), len(self.layers))
        xp = backend.module_for(self.device)
        self.theta = xp.zeros(self.num_params, dtype=self.dtype) if theta is None else self.check_theta(theta)
        self._bind(self.theta)
        if theta is None and self.num_params:
            with_params = ", ".join(repr(layer) for layer in self.layers if layer.num_params)
            warnings.warn(f"Sequential without theta: every parameter starts at 0 ({with_params}), where the output "
                          f"is constant. Pass theta=, or call net.initialise(init, gain, seed) (Dense and Conv2d by "
                          f"their rule, any other layer by its initial_parameters(rng, init, gain): docs/layers.md)",
                          stacklevel=2)

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], P={self.num_params}, {self.dtype.name}, {self.device})"

    @property
    def xp(self):
        return backend.module_for(self.device)

    @property
    def takes_token_ids(self):
        """Whether the inputs are integer token ids (the first layer is an Embedding), kept as integers."""
        return getattr(self.layers[0], "takes_token_ids", False)

    def check_inputs(self, X, name="X"):
        """X as a finite (n, *input_shape) array, or a clear error; token ids checked to lie in the vocabulary."""
        X = check_inputs(X, self.input_shape, name=name)
        if self.takes_token_ids:
            check_token_ids(X, self.layers[0].vocab, name=name)
        return X

    def inputs(self, X):
        """X on the network's device, in its dtype (token ids stay integers)."""
        X = backend.to_device(X, self.device)
        return X.astype(np.int64 if self.takes_token_ids else self.dtype, copy=False)

    # ----- parameters ---------------------------------------------------------

    def initialise(self, init="xavier", gain=1.0, seed=0):
        """Set θ from each layer's initialisation (:func:`init_layer`: Xavier or Kaiming for Dense and Conv2d,
        a layer's own ``initial_parameters(rng, init, gain)`` otherwise, drawn on the CPU from ``seed``);
        returns the network. A layer with parameters and no rule is refused by name."""
        rng = np.random.default_rng(seed)
        parts = [init_layer(rng, layer, init, float(gain)) for layer in self.layers if layer.num_params]
        self.set_theta(np.concatenate(parts) if parts else np.zeros(0))
        return self

    def layer_parts(self, flat):
        """Each layer's part of a (…, P) array: views, in layer order (an empty part for a layer without
        parameters)."""
        return [flat[..., a:b] for a, b in zip(self.offsets[:-1], self.offsets[1:])]

    def _bind(self, theta):
        for layer, params in zip(self.layers, self.layer_parts(theta)):
            layer.bind(params)

    def check_theta(self, theta, scan=True):
        """θ as a finite (P,) array of the network's dtype on its device, or a clear error; ``scan=False`` checks
        the shape only (θ checked before, such as an operator's own copy: a scan costs a pass and, on a GPU, a
        sync)."""
        theta = backend.to_device(theta, self.device)
        if theta.shape != (self.num_params,):
            raise ValueError(f"theta must have shape ({self.num_params},), got {theta.shape}")
        if scan and not bool(self.xp.isfinite(theta).all()):
            raise ValueError("theta contains NaN or infinite values")
        return theta.astype(self.dtype, copy=False)

    def set_theta(self, theta):
        """Copy new values into θ (the layers keep their views)."""
        self.theta[...] = self.check_theta(theta)

    @contextlib.contextmanager
    def using(self, theta, checked=False):
        """Evaluate the network at another θ (``None``: its own) for the duration of a ``with`` block;
        ``checked``: θ was checked for NaN and inf before (:meth:`check_theta`).

        The layers are bound to that θ on entry, so a layer shared with another network computes at this one's.
        """
        self._bind(self.theta if theta is None else self.check_theta(theta, scan=not checked))
        try:
            yield self
        finally:
            self._bind(self.theta)

    def to(self, device):
        """Move θ to 'cpu' or 'gpu' (in place); returns the network."""
        self.device = backend.check_device(device)
        self.theta = backend.to_device(self.theta, device)
        self._bind(self.theta)
        return self

    def astype(self, dtype):
        """Cast θ to 'float64' or 'float32' (in place); returns the network."""
        self.dtype = backend.resolve_dtype(dtype)
        self.theta = self.theta.astype(self.dtype)
        self._bind(self.theta)
        return self

    # ----- passes -------------------------------------------------------------

    def __call__(self, x):
        """The outputs ``z = f(x, θ)`` for a batch ``x`` of shape (n, *input_shape)."""
        return self.forward(self.inputs(self.check_inputs(x, name="x")))

    def new_caches(self):
        """One empty :class:`~nn_eos.layers.Cache` per layer: the record of one evaluation."""
        return [Cache() for _ in self.layers]

    def forward(self, x, caches=None):
        """``z = f(x, θ)`` (docs/passes.md); the layers keep what later passes read in ``caches`` when given."""
        caches = self.new_caches() if caches is None else caches
        for layer, cache in zip(self.layers, caches):
            x = layer.forward(x, cache)
        return x

    def backward(self, delta, caches, grad=None):
        """Back-propagate ``δ^L = ∂L̃/∂z`` through the forward pass recorded in ``caches``; writes ``∂L̃/∂θ``
        into ``grad`` (P,) when given."""
        grads = self.layer_parts(grad) if grad is not None else [None] * len(self.layers)
        for i in reversed(range(self.first_with_params, len(self.layers))):
            delta = self.layers[i].backward(delta, caches[i], grads[i], need_input=i > self.first_with_params)
        return grad

    def r_forward(self, V, caches):
        """``R{z} = J v`` for each row of V (k, P), from the forward pass recorded in ``caches``; (k, n, …, O)."""
        r_x = None  # R{x^0} = 0: the data do not depend on θ
        for layer, v, cache in zip(self.layers, self.layer_parts(V), caches):
            r_x = layer.r_forward(r_x, v, cache)
        return r_x

    def r_backward(self, r_delta, V, caches, r_grad, second_order=True):
        """Back-propagate ``R{δ^L}`` (k, n, O); writes ``R{∂L̃/∂θ}`` into r_grad (k, P). Each layer's
        R-quantities leave its cache once read."""
        vs, r_grads = self.layer_parts(V), self.layer_parts(r_grad)
        for i in reversed(range(self.first_with_params, len(self.layers))):
            r_delta = self.layers[i].r_backward(r_delta, vs[i], caches[i], r_grads[i], second_order,
                                                need_input=i > self.first_with_params)
            caches[i].drop_r_values()
        return r_grad


# ----- initialisation and builders ------------------------------------------

INITS = ("xavier", "kaiming")


def init_weights(rng, shape, fan_in, fan_out, init, gain):
    """A weight array of ``shape`` drawn by the rule ``init`` with the given fans:

    - 'xavier' (the 2024 paper, section 3): Xavier-uniform scaled by the
      activation's gain, ``U(−a, a)``, ``a = gain · sqrt(6 / (fan_in + fan_out))``.
    - 'kaiming' (the 2022 paper): Kaiming-normal in fan-in mode,
      ``N(0, (gain / sqrt(fan_in))²)``.
    """
    if init == "xavier":
        a = gain * math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-a, a, size=shape)
    if init == "kaiming":
        return rng.normal(0.0, gain / math.sqrt(fan_in), size=shape)
    raise ValueError(f"unknown init {init!r}; expected one of {INITS}")


def init_dense(rng, n_in, n_out, init, gain):
    """Weights ``A`` (n_out, n_in) of one dense layer by :func:`init_weights` with fans n_in and n_out; biases
    start at zero."""
    A = init_weights(rng, (n_out, n_in), n_in, n_out, init, gain)
    return np.concatenate([A.ravel(), np.zeros(n_out)])


def init_layer(rng, layer, init, gain):
    """Parameters of a layer: weights by ``init`` with the layer's fan-in/fan-out, zero biases.

    For a convolution, fan-in = C·kh·kw and fan-out = F·kh·kw (as in PyTorch). Another layer with parameters
    gives its own, as ``layer.initial_parameters(rng, init, gain)`` (docs/layers.md).
    """
    if isinstance(layer, Dense):
        return init_dense(rng, layer.n_in, layer.n_out, init, gain)
    if hasattr(layer, "initial_parameters"):
        return np.asarray(layer.initial_parameters(rng, init, gain), dtype=np.float64).reshape(layer.num_params)
    if not isinstance(layer, Conv2d):
        raise TypeError(f"{type(layer).__name__} has parameters but no initial_parameters(rng, init, gain): define "
                        f"it, or build a Sequential and set θ yourself (docs/layers.md)")
    fan_in, fan_out = layer.K, layer.F * layer.win.kh * layer.win.kw
    W = init_weights(rng, (layer.F, layer.K), fan_in, fan_out, init, gain)
    return np.concatenate([W.ravel(), np.zeros(layer.F)])


def _initialised(layers, input_shape, activation, init, gain, seed, dtype, device, spec):
    act = make_activation(activation)
    gain = act.gain if gain is None else float(gain)
    rng = np.random.default_rng(seed)
    theta = np.concatenate([init_layer(rng, l, init, gain) for l in layers if l.num_params])
    net = Sequential(layers, input_shape, dtype=dtype, device=device, theta=theta)
    net.spec = {**spec, "activation": act.name, "init": init, "gain": gain, "seed": seed}
    return net


def _conv_stack(config, in_channels, activation, kernel, padding):
    """Conv/activation layers for a list of channel counts, 'M' standing for a 2×2 max-pool."""
    layers, channels = [], in_channels
    for item in config:
        if item == "M":
            layers.append(MaxPool2d(2))
        else:
            layers += [Conv2d(channels, item, kernel, padding=padding), make_activation(activation)]
            channels = item
    return layers, channels


def _classifier(n_in, hidden, n_classes, activation):
    layers, width = [], n_in
    for h in hidden:
        layers += [Dense(width, h), make_activation(activation)]
        width = h
    return layers + [Dense(width, n_classes)]


def _check_image_input(in_shape, name):
    if len(in_shape) != 3 or in_shape[1] % 4 or in_shape[2] % 4:
        raise ValueError(f"{name} takes (C, H, W) inputs with H and W multiples of 4, got {in_shape}")


def alexnet_like(in_shape=(3, 32, 32), n_classes=10, activation="relu", width=1.0, init="kaiming", gain=None,
                 seed=0, dtype="float64", device=None):
    """An AlexNet for 32×32 images, as used on CIFAR-10 by the 2022 paper (Kaiming init by default).

    conv 5×5 (64w) → σ → max-pool 2 → conv 5×5 (64w) → σ → max-pool 2 → flatten → dense 384w → σ →
    dense 192w → σ → dense n_classes, with channel and unit counts scaled by ``width`` (w); width 0.25
    gives a net that trains on a laptop CPU, width 1 the usual CIFAR AlexNet.
    """
    in_shape = tuple(int(d) for d in in_shape)
    _check_image_input(in_shape, "alexnet_like")
    c = max(1, int(round(64 * width)))
    features, channels = _conv_stack([c, "M", c, "M"], in_shape[0], activation, 5, 2)
    flat = channels * (in_shape[1] // 4) * (in_shape[2] // 4)
    hidden = [max(1, int(round(384 * width))), max(1, int(round(192 * width)))]
    layers = features + [Flatten()] + _classifier(flat, hidden, n_classes, activation)
    spec = {"kind": "alexnet", "in_shape": list(in_shape), "n_classes": n_classes, "width": width}
    return _initialised(layers, in_shape, activation, init, gain, seed, dtype, device, spec)


VGG = {11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
       16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]}


def vgg_like(in_shape=(3, 32, 32), n_classes=10, depth=16, activation="relu", width=1.0, init="kaiming", gain=None,
             seed=0, dtype="float64", device=None):
    """A VGG-11 or VGG-16 without normalisation for 32×32 images (the 2022 paper's non-normalised VGG-16).

    3×3 convolutions with padding 1 and 2×2 max-pools as in the VGG configurations, channels scaled by
    ``width``, then dense 512w → σ → dense n_classes on the 1×1 map (Kaiming init by default).
    """
    if depth not in VGG:
        raise ValueError(f"depth must be one of {sorted(VGG)}, got {depth}")
    in_shape = tuple(int(d) for d in in_shape)
    if in_shape[1:] != (32, 32):
        raise ValueError(f"vgg_like takes 32×32 images, got {in_shape}")
    config = [item if item == "M" else max(1, int(round(item * width))) for item in VGG[depth]]
    features, channels = _conv_stack(config, in_shape[0], activation, 3, 1)
    layers = features + [Flatten()] + _classifier(channels, [max(1, int(round(512 * width)))], n_classes,
                                                  activation)
    spec = {"kind": "vgg", "depth": depth, "in_shape": list(in_shape), "n_classes": n_classes, "width": width}
    return _initialised(layers, in_shape, activation, init, gain, seed, dtype, device, spec)


def mlp(widths, activation="elu", init="xavier", gain=None, seed=0, dtype="float64", device=None):
    """A multi-layer perceptron ``n_0 → n_1 → … → n_L`` (2024 paper, section 2.1).

    ``widths = [n_0, n_1, …, n_L]``: input dimension, hidden widths, outputs O.
    Dense layers alternate with the activation; the last dense layer's output
    ``x̂^L`` is the network output z. Every dense layer is initialised with the
    same rule and gain (default: the activation's gain, √2 for ELU and ReLU,
    5/3 for tanh), drawn on the CPU from ``numpy.random.default_rng(seed)`` so
    that θ is the same on every device and dtype.
    """
    if len(widths) < 2:
        raise ValueError(f"mlp needs at least [n_in, n_out], got {list(widths)}")
    widths = [check_integer(w, f"mlp width {i}") for i, w in enumerate(widths)]
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(Dense(n_in, n_out))
        if i < len(widths) - 2:
            layers.append(make_activation(activation))
    return _initialised(layers, (widths[0],), activation, init, gain, seed, dtype, device,
                        {"kind": "mlp", "widths": widths})


__all__ = ["Sequential", "alexnet_like", "init_dense", "init_layer", "init_weights", "mlp", "vgg_like"]
