"""Decoding VOLTA's LMDB record values into checked records, safe against untrusted bytes.

A value of tensorpack's ``LMDBSerializer`` (the Conceptual Captions LMDBs) is msgpack with msgpack-numpy array
maps (tensorpack 0.9.4, VOLTA's pin) or pickle (tensorpack >= 0.11's default); :func:`loads_value` accepts both,
detected per value, and :func:`parse_cc_datapoint` turns the decoded datapoint (:data:`CC_FIELDS`) into a
:class:`CaptionPair`. A value of a per-image feature LMDB is a pickled csv ``DictReader`` row of strings (arrays as
base64 of raw float32 / int64 bytes); :func:`parse_feature_row` turns it into :class:`RegionFeatures`. The LMDB
layouts and their readers are in :mod:`jaxvl.data.readers.volta_lmdb`.

Safety: an LMDB from the internet must never reach ``pickle.loads``. msgpack values are decoded with our own
msgpack-numpy map decoder that accepts only plain bool/int/uint/float/complex arrays and refuses object arrays
(``kind b'O'``, which msgpack-numpy would unpickle), structured arrays and msgpack ext types. Pickled values go
through :class:`~jaxvl.data.readers.safe_pickle.SafeUnpickler`, which resolves only ``collections.OrderedDict``, a
few builtin containers and numpy's array/dtype/scalar reconstructors, and even those are replaced by inert
stand-ins: numpy's own pickle machinery never runs, arrays are rebuilt with ``np.frombuffer`` after their byte
counts are checked. Anything else (``os.system``, ``builtins.eval``, ...) is refused when the pickle names it,
before any call happens.

Every record passes :func:`jaxvl.data.records.check_region_features`; an unusable value raises ``ValueError`` (or
:class:`BadRecord`), which the readers turn into a :class:`BadRecord` naming the file and the record.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import msgpack
import numpy as np

from jaxvl.data.readers.safe_pickle import UnsafeData, array_from_bytes, is_pickle, safe_dtype, safe_pickle_loads
from jaxvl.data.records import CaptionPair, RegionFeatures, check_region_features

VOLTA_FEATURE_DIM = 2048
"""Bottom-up-attention region feature size VOLTA expects (``v_feature_size``)."""
VOLTA_NUM_CLASSES = 1601
"""Visual Genome detector classes incl. background (width of ``cls_prob``)."""

CC_FIELDS = ("features", "cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "attr_scores",
             "boxes", "num_boxes", "h", "w", "image_id", "caption")
"""Field order of one Conceptual Captions datapoint (``preprocess_cc_train.py``)."""

# ---------------------------------------------------------------------------------------------------------------
# msgpack (+ msgpack-numpy array maps)


def _get(m: dict, name: str, default: Any = KeyError) -> Any:
    for k in (name.encode(), name):
        if k in m:
            return m[k]
    if default is KeyError:
        raise ValueError(f"msgpack-numpy map lacks {name!r}")
    return default


def _decode_msgpack_map(m: dict) -> Any:
    """msgpack ``object_hook``: turn msgpack-numpy's ``{b'nd', b'type', b'kind', b'shape', b'data'}`` into arrays.

    Refuses ``kind`` b'O' (msgpack-numpy stores object arrays as a pickle) and b'V' (structured dtypes) without
    looking at the data. Other maps pass through unchanged.
    """
    nd = _get(m, "nd", None)
    if nd is None:
        if _get(m, "complex", None) is True:
            data = _get(m, "data")
            return complex(data.decode("ascii") if isinstance(data, bytes) else str(data))
        return m
    kind = _get(m, "kind", b"")
    if kind not in (b"", ""):
        raise UnsafeData(f"refusing msgpack-numpy array of kind {kind!r} (object arrays are pickles, structured "
                         "dtypes are not region features)")
    dtype = safe_dtype(_get(m, "type"))
    data = _get(m, "data")
    if nd is True:
        return array_from_bytes(data, dtype, _get(m, "shape"))
    if nd is False:  # a numpy scalar
        return array_from_bytes(data, dtype, ())[()]
    raise ValueError(f"msgpack-numpy map has b'nd' = {nd!r}")


def _refuse_ext(code: int, data: bytes) -> Any:
    raise UnsafeData(f"refusing msgpack ext type {code}")


def msgpack_loads(buf: bytes) -> Any:
    """Decode one tensorpack msgpack value (``use_bin_type=True``); arrays via :func:`_decode_msgpack_map`."""
    return msgpack.unpackb(buf, raw=False, object_hook=_decode_msgpack_map, ext_hook=_refuse_ext)


def loads_value(buf: bytes) -> Any:
    """Decode one tensorpack ``LMDBSerializer`` value: pickle (restricted) or msgpack(-numpy), by its first bytes."""
    return safe_pickle_loads(buf) if is_pickle(buf) else msgpack_loads(buf)


# ---------------------------------------------------------------------------------------------------------------
# Field conversion


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iu":
        value = value.item()
    if isinstance(value, str):
        s = value.strip()
        try:
            return int(s)
        except ValueError:
            try:
                f = float(s)
            except ValueError:
                raise ValueError(f"{name} must be an integer; got {value!r}") from None
            value = f
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{name} must be an integer; got {value!r}")


def _positive(n: int, name: str) -> int:
    if n <= 0:
        raise ValueError(f"{name} must be positive; got {n} (an image without regions cannot be used)")
    return n


def _as_text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{name} is not UTF-8: {value[:40]!r}") from None
    if isinstance(value, str):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return str(int(value))
    raise ValueError(f"{name} must be a string; got {type(value).__name__}")


def _float_array(arr: Any, name: str, ndim: int) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be an array; got {type(arr).__name__}")
    if arr.dtype.kind != "f":
        raise ValueError(f"{name} must be floating point (float32); got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _int_array(arr: Any, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise ValueError(f"{name} must be an array; got {type(arr).__name__}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integer (int64); got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {arr.shape}")
    return arr.astype(np.int64)


def _check_rows(arr: np.ndarray | None, name: str, num_boxes: int) -> None:
    if arr is not None and arr.shape[0] != num_boxes:
        raise ValueError(f"{name} has {arr.shape[0]} rows but num_boxes is {num_boxes}")


# ---------------------------------------------------------------------------------------------------------------
# Conceptual Captions datapoints (tensorpack LMDBSerializer)


def parse_cc_datapoint(dp: Any, source: str, feature_dim: int | None = VOLTA_FEATURE_DIM,
                       num_classes: int | None = VOLTA_NUM_CLASSES) -> CaptionPair:
    """One decoded datapoint (see :data:`CC_FIELDS`) -> checked :class:`CaptionPair`; ``ValueError`` if unusable
    (an empty or blank caption included, as the TSV + caption JSON path refuses it).

    ``attr_scores`` is read for its shape only: :class:`RegionFeatures` has no field for it.
    """
    if not isinstance(dp, list | tuple):
        raise ValueError(f"a datapoint must be a list of {len(CC_FIELDS)} fields; got {type(dp).__name__}")
    if len(dp) != len(CC_FIELDS):
        raise ValueError(f"a datapoint must have {len(CC_FIELDS)} fields {list(CC_FIELDS)}; got {len(dp)}")
    f = dict(zip(CC_FIELDS, dp, strict=True))
    for name in ("features", "boxes", "num_boxes", "h", "w", "image_id", "caption"):
        if f[name] is None:
            raise ValueError(f"field {name!r} is missing (None)")
    image_id = _as_text(f["image_id"], "image_id")
    num_boxes = _positive(_as_int(f["num_boxes"], "num_boxes"), "num_boxes")
    features = _float_array(f["features"], "features", 2)
    boxes = _float_array(f["boxes"], "boxes", 2)
    opt: dict[str, np.ndarray | None] = {}
    for name in ("cls_prob", "attr_scores"):
        opt[name] = None if f[name] is None else _float_array(f[name], name, 2)
    for name in ("objects_id", "attrs_id"):
        opt[name] = None if f[name] is None else _int_array(f[name], name)
    for name in ("objects_conf", "attrs_conf"):
        opt[name] = None if f[name] is None else _float_array(f[name], name, 1)
    for name, arr in (("features", features), ("boxes", boxes), *opt.items()):
        _check_rows(arr, name, num_boxes)
    rec = RegionFeatures(image_id=image_id, image_h=_as_int(f["h"], "h"), image_w=_as_int(f["w"], "w"),
                         boxes=boxes, features=features, cls_prob=opt["cls_prob"], objects_id=opt["objects_id"],
                         objects_conf=opt["objects_conf"], attrs_id=opt["attrs_id"], attrs_conf=opt["attrs_conf"])
    caption = _as_text(f["caption"], "caption")
    if not caption.strip():
        raise ValueError(f"caption is empty ({caption!r}); a pair needs text")
    check_region_features(rec, source, feature_dim=feature_dim, num_classes=num_classes)
    return CaptionPair(regions=rec, caption=caption)


# ---------------------------------------------------------------------------------------------------------------
# Per-image feature rows (Flickr30k etc.)


def _b64_array(value: Any, dtype: type, name: str) -> np.ndarray:
    """A TSV field: base64 text of raw little-endian ``dtype`` bytes (or, as VOLTA also accepts, an array)."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, str):
        value = value.encode("ascii", "replace")
    if not isinstance(value, bytes):
        raise ValueError(f"{name} must be base64 text; got {type(value).__name__}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{name} is not valid base64 ({e})") from None
    itemsize = np.dtype(dtype).itemsize
    if len(raw) % itemsize:
        raise ValueError(f"{name} holds {len(raw)} bytes, not a whole number of {np.dtype(dtype).name} values")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).astype(dtype)


