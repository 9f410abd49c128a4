"""The array backend: NumPy on the CPU, CuPy on the GPU, and a CuPy-like stand-in for tests.

Every other module takes its array module from the arrays it is given
(``xp = array_module(x)``) and runs the same lines on every device. This is the
only module that imports CuPy, and the only place that chooses between
``scipy`` and ``cupyx.scipy``. The device 'strict' (nn_eos/strict.py) runs on
the CPU but refuses host/device mixing as CuPy does, so that CI catches GPU
bugs without a GPU.
"""

import ctypes
import ctypes.util
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


def special_module(xp):
    """scipy.special, or cupyx.scipy.special for CuPy arrays: special functions (erf, …) on any device."""
    if xp is np:
        import scipy.special

        return scipy.special
    if xp.__name__.startswith("nn_eos.strict"):
        from .strict import special
        return special()
    import cupyx.scipy.special

    return cupyx.scipy.special


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4       # mallopt parameters (malloc.h)


def keep_freed_memory():
    """Ask the C allocator (glibc's malloc) to keep freed memory for reuse; returns whether it took effect.

    A product of a block of directions allocates and frees dozens of R-quantities of k × n × width numbers
    per call, tens of MB each: the passes are plain array expressions (docs/curvature.md) and leave memory to
    the allocator. glibc serves every allocation above 32 MB with a fresh mapping and returns it to the
    kernel when freed, so the kernel zeroes every page again on the next call; a block of 11 products on
    the 2024 paper's MLP at n = 1000 spent about 15 % of its time there on a 2-core CPU (docs/benchmarks.md).
    With mmap off and no trimming, freed blocks are reused at once.

    This changes the whole process (its peak memory is kept for reuse, not returned), so the library never
    calls it: the applications do (the ``nn-eos`` command, the examples and the benchmarks, through
    ``nn_eos.experiments.arguments``), and a script of yours may. CuPy has its own memory pool; on a C
    library other than glibc nothing happens and it returns False.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))      # -1: never trim
