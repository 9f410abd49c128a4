"""The array backend: NumPy on the CPU, CuPy on the GPU, and a CuPy-like stand-in for tests.

Every other module takes its array module from the arrays it is given
(``xp = array_module(x)``) and runs the same lines on every device. This is the
only module that imports CuPy, and the only place that chooses between
``scipy`` and ``cupyx.scipy``. The device 'strict' (nn_eos/strict.py) runs on
the CPU but refuses host/device mixing as CuPy does, so that CI catches GPU
bugs without a GPU.
"""

import os

import numpy as np

DEVICES = ("cpu", "gpu", "strict")
DTYPES = ("float64", "float32")

_GPU_INSTALL_HINT = (
    "device='gpu' needs CuPy, which is not importable here. Install the GPU extra "
    "matching your CUDA toolkit, e.g. `pip install -e \".[gpu]\"` (cupy) or "
    "`pip install cupy-cuda12x`, and check that a CUDA device is visible."
)


def _import_cupy():
    """Return the cupy module, or None when it cannot be imported or has no device."""
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA library that fails to load
        return None
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:
        return None
    return cupy


_CUPY = None
_CUPY_CHECKED = False


def cupy_or_none():
    """The cupy module if CuPy works on this machine, else None (checked once)."""
    global _CUPY, _CUPY_CHECKED
    if not _CUPY_CHECKED:
        _CUPY = _import_cupy()
        _CUPY_CHECKED = True
    return _CUPY


def gpu_available():
    return cupy_or_none() is not None


def require_cupy():
    cupy = cupy_or_none()
    if cupy is None:
        raise RuntimeError(_GPU_INSTALL_HINT)
    return cupy


def check_device(device):
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    return device


def default_device():
    """The device named by the environment variable NN_EOS_DEVICE, 'cpu' when unset."""
    return check_device(os.environ.get("NN_EOS_DEVICE", "cpu"))


def resolve_device(device=None, recorded=None):
    """The device to use: an explicit ``device`` wins, else ``NN_EOS_DEVICE``, else the device a run
    ``recorded`` in its manifest, else 'cpu'. One rule for every function and command."""
    if device is not None:
        return check_device(device)
    if os.environ.get("NN_EOS_DEVICE"):
        return default_device()
    return check_device(recorded) if recorded is not None else "cpu"


def module_for(device):
    """The array module (numpy, cupy, or the strict stand-in) of a device name."""
    device = check_device(device)
    if device == "strict":
        from .strict import strict
        return strict
    return require_cupy() if device == "gpu" else np


def array_module(*arrays):
    """numpy, or cupy when any argument is a CuPy array (Chainer's get_array_module)."""
    for a in arrays:
        if type(a).__module__ == "nn_eos.strict":
            from .strict import strict
            return strict
    cupy = _CUPY if _CUPY_CHECKED else None
    if cupy is None:
        # Only look for CuPy arrays when CuPy has been imported already: a CuPy
        # array cannot exist otherwise, and importing CuPy costs seconds.
        if not any(type(a).__module__.startswith("cupy") for a in arrays):
            return np
        cupy = cupy_or_none()
    for a in arrays:
        if isinstance(a, cupy.ndarray):
            return cupy
    return np


def device_of(array):
    xp = array_module(array)
    return "cpu" if xp is np else "strict" if xp.__name__.startswith("nn_eos.strict") else "gpu"


def to_device(array, device):
    """Move an array to 'cpu' (NumPy), 'gpu' (CuPy) or 'strict'; a no-op when it is there already."""
    device = check_device(device)
    if device != "cpu":
        xp = module_for(device)
        return xp.asarray(array) if array_module(array) in (np, xp) else xp.asarray(to_numpy(array))
    if array_module(array) is not np:
        return array.get()
    return np.asarray(array)


def to_module(array, xp):
    """The array as an array of the module ``xp`` (numpy, cupy, the strict stand-in), moved if need be."""
    if xp is np:
        return to_numpy(array)
    return xp.asarray(array)