def _rows(arr: np.ndarray, name: str, num_boxes: int, width: int | None) -> np.ndarray:
    """Reshape a flat decoded field to [num_boxes, width] (``width=None``: infer) or [num_boxes] (``width=0``)."""
    if arr.ndim > 1:
        if arr.shape[0] != num_boxes:
            raise ValueError(f"{name} has {arr.shape[0]} rows but num_boxes is {num_boxes}")
        return arr
    if width == 0:
        if arr.size != num_boxes:
            raise ValueError(f"{name} has {arr.size} values, expected num_boxes = {num_boxes}")
        return arr
    if arr.size % num_boxes or (width is not None and arr.size != num_boxes * width):
        want = f"{num_boxes} x {width}" if width is not None else f"a multiple of num_boxes = {num_boxes}"
        raise ValueError(f"{name} has {arr.size} values, expected {want} (wrong shape or dtype?)")
    return arr.reshape(num_boxes, -1)


def parse_feature_row(row: Any, source: str, key: str, feature_dim: int | None = VOLTA_FEATURE_DIM,
                      num_classes: int | None = VOLTA_NUM_CLASSES) -> RegionFeatures:
    """One unpickled TSV row (dict of strings) -> checked :class:`RegionFeatures`; ``ValueError`` if unusable.

    Required: ``img_h, img_w, boxes, features``; ``num_boxes`` (else inferred from ``boxes``), ``img_id`` (must
    equal the LMDB key), ``cls_prob, objects_id, objects_conf, attrs_id, attrs_conf`` optional (``None`` when the
    TSV lacked the column). Floats are base64 float32, ids base64 int64.
    """
    if not isinstance(row, dict):
        raise ValueError(f"a row must be a dict of TSV fields; got {type(row).__name__}")
    row = {(k.decode() if isinstance(k, bytes) else k): v for k, v in row.items()}
    missing = [k for k in ("img_h", "img_w", "boxes", "features") if row.get(k) is None]
    if missing:
        raise ValueError(f"missing field(s) {missing}; the row has {sorted(k for k in row if isinstance(k, str))}")
    image_id = key
    if row.get("img_id") is not None:
        image_id = _as_text(row["img_id"], "img_id")
        if image_id != key:
            raise ValueError(f"img_id {image_id!r} differs from its LMDB key {key!r}")
    boxes_flat = _b64_array(row["boxes"], np.float32, "boxes")
    if row.get("num_boxes") is not None:
        num_boxes = _as_int(row["num_boxes"], "num_boxes")
    else:
        num_boxes = boxes_flat.shape[0] if boxes_flat.ndim > 1 else boxes_flat.size // 4
    _positive(num_boxes, "num_boxes")
    boxes = _float_array(_rows(boxes_flat, "boxes", num_boxes, 4), "boxes", 2)
    features = _float_array(_rows(_b64_array(row["features"], np.float32, "features"), "features", num_boxes,
                                  feature_dim), "features", 2)
    opt: dict[str, np.ndarray | None] = {}
    for name, dtype, width in (("cls_prob", np.float32, None), ("objects_id", np.int64, 0),
                               ("objects_conf", np.float32, 0), ("attrs_id", np.int64, 0),
                               ("attrs_conf", np.float32, 0)):
        if row.get(name) is None or (isinstance(row[name], str | bytes) and not row[name]):
            opt[name] = None
            continue
        arr = _rows(_b64_array(row[name], dtype, name), name, num_boxes, width)
        opt[name] = _int_array(arr, name) if dtype is np.int64 else _float_array(arr, name, 1 if width == 0 else 2)
    rec = RegionFeatures(image_id=image_id, image_h=_as_int(row["img_h"], "img_h"),
                         image_w=_as_int(row["img_w"], "img_w"), boxes=boxes, features=features, **opt)
    return check_region_features(rec, source, feature_dim=feature_dim, num_classes=num_classes)
