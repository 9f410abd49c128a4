"""A CuPy-like stand-in on the CPU that catches host/device mixing (``NN_EOS_DEVICE=strict``).

CI has no GPU, yet most GPU bugs are the same few mistakes: a device array
handed to NumPy or SciPy, or mixed with a host array in arithmetic. CuPy
refuses each with a TypeError; so does this stand-in, on the CPU:

- ``StrictArray`` wraps a NumPy array. Its operators, indexing and methods work
  (on other StrictArrays, Python and NumPy scalars, as NumPy ufuncs of it and
  scalars do); ``np.asarray(a)``, any NumPy function called on it, and
  arithmetic with a NumPy array raise TypeError, as CuPy's implicit conversion
  does (CuPy runs some NumPy functions on the device; we refuse them all, as
  code that calls ``np.`` on a device array usually goes on to mix). ``a.get()`` returns a host copy.
- ``strict`` is its array module (the ``xp`` of the device 'strict'): every
  NumPy function and ``strict.linalg`` work on StrictArrays and refuse NumPy
  arrays, except ``asarray``/``array`` (the host-to-device move).
- ``linalg_module`` stands in for ``cupyx.scipy.sparse.linalg``: SciPy's solvers
  run on host copies, the user's operator sees StrictArrays.
- ``COUNTS`` counts what would cost time on a GPU beyond the arithmetic: device
  operations (each a kernel launch or more on CuPy), host reads (``get``,
  ``float``, ``bool``, ``int``: each waits for the device to finish) and
  uploads (a host array moved to the device). Tests and
  benchmarks read it (``counting()``) to check that solvers batch their checks.

Nothing here is fast; it exists for the test suite (``.ci/run``).
"""

import collections
import contextlib
import numbers
import operator
import types

import numpy as np

MOVES = ("asarray", "array", "ascontiguousarray", "asfortranarray")   # host → device, as in CuPy
HOST_READS = ("item", "tolist")                                         # methods that hand back host values
VIEWS = ("reshape", "transpose", "swapaxes", "squeeze", "view", "moveaxis",   # functions and methods that
         "broadcast_to", "may_share_memory")                                  # launch nothing on CuPy
REQUIRED = {"take_along_axis": (2, "axis")}      # arguments CuPy requires where NumPy has a default: (position, name)
COUNTS = collections.Counter()         # "operations", "host_reads", "uploads" (host → device), "promotions"


@contextlib.contextmanager
def counting():
    """Count device operations, host reads, uploads and float32/float64 promotions (:func:`_promotes`) inside a
    ``with`` block: yields a Counter filled at its end."""
    before = COUNTS.copy()
    result = collections.Counter()
    try:
        yield result
    finally:
        result.update({key: COUNTS[key] - before[key] for key in ("operations", "host_reads", "uploads", "promotions")})


def _read():
    COUNTS["host_reads"] += 1


def _refuse(what):
    raise TypeError(f"{what}: a device array (the CuPy stand-in NN_EOS_DEVICE=strict) cannot be used where a "
                    f"NumPy array is expected; use the backend's xp, or move it with .get() / backend.to_numpy")


def unwrap(value, moving=False):
    """The NumPy content of StrictArrays inside value; a plain NumPy array is refused unless ``moving``."""
    if isinstance(value, StrictArray):
        return value._a
    if isinstance(value, np.ndarray) and not moving:
        _refuse(f"a NumPy array of shape {value.shape} was mixed with device arrays")
    if isinstance(value, (list, tuple)):
        return type(value)(unwrap(v, moving) for v in value)
    return value


def wrap(value):
    if isinstance(value, np.ndarray):
        return StrictArray(value)
    if isinstance(value, np.generic):
        return StrictArray(np.asarray(value))             # CuPy's reductions give 0-d device arrays
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _operand(value):
    if isinstance(value, StrictArray):
        return value._a
    if isinstance(value, (numbers.Number, np.generic)):
        return value
    if isinstance(value, np.ndarray):
        _refuse(f"arithmetic between a device array and a NumPy array of shape {value.shape}")
    return NotImplemented


