"""A restricted unpickler for untrusted data files: plain data and plain numpy arrays, and no code.

Feature files from the internet carry pickles: VOLTA's per-image feature LMDBs pickle whole rows, tensorpack >= 0.11
pickles Conceptual Captions datapoints, and the bottom-up-attention.pytorch ``.npz`` files hold a dict ``info``
that ``np.save`` stored as a pickled object array. ``pickle.loads`` (or ``np.load(allow_pickle=True)``) of such a
file runs whatever callable the file names, so none of them ever reaches it. :func:`safe_pickle_loads` is used
instead.

What it allows, and why:

* Everything the pickle protocol builds without naming a global: ``None``, ``bool``, ``int``, ``float``, ``str``,
  ``bytes``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset`` (protocols 2 to 5 all produce these).
* A few globals that ordinary data pickles name, each resolved to a checked stand-in, never to the real callable:
  ``collections.OrderedDict`` (Python 3.6 ``DictReader`` rows); ``set``/``frozenset``/``bytearray``/``bytes``/
  ``complex`` under ``builtins`` and Python 2's ``__builtin__`` (protocols <= 3 reduce these through their type);
  ``_codecs.encode(text, 'latin1')`` (how protocol 2 writes non-empty ``bytes``).
* Numpy arrays and scalars of plain bool/int/uint/float/complex dtypes: ``numpy.ndarray``, ``numpy.dtype`` and
  ``_reconstruct``/``scalar``/``_frombuffer`` of ``numpy.core.multiarray`` (numpy 1.x) or
  ``numpy._core.multiarray`` (numpy 2.x, also ``*.numeric``). They resolve to inert stand-ins that only record
  their arguments; numpy's own unpickling code never runs. Afterwards each array is rebuilt with ``np.frombuffer``
  once its dtype string matches ``[<>|=]?[biufc]N`` and its byte count equals ``prod(shape) * itemsize``.
  Structured, string and sub-array dtypes are refused.
* Object arrays only with ``allow_object_arrays=True``: ``np.save`` of a non-array (a dict) writes the pickle of a
  0-d object array, so a ``.npy`` member must accept that outer layer. Their elements are unpickled under the
  same rules, and the array is filled element by element.
* ``encoding`` is passed to :class:`pickle.Unpickler`: ``"latin1"`` reads Python 2 pickles, whose byte strings
  (numpy array data included) arrive as ``str`` and are turned back into bytes through latin-1, as numpy does.

Anything else, ``os.system``, ``builtins.eval``, ``numpy.ma``, a persistent id, raises :class:`UnsafeData` at
the opcode that names it, before any call happens. After loading, :func:`_resolve` swaps the stand-ins for real
numpy objects and refuses anything that is not data (a class, a half-built stand-in), to a depth of 32.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["SAFE_GLOBALS", "SafeUnpickler", "UnsafeData", "array_from_bytes", "is_pickle", "safe_dtype",
           "safe_pickle_load", "safe_pickle_loads"]

_MAX_NESTING = 32
_DTYPE_RE = re.compile(r"[<>|=]?[biufc][0-9]{1,2}")
_OBJECT_DTYPES = ("O", "|O", "O4", "O8", "|O4", "|O8")


class UnsafeData(ValueError):
    """Serialized data that would need code we refuse to run (a pickle global, an object array, an ext type)."""


# ---------------------------------------------------------------------------------------------------------------
# Safe dtype / array construction


def safe_dtype(typestr: Any, allow_object: bool = False) -> np.dtype:
    """``np.dtype`` of a plain numeric type string such as ``'<f4'`` (or ``'O8'`` if ``allow_object``); else refused."""
    if isinstance(typestr, bytes | bytearray):
        typestr = bytes(typestr).decode("ascii", "replace")
    if allow_object and typestr in _OBJECT_DTYPES:
        return np.dtype(object)
    if not isinstance(typestr, str) or not _DTYPE_RE.fullmatch(typestr):
        raise UnsafeData(f"refusing array dtype {typestr!r}: only plain bool/int/uint/float/complex arrays are allowed")
    try:
        dtype = np.dtype(typestr)
    except TypeError as e:
        raise UnsafeData(f"invalid array dtype {typestr!r}") from e
    if dtype.kind not in "biufc" or dtype.hasobject:
        raise UnsafeData(f"refusing array dtype {typestr!r} of kind {dtype.kind!r}")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) > 8:
        raise ValueError(f"array shape must be a short list of ints; got {shape!r}")
    out = []
    for n in shape:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"array shape must hold non-negative ints; got {shape!r}")
        out.append(int(n))
    return tuple(out)


def _order(order: Any) -> str:
    if order not in ("C", "F"):
        raise ValueError(f"array order must be 'C' or 'F'; got {order!r}")
    return order


def array_from_bytes(data: Any, dtype: np.dtype, shape: Any, order: str = "C") -> np.ndarray:
    """A writable array of ``shape`` from raw bytes, after checking the byte count matches exactly."""
    if dtype.hasobject:
        raise UnsafeData(f"refusing to build an array of dtype {dtype} from raw bytes")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UnsafeData(f"array data must be raw bytes; got {type(data).__name__} (an object array?)")
    shape = _shape(shape)
    want = math.prod(shape) * dtype.itemsize
    if len(data) != want:
        raise ValueError(f"array of shape {shape} and dtype {dtype} needs {want} bytes; got {len(data)} "
                         "(truncated or corrupt value)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order=_order(order)).copy()


def _pickled_bytes(data: Any) -> Any:
    """Array / scalar data from a pickle: a Python 2 byte string unpickled as ``str`` goes back through latin-1."""
    if isinstance(data, str):
        try:
            return data.encode("latin-1")
        except UnicodeEncodeError:
            raise UnsafeData("numpy array data is text that is not latin-1 (not a Python 2 byte string)") from None
    return data


# ---------------------------------------------------------------------------------------------------------------
# Stand-ins for the globals a data pickle may name


class _NdarrayClass:
    """Stands in for ``numpy.ndarray`` (only ever the first argument of ``_reconstruct``)."""

    def __setstate__(self, state: Any) -> None:
        raise UnsafeData("unexpected numpy.ndarray state")


class _DtypeStub:
    """Stands in for ``numpy.dtype(typestr, align, copy)`` and its ``__setstate__``."""

    allow_object = False

    def __init__(self, typestr: Any, align: Any = False, copy: Any = False):
        self.dtype = safe_dtype(typestr, self.allow_object)

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not isinstance(state, tuple) or len(state) < 5:
            raise UnsafeData(f"unexpected numpy dtype state {state!r}")
        if not isinstance(getattr(self, "dtype", None), np.dtype):
            raise UnsafeData("numpy dtype state without a dtype")
        byteorder, subarray, names, fields = state[1:5]
        if subarray is not None or names is not None or fields is not None:
            raise UnsafeData("refusing a structured or sub-array numpy dtype")
        if byteorder not in ("<", ">", "|", "="):
            raise UnsafeData(f"unexpected numpy dtype byte order {byteorder!r}")
        if byteorder in "<>" and not self.dtype.hasobject:
            self.dtype = self.dtype.newbyteorder(byteorder)


class _ObjectDtypeStub(_DtypeStub):
    """:class:`_DtypeStub` that also accepts ``numpy.dtype('O8')`` (``allow_object_arrays=True``)."""

    allow_object = True


class _ArrayStub:
    """Stands in for an array being unpickled; :func:`_resolve` swaps in the real array.

    A numeric array is built at once (``array``); an object array keeps its element list (``items``, ``shape``,
    ``order``) until :func:`_resolve` has resolved the elements.
    """

    def __init__(self, array: np.ndarray | None = None):
        self.array = array
        self.items: list | None = None

    def __setstate__(self, state: Any) -> None:
        if getattr(self, "array", None) is not None or getattr(self, "items", None) is not None:
            raise UnsafeData("numpy array state set twice")
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise UnsafeData("unexpected numpy array state")
        shape, dtype, is_fortran, data = state[-4:]
        if not isinstance(dtype, _DtypeStub) or not isinstance(getattr(dtype, "dtype", None), np.dtype):
            raise UnsafeData("numpy array state without a plain dtype")
        order = "F" if is_fortran else "C"
        if dtype.dtype.hasobject:  # only an _ObjectDtypeStub gets here
            shape = _shape(shape)
            if not isinstance(data, list) or len(data) != math.prod(shape):
                raise ValueError(f"object array of shape {shape} needs a list of {math.prod(shape)} elements; "
                                 f"got {type(data).__name__}")
            self.array, self.items, self.shape, self.order = None, data, shape, order
            return
        self.array = array_from_bytes(_pickled_bytes(data), dtype.dtype, shape, order)


class _ScalarStub:
    def __init__(self, dtype: Any, data: Any = None):
        if not isinstance(dtype, _DtypeStub) or not isinstance(getattr(dtype, "dtype", None), np.dtype):
            raise UnsafeData("numpy scalar without a plain dtype")
        self.value = array_from_bytes(_pickled_bytes(data), dtype.dtype, ())[()]

    def __setstate__(self, state: Any) -> None:  # BUILD must not be able to plant an arbitrary ``value``
        raise UnsafeData("unexpected numpy scalar state")


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStub:
    if cls is not _NdarrayClass:
        raise UnsafeData("numpy _reconstruct of something other than numpy.ndarray")
    return _ArrayStub()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStub:
    if not isinstance(dtype, _DtypeStub) or not isinstance(getattr(dtype, "dtype", None), np.dtype):
        raise UnsafeData("numpy _frombuffer without a plain dtype")
    return _ArrayStub(array_from_bytes(buf, dtype.dtype, shape, order))


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafeData(f"refusing _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin-1")


def _bytes(*args: Any) -> bytes:
    """``bytes()``: how protocols <= 2 write an empty ``bytes`` (non-empty ones go through ``_codecs.encode``)."""
    if args:
        raise UnsafeData("refusing bytes(...) with arguments")
    return b""


def _bytearray(*args: Any) -> bytearray:
    if len(args) == 1 and isinstance(args[0], bytes | bytearray):
        return bytearray(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return bytearray(args[0].encode("latin-1"))
    raise UnsafeData("refusing bytearray(...) with these arguments")


def _complex(real: Any = 0.0, imag: Any = 0.0) -> complex:
    if not all(isinstance(x, int | float) for x in (real, imag)):
        raise UnsafeData("refusing complex(...) of non-numbers")
    return complex(real, imag)


def _set(items: Any = ()) -> set:
    if not isinstance(items, list | tuple):
        raise UnsafeData("refusing set(...) of a non-list")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


_NUMPY_ALLOWED: dict[str, Callable | type] = {
    "_reconstruct": _reconstruct, "scalar": _ScalarStub, "_frombuffer": _frombuffer}
SAFE_GLOBALS: dict[tuple[str, str], Callable | type] = {
    ("collections", "OrderedDict"): OrderedDict,
    **{(mod, name): fn for mod in ("builtins", "__builtin__")  # protocol-2 pickles name Python 2's module
       for name, fn in (("set", _set), ("frozenset", _frozenset), ("bytearray", _bytearray), ("bytes", _bytes),
                        ("complex", _complex))},
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): _DtypeStub,
    **{(mod, name): fn for mod in ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric",
                                   "numpy._core.numeric")
       for name, fn in _NUMPY_ALLOWED.items()},
}
"""The only globals :class:`SafeUnpickler` resolves, each to a checked stand-in (numpy code never runs)."""


class SafeUnpickler(pickle.Unpickler):
    """An unpickler for data (dicts, lists, str/bytes/numbers, plain numeric numpy arrays) and nothing else.

    ``find_class`` looks names up in :data:`SAFE_GLOBALS` and raises :class:`UnsafeData` for anything else, so a
    pickle that names ``os.system`` or ``builtins.eval`` fails at that opcode before any call happens. Numpy
    reconstructors resolve to stand-ins; :func:`safe_pickle_loads` swaps real arrays in afterwards (call
    :func:`_resolve` on what ``load()`` returns when using this class directly). ``encoding`` as in
    :class:`pickle.Unpickler` (``"latin1"`` for Python 2 pickles); ``allow_object_arrays`` lets numpy object
    arrays through (their elements still only data), as ``np.save`` writes them.
    """

    def __init__(self, file: Any, *, encoding: str = "ASCII", allow_object_arrays: bool = False):
        super().__init__(file, encoding=encoding)
        self.allow_object_arrays = allow_object_arrays

    def find_class(self, module: str, name: str) -> Any:
        fn = SAFE_GLOBALS.get((module, name))
        if fn is None:
            raise UnsafeData(f"refusing to unpickle global {module}.{name}")
        if fn is _DtypeStub and self.allow_object_arrays:
            return _ObjectDtypeStub
        return fn

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeData("refusing a pickle persistent id")


def _resolve(obj: Any, depth: int = 0) -> Any:
    """Replace stand-ins by numpy objects and check only data types remain."""
    if depth > _MAX_NESTING:
        raise ValueError(f"data nested deeper than {_MAX_NESTING} levels")
    if obj is None or isinstance(obj, str | bytes | bool | int | float | complex):
        return obj
    if isinstance(obj, _ArrayStub):
        items = getattr(obj, "items", None)
        if items is not None:
            out = np.empty(len(items), dtype=object)
            for i, item in enumerate(items):
                out[i] = _resolve(item, depth + 1)
            out = out.reshape(obj.shape)  # numpy lists object elements in C order even for a Fortran array
            return np.asfortranarray(out) if obj.order == "F" else out
        if not isinstance(getattr(obj, "array", None), np.ndarray):
            raise UnsafeData("numpy array without state")
        return obj.array
    if isinstance(obj, _ScalarStub):
        if not isinstance(getattr(obj, "value", None), np.generic):
            raise UnsafeData("numpy scalar without data")
        return obj.value
    t = type(obj)
    if t is OrderedDict or t is dict:
        return t((_resolve(k, depth + 1), _resolve(v, depth + 1)) for k, v in obj.items())
    if t is list or t is tuple or t is set or t is frozenset:
        return t(_resolve(v, depth + 1) for v in obj)
    if t is bytearray:
        return bytes(obj)
    raise UnsafeData(f"unpickled data holds a {t.__name__}")


def safe_pickle_loads(buf: bytes, encoding: str = "ASCII", allow_object_arrays: bool = False) -> Any:
    """``pickle.loads`` for untrusted data: see :class:`SafeUnpickler` and this module's docstring."""
    return safe_pickle_load(io.BytesIO(buf), encoding, allow_object_arrays)


def safe_pickle_load(file: Any, encoding: str = "ASCII", allow_object_arrays: bool = False) -> Any:
    """``pickle.load`` of an open binary file for untrusted data (reads one pickle from its current position)."""
    return _resolve(SafeUnpickler(file, encoding=encoding, allow_object_arrays=allow_object_arrays).load())


def is_pickle(buf: bytes) -> bool:
    """A pickle of protocol >= 2 starts with PROTO (``0x80``, protocol); a msgpack datapoint never does."""
    return len(buf) >= 2 and buf[0] == 0x80 and 2 <= buf[1] <= 5