def to_numpy(array):
    return to_device(array, "cpu")


def resolve_dtype(dtype):
    """numpy dtype of 'float64' (the default of both papers) or 'float32'."""
    name = np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {DTYPES}")
    return np.dtype(name)


def scipy_linalg_module(xp):
    """scipy.sparse.linalg, or cupyx.scipy.sparse.linalg for CuPy arrays."""
    if xp is np:
        import scipy.sparse.linalg

        return scipy.sparse.linalg
    if xp.__name__.startswith("nn_eos.strict"):
        from .strict import sparse_linalg
        return sparse_linalg()
    import cupyx.scipy.sparse.linalg

    return cupyx.scipy.sparse.linalg


class Workspace:
    """Arrays one layer keeps from call to call, one per name.

    Blocks of k directions make R-quantities of k × n × width floats, tens of
    MB each; allocating them afresh costs page faults on every call. A layer
    asks its workspace for a named buffer instead and writes into it with
    ``out=``: the R-quantities it keeps between its R-forward and R-backward
    passes (R{x}, R{x̂}). A buffer is overwritten the next time the same name is
    asked for, so only quantities that live within one pass may use one;
    nothing handed back to a user ever does. (What lives for one step of a pass
    only goes to the network's :class:`ScratchPool`.) Asked for in another shape (another
    block size, the last chunk), the name gets a new buffer and the old one is
    let go: a workspace holds one set of buffers, so a product split to fit a
    memory budget (nn_eos.memory) never holds two blocks' worth.
    """

    def __init__(self):
        self._arrays = {}

    def held(self):
        """The arrays held now (for memory accounting and tests)."""
        return [array for _, array in self._arrays.values()]

    def get(self, name, shape, dtype, xp):
        key = (tuple(shape), dtype, xp.__name__)
        held = self._arrays.get(name)
        if held is None or held[0] != key:
            self._arrays.pop(name, None)                   # let the old buffer go before making the new one
            held = self._arrays[name] = (key, xp.empty(shape, dtype=dtype))
        return held[1]


class ScratchPool:
    """Temporaries shared by all the layers of one network, each valid for one step of a pass.

    The R-backward pass hands ``R{∂L̃/∂x}`` from layer to layer: each step reads
    what the step above wrote and writes something new, and nothing is read
    twice. Two buffers used in turn therefore carry the whole pass, where a
    buffer per layer and name would hold several per layer (on the 2024
    paper's MLP, 36 blocks of k × n × width in all against 13 with the R{x}
    and R{x̂} that the layers keep). ``get`` hands out
    a buffer that overlaps none of ``avoid``, the arrays the caller still
    reads; any buffer it handed out before and is not told to avoid may be
    overwritten. All requests of one pass share their leading (k, n) axes; a
    request with other leading axes, dtype or array module lets the held
    buffers go (as :class:`Workspace` does), so a product split into smaller
    blocks to fit its memory budget never holds the larger blocks' buffers.
    """

    def __init__(self):
        self._key = None
        self._flat = []              # 1-D arrays; a buffer is a reshaped prefix of one

    def held(self):
        """The arrays held now (for memory accounting and tests)."""
        return list(self._flat)

    def get(self, shape, dtype, xp, avoid=()):
        shape = tuple(int(d) for d in shape)
        key = (shape[:2], dtype, xp.__name__)
        if key != self._key:
            self._key, self._flat = key, []
        size = int(np.prod(shape))
        for i, flat in enumerate(self._flat):
            if any(xp.may_share_memory(flat, a) for a in avoid):
                continue
            if flat.size < size:
                flat = self._flat[i] = xp.empty(size, dtype=dtype)
            return flat[:size].reshape(shape)
        self._flat.append(xp.empty(size, dtype=dtype))
        return self._flat[-1].reshape(shape)