class StrictArray:
    """A NumPy array posing as a device array (see the module docstring)."""

    __slots__ = ("_a",)
    __array_priority__ = 1000

    def __init__(self, array):
        object.__setattr__(self, "_a", array)

    # the three ways NumPy and SciPy would take the array in: all refused, as CuPy does
    def __array__(self, *args, **kwargs):
        _refuse("implicit conversion to a NumPy array (np.asarray, SciPy)")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # CuPy runs a NumPy ufunc of its arrays and scalars (np.float64(2) / a) on the device; with a
        # NumPy array among the inputs it refuses, and so do we
        if kwargs or method != "__call__" or any(isinstance(x, np.ndarray) for x in inputs):
            _refuse(f"NumPy ufunc {ufunc.__name__} called on a device array and a NumPy array")
        COUNTS["operations"] += 1
        return wrap(ufunc(*(_operand(x) for x in inputs)))

    def __array_function__(self, func, types, args, kwargs):
        _refuse(f"NumPy function {func.__name__} called on a device array")

    def __reduce__(self):
        """Pickled by value, a device array again when loaded, as CuPy's arrays are (sent to a Dask worker)."""
        return StrictArray, (self._a,)

    def get(self):
        """A host copy (cupy.ndarray.get)."""
        _read()
        return self._a.copy()

    # attributes and methods of the wrapped array, with device results
    def __getattr__(self, name):
        if name.startswith("__"):      # __array_interface__, __array_struct__: NumPy would read the data
            raise AttributeError(name)
        value = getattr(self._a, name)
        if callable(value):
            def method(*args, **kwargs):
                if name not in VIEWS:
                    COUNTS["host_reads" if name in HOST_READS else "operations"] += 1
                return wrap(value(*unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()}))
            return method
        return wrap(value)

    def __setattr__(self, name, value):
        setattr(self._a, name, unwrap(value))

    def __getitem__(self, key):
        return wrap(self._a[unwrap(key)])                   # a view: no kernel on CuPy

    def __setitem__(self, key, value):
        COUNTS["operations"] += 1
        value = _operand(value) if not isinstance(value, (list, tuple)) else unwrap(value)
        COUNTS["promotions"] += _promotes(self._a, value)   # a float64 result written into a float32 buffer
        self._a[unwrap(key)] = value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (wrap(row) for row in self._a)

    def __repr__(self):
        return f"strict.{self._a!r}"

    def __bool__(self):
        _read()
        return bool(self._a)

    def __float__(self):
        _read()
        return float(self._a)

    def __int__(self):
        _read()
        return int(self._a)

    def __index__(self):
        _read()
        return operator.index(self._a)

    def __complex__(self):
        _read()
        return complex(self._a)

    def __neg__(self):
        COUNTS["operations"] += 1
        return StrictArray(-self._a)

    def __pos__(self):
        return self

    def __abs__(self):
        COUNTS["operations"] += 1
        return StrictArray(abs(self._a))

    def __invert__(self):
        COUNTS["operations"] += 1
        return StrictArray(~self._a)

    def __dlpack__(self, *args, **kwargs):
        _refuse("DLPack export")


def _promotes(a, b):
    """Whether an operation meets float arrays of two precisions: in a float32 pass, a float64 temporary promotes
    the work (on a GPU, float64 runs at a fraction of float32's rate) though a float32 buffer hides it at the end."""
    return bool(getattr(b, "ndim", 0) and a.ndim and a.dtype.kind == b.dtype.kind == "f" and a.dtype != b.dtype)


def _binary(name):
    op = getattr(operator, name if name not in ("and", "or") else f"{name}_")

    def forward(self, other):
        other = _operand(other)
        if other is NotImplemented:
            return other
        COUNTS["operations"] += 1
        COUNTS["promotions"] += _promotes(self._a, other)
        return wrap(op(self._a, other))

    def reflected(self, other):
        other = _operand(other)
        if other is NotImplemented:
            return other
        COUNTS["operations"] += 1
        COUNTS["promotions"] += _promotes(self._a, other)
        return wrap(op(other, self._a))

    def inplace(self, other):
        other = _operand(other)
        if other is NotImplemented:
            return other
        COUNTS["operations"] += 1
        getattr(operator, f"i{name}")(self._a, other)  # iand, ior exist under these names
        return self

    return forward, reflected, inplace


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _f, _r, _i = _binary(_name)
    setattr(StrictArray, f"__{_name}__", _f)
    setattr(StrictArray, f"__r{_name}__", _r)
    setattr(StrictArray, f"__i{_name}__", _i)
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(StrictArray, f"__{_name}__", _binary(_name)[0])
StrictArray.__hash__ = None


