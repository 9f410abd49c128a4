"""nn_eos: exact curvature of hand-written networks, and why training runs on the edge of stability.

The working code behind two papers by Mark Lowell: *There is a Singularity in
the Loss Landscape* (2022) and, with Catharine Kastner, *Training on the Edge of
Stability Is Caused by Layerwise Jacobian Alignment* (2024).

The core, module by module, in the order data flows (docs/architecture.md):

    passes         layers (Layer, Dense, Flatten), conv (Conv2d, pools), activations, blocks (Residual,
                   LayerNorm and the layers made of layers), sequence (Embedding, PositionalEmbedding),
                   attention (SelfAttention), criteria: each with its forward, backward, R-forward and
                   R-backward pass; network (Sequential over one flat θ, mlp, alexnet_like, vgg_like),
                   architectures (transformer, residual_mlp, residual_conv)
    products       product (one curvature product, its passes in order), curvature (TrainingLoss: value,
                   gradient, ∇²L̃ v, G v, H v in chunks and blocks), third_order (∇³L̃[u, v, ·]), memory,
                   sharded (ShardedLoss: the same over the workers of a Dask cluster)
    eigensolvers   eigen (top_eigenpairs: power, block Krylov, LOBPCG, Lanczos; batched Lanczos)
    dynamics       integrators (GD, adaptive flow, exponential Euler), adaptive (Adam, RMSProp), stochastic
                   (SGD), loop (train, resume), rundir (run directories)
    measurements   eos (2022 paper), alignment (2024 paper), spectrum, self_stabilization
    data           datasets, dice
    machinery      backend (NumPy or CuPy), strict (the CuPy-like stand-in), validation; testing (the
                   derivative checks anyone can call)

The core needs NumPy and SciPy only; ``nn_eos.experiments`` runs the papers'
protocols from files and commands (configs, sweeps, tables, figures, the demo,
the ``nn-eos`` command) and may use matplotlib, tqdm, dask.
"""

from ._version import __version__
from . import alignment, datasets, eos, product, self_stabilization, spectrum, stochastic
from .adaptive import Adam, RMSProp
from .stochastic import SGD
from .activations import ELU, GELU, Activation, ReLU, Tanh, register_activation
from .backend import gpu_available
from .architectures import residual_conv, residual_mlp, transformer
from .attention import SelfAttention
from .blocks import Affine, Chain, LayerNorm, Normalize, Residual
from .conv import AvgPool2d, Conv2d, MaxPool2d
from .criteria import MSE, CrossEntropy
from .curvature import TrainingLoss
from .sharded import ShardedLoss
from .eigen import EigenResult, NonConvergenceWarning, top_eigenpairs
from .integrators import AdaptiveGradientFlow, ExponentialEuler, GradientDescent
from .loop import Run, TrainingInterrupted, train
from .layers import Dense, Flatten, Layer
from .network import Sequential, alexnet_like, mlp, vgg_like
from .rundir import load_run
from .sequence import Embedding, PositionalEmbedding

__all__ = [
    # layers, criteria, networks
    "Activation", "Affine", "AvgPool2d", "Chain", "Conv2d", "Dense", "ELU", "Embedding", "Flatten", "GELU", "Layer",
    "LayerNorm", "MaxPool2d", "Normalize", "PositionalEmbedding", "ReLU", "Residual", "SelfAttention", "Sequential",
    "Tanh", "register_activation", "CrossEntropy", "MSE", "alexnet_like", "mlp", "residual_conv", "residual_mlp",
    "transformer", "vgg_like",
    # curvature and eigenpairs
    "EigenResult", "NonConvergenceWarning", "ShardedLoss", "TrainingLoss", "top_eigenpairs",
    # dynamics
    "Adam", "AdaptiveGradientFlow", "ExponentialEuler", "GradientDescent", "RMSProp", "Run", "SGD", "TrainingInterrupted",
    "load_run", "train",
    # measurements and data
    "alignment", "datasets", "eos", "gpu_available", "product", "self_stabilization", "spectrum", "stochastic",
    "__version__",
]