class _Namespace(types.ModuleType):
    """NumPy's functions on StrictArrays (refusing NumPy arrays), with device results."""

    def __init__(self, name, source):
        super().__init__(name)
        self._source = source

    def __getattr__(self, name):
        value = getattr(self._source, name)
        if isinstance(value, types.ModuleType):
            return _Namespace(f"{self.__name__}.{name}", value)
        if isinstance(value, type) or not callable(value):
            return value                               # dtypes, constants (float64, inf, newaxis)
        moving = name in MOVES
        required = REQUIRED.get(name)

        def function(*args, **kwargs):
            if required and len(args) <= required[0] and required[1] not in kwargs:
                raise TypeError(f"{name}() missing required argument '{required[1]}' (CuPy has no default for "
                                f"it; the CuPy stand-in NN_EOS_DEVICE=strict asks for it as CuPy does)")
            if name not in VIEWS:
                COUNTS["operations"] += 1
            if moving and any(isinstance(a, np.ndarray) for a in args):
                COUNTS["uploads"] += 1
            args = unwrap(args, moving)
            kwargs = {k: unwrap(v, moving) for k, v in kwargs.items()}
            return wrap(value(*args, **kwargs))

        function.__name__ = name
        return function


strict = _Namespace("nn_eos.strict.strict", np)
strict.ndarray = StrictArray


def _linalg_module():
    """A stand-in for cupyx.scipy.sparse.linalg: SciPy's solvers on host copies (see the module docstring)."""
    import scipy.sparse.linalg as host

    class LinearOperator:
        """Like cupyx's: the functions take and return device (Strict) arrays."""

        def __init__(self, shape, matvec, rmatvec=None, matmat=None, rmatmat=None, dtype=None):
            self.shape, self.dtype = tuple(shape), np.dtype(dtype or np.float64)
            self.matvec, self.rmatvec = matvec, rmatvec or self._undefined("rmatvec")
            # as cupyx's: without matmat a block goes column by column through matvec; no adjoint unless given
            self.matmat = matmat or self._by_columns(matvec)
            self.rmatmat = rmatmat or (self._by_columns(rmatvec) if rmatvec else self._undefined("rmatmat"))

        @staticmethod
        def _by_columns(function):
            return lambda V: wrap(np.hstack([unwrap(function(V[:, j:j + 1])) for j in range(V.shape[1])]))

        @staticmethod
        def _undefined(name):
            def refuse(V):
                raise NotImplementedError(f"{name} is not defined")
            return refuse

        def dot(self, V):
            return self.matvec(V) if V.ndim == 1 else self.matmat(V)

        __matmul__ = dot

        def on_host(self):
            """SciPy's LinearOperator of the same map, moving each block to the device and back."""
            def call(fn):
                return lambda V: unwrap(fn(StrictArray(np.array(V, dtype=self.dtype))))
            return host.LinearOperator(self.shape, matvec=call(self.matvec), rmatvec=call(self.rmatvec),
                                       matmat=call(self.matmat), rmatmat=call(self.rmatmat), dtype=self.dtype)

    def solver(fn):
        def run(A, *args, **kwargs):
            if not isinstance(A, LinearOperator):
                _refuse("the cupyx stand-in was handed a host operator")
            return wrap(fn(A.on_host(), *unwrap(args), **{k: unwrap(v) for k, v in kwargs.items()}))
        return run

    module = types.ModuleType("nn_eos.strict.linalg")
    module.RELATIVE_TOL = True            # SciPy's meaning of eigsh's tol and maxiter (eigen._eigsh_limits)
    module.LinearOperator = LinearOperator
    module.eigsh = solver(host.eigsh)
    module.lobpcg = solver(host.lobpcg)
    return module


linalg_module = None


def sparse_linalg():
    global linalg_module
    if linalg_module is None:
        linalg_module = _linalg_module()
    return linalg_module


def special():
    """A stand-in for cupyx.scipy.special: SciPy's special functions (erf, …) on the stand-in's arrays."""
    import scipy.special

    return _Namespace("nn_eos.strict.special", scipy.special)
