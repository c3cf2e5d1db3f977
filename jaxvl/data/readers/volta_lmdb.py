"""Readers for VOLTA's LMDB feature stores, safe against untrusted files.

Two layouts (reference section 4.1):

* **Conceptual Captions pretraining LMDB** (``training_feat_all.lmdb`` / ``validation_feat_all.lmdb``), written by
  tensorpack's ``LMDBSerializer``: a single LMDB file (``subdir=False``, next to a ``-lock`` file) or an LMDB
  directory; keys ``b'00000000'``, ``b'00000001'``, ... plus ``b'__keys__'`` holding the serialized key list. Each
  value is one serialized datapoint ``[features, cls_prob, objects_id, objects_conf, attrs_id, attrs_conf,
  attr_scores, boxes, num_boxes, h, w, image_id, caption]``: features [R, 2048] float32, cls_prob [R, 1601] float32
  (background at 0), objects_id / attrs_id [R] int64, objects_conf / attrs_conf [R] float32, attr_scores [R, 401]
  float32, boxes [R, 4] float32 pixel x1y1x2y2; ``num_boxes, h, w, image_id, caption`` are usually ``str`` (they
  come from the TSV). Serialization is msgpack with msgpack-numpy array maps (tensorpack 0.9.4, VOLTA's pin) or
  pickle (tensorpack >= 0.11's default); both are accepted and detected per value.
  :func:`read_cc_lmdb` / :class:`ConceptualCaptionsLMDB` yield :class:`CaptionPair`.
* **Per-image feature LMDB** (e.g. Flickr30k's ``flickr30k_feat.lmdb``, ``data/flickr30k/convert_flickr30k_lmdb.py``):
  key ``str(img_id).encode()`` -> ``pickle.dumps`` of a csv ``DictReader`` row whose values are strings
  (``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features, cls_prob,
  attrs, classes``; arrays as base64 of raw float32 / int64 bytes), plus ``b'keys'`` -> pickled list of id bytes.
  Rows are ``collections.OrderedDict`` pickled with protocol 3 (Python 3.6) or ``dict`` with protocol >= 4.
  :class:`FeatureLMDB` gives random access by image id, :func:`read_feature_lmdb` iterates.

Safety: an LMDB from the internet must never reach ``pickle.loads``. msgpack values are decoded with our own
msgpack-numpy map decoder that accepts only plain bool/int/uint/float/complex arrays and refuses object arrays
(``kind b'O'``, which msgpack-numpy would unpickle), structured arrays and msgpack ext types. Pickled values go
through :class:`~jaxvl.data.readers.safe_pickle.SafeUnpickler`, which resolves only ``collections.OrderedDict``, a
few builtin containers and numpy's array/dtype/scalar reconstructors, and even those are replaced by inert
stand-ins: numpy's own pickle machinery never runs, arrays are rebuilt with ``np.frombuffer`` after their byte
counts are checked. Anything else (``os.system``, ``builtins.eval``, ...) is refused when the pickle names it,
before any call happens.

Every record passes :func:`jaxvl.data.records.check_region_features`; a bad one raises :class:`BadRecord` naming
the file and the record, or with ``skip_bad=True`` is counted, logged and skipped (``reader.errors.skipped``).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import lmdb
import msgpack
import numpy as np

from jaxvl.data.readers.safe_pickle import (  # noqa: F401 - SafeUnpickler re-exported
    SafeUnpickler,
    UnsafeData,
    array_from_bytes,
    is_pickle,
    safe_dtype,
    safe_pickle_loads,
)
from jaxvl.data.records import BadRecord, CaptionPair, RecordErrors, RegionFeatures, check_region_features

log = logging.getLogger(__name__)

VOLTA_FEATURE_DIM = 2048
"""Bottom-up-attention region feature size VOLTA expects (``v_feature_size``)."""
VOLTA_NUM_CLASSES = 1601
"""Visual Genome detector classes incl. background (width of ``cls_prob``)."""

CC_FIELDS = ("features", "cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "attr_scores",
             "boxes", "num_boxes", "h", "w", "image_id", "caption")
"""Field order of one Conceptual Captions datapoint (``preprocess_cc_train.py``)."""

CC_KEYS_KEY = b"__keys__"
FEATURE_KEYS_KEY = b"keys"

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
# LMDB plumbing


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Open an LMDB read-only, as a directory (``data.mdb`` inside) or as a single file (``subdir=False``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such LMDB file or directory")
    subdir = os.path.isdir(path)
    if subdir and not os.path.exists(os.path.join(path, "data.mdb")):
        raise ValueError(f"{path}: a directory without data.mdb is not an LMDB")
    try:
        return lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False,
                         max_readers=256)
    except lmdb.Error as e:
        raise ValueError(f"{path}: cannot open as an LMDB ({e})") from e


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def _read_key_list(env: lmdb.Environment, path: str, list_key: bytes, writer: str) -> list[bytes]:
    """The key list an LMDB stores under ``list_key``, checked; an empty or key-less LMDB raises ``ValueError``."""
    entries = env.stat()["entries"]
    with env.begin(write=False) as txn:
        raw = txn.get(list_key)
    where = f"{path}: record {_key_text(list_key)!r}"
    if entries == 0:
        raise ValueError(f"{path}: the LMDB is empty (no records, no {_key_text(list_key)!r} key list)")
    if raw is None:
        raise BadRecord(f"{where}: missing; {writer} stores the list of record keys there. Is this the right kind "
                        "of LMDB?")
    try:
        keys = loads_value(raw)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad key list
        raise BadRecord(f"{where}: cannot decode the key list: {e}") from e
    if not isinstance(keys, list | tuple) or not all(isinstance(k, bytes | str) for k in keys):
        raise BadRecord(f"{where}: the key list must be a list of bytes; got {type(keys).__name__}")
    keys = [k.encode() if isinstance(k, str) else k for k in keys]
    if not keys:
        raise ValueError(f"{path}: the LMDB holds no records (its {_key_text(list_key)!r} key list is empty)")
    if entries - 1 != len(keys):
        log.warning("%s: the key list names %d records but the LMDB holds %d other entries", path, len(keys),
                    entries - 1)
    return keys


_ENVS: dict[tuple[str, int], list] = {}  # (real path, pid) -> [environment, number of readers using it]
_ENVS_LOCK = threading.Lock()


def _acquire_env(path: str) -> lmdb.Environment:
    """A shared read-only environment: py-lmdb refuses to open one LMDB twice in a process."""
    key = (os.path.realpath(path), os.getpid())
    with _ENVS_LOCK:
        slot = _ENVS.get(key)
        if slot is None:
            slot = _ENVS[key] = [open_lmdb(path), 0]
        slot[1] += 1
        return slot[0]


def _release_env(path: str, pid: int) -> None:
    key = (os.path.realpath(path), pid)
    with _ENVS_LOCK:
        slot = _ENVS.get(key)
        if slot is not None:
            slot[1] -= 1
            if slot[1] <= 0:
                slot[0].close()
                del _ENVS[key]


class _LMDBReader:
    """Shared plumbing: shared, fork-aware environment; key list; len; close / context manager; picklable."""

    _list_key: bytes
    _writer: str

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False):
        self.path = os.fspath(path)
        self.skip_bad = skip_bad
        self.errors = RecordErrors(self.path, skip_bad)
        self._env: lmdb.Environment | None = None
        self._pid = os.getpid()
        self._keys = _read_key_list(self.env, self.path, self._list_key, self._writer)

    @property
    def env(self) -> lmdb.Environment:
        """The open environment (re-opened after a fork or unpickling, since LMDB handles do not survive those)."""
        if self._env is None or self._pid != os.getpid():
            self._env, self._pid = _acquire_env(self.path), os.getpid()
        return self._env

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        """Release the environment (closed once no reader in this process uses it)."""
        if self._env is not None and self._pid == os.getpid():
            _release_env(self.path, self._pid)
        self._env = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_env": None}

    def _get(self, txn: lmdb.Transaction, key: bytes) -> bytes:
        raw = txn.get(key)
        if raw is None:
            raise BadRecord(f"{self.path}: record {_key_text(key)!r}: listed in {_key_text(self._list_key)!r} but "
                            "absent from the LMDB")
        return raw

    def _iter(self, parse: Callable[[lmdb.Transaction, bytes], Any]) -> Iterator[Any]:
        self.errors = RecordErrors(self.path, self.skip_bad)
        with self.env.begin(write=False) as txn:
            yield from self.errors.filter(self._keys, lambda key: parse(txn, key))
        self.errors.report()


# ---------------------------------------------------------------------------------------------------------------
# Conceptual Captions (tensorpack LMDBSerializer)


def parse_cc_datapoint(dp: Any, source: str, feature_dim: int | None = VOLTA_FEATURE_DIM,
                       num_classes: int | None = VOLTA_NUM_CLASSES) -> CaptionPair:
    """One decoded datapoint (see :data:`CC_FIELDS`) -> checked :class:`CaptionPair`; ``ValueError`` if unusable.

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
    check_region_features(rec, source, feature_dim=feature_dim, num_classes=num_classes)
    return CaptionPair(regions=rec, caption=_as_text(f["caption"], "caption"))


class ConceptualCaptionsLMDB(_LMDBReader):
    """VOLTA's Conceptual Captions pretraining LMDB (tensorpack ``LMDBSerializer``): ``len()``, iteration, ``[i]``.

    ``feature_dim`` / ``num_classes`` default to VOLTA's 2048 / 1601 (its preprocessing hard-codes both); pass
    ``None`` to skip those checks. Iteration follows the ``__keys__`` list; with ``skip_bad`` bad records are
    counted in ``self.errors.skipped`` and logged, and the total is logged when iteration ends.
    """

    _list_key = CC_KEYS_KEY
    _writer = "tensorpack's LMDBSerializer"

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False, feature_dim: int | None = VOLTA_FEATURE_DIM,
                 num_classes: int | None = VOLTA_NUM_CLASSES):
        self.feature_dim, self.num_classes = feature_dim, num_classes
        super().__init__(path, skip_bad)

    def _parse(self, txn: lmdb.Transaction, key: bytes) -> CaptionPair:
        raw = self._get(txn, key)
        source = f"{self.path} [key {_key_text(key)!r}]"
        try:
            dp = loads_value(raw)
        except Exception as e:  # noqa: BLE001 - msgpack/pickle raise many types on corrupt bytes
            raise BadRecord(f"{self.path}: record {_key_text(key)!r}: cannot decode the value "
                            f"({type(e).__name__}: {e})") from e
        try:
            return parse_cc_datapoint(dp, source, self.feature_dim, self.num_classes)
        except BadRecord:
            raise
        except ValueError as e:
            image = ""
            if isinstance(dp, list | tuple) and len(dp) == len(CC_FIELDS) and isinstance(dp[-2], str | bytes | int):
                image = f" (image {_key_text(dp[-2]) if isinstance(dp[-2], bytes) else str(dp[-2])!r})"
            raise BadRecord(f"{self.path}: record {_key_text(key)!r}{image}: {e}") from e

    def __iter__(self) -> Iterator[CaptionPair]:
        return self._iter(self._parse)

    def __getitem__(self, index: int) -> CaptionPair:
        with self.env.begin(write=False) as txn:
            return self._parse(txn, self._keys[index])


def read_cc_lmdb(path: str | os.PathLike, skip_bad: bool = False, feature_dim: int | None = VOLTA_FEATURE_DIM,
                 num_classes: int | None = VOLTA_NUM_CLASSES) -> Iterator[CaptionPair]:
    """Iterate the (regions, caption) pairs of a VOLTA Conceptual Captions LMDB; see :class:`ConceptualCaptionsLMDB`."""
    with ConceptualCaptionsLMDB(path, skip_bad, feature_dim, num_classes) as reader:
        yield from reader


def read_caption_json(path: str | os.PathLike) -> dict[str, str | list[str]]:
    """VOLTA's ``annotations/caption_{train,valid}.json``: a JSON object ``{image_id: caption}``.

    VOLTA only uses ``json.load(f).values()`` (the pool of random captions for the ITM negatives), so the file is a
    flat object keyed by the CC image id (the crc32 of the image URL, as a string). A value may also be a list of
    captions. Raises ``ValueError`` naming the file (and the image id) for anything else.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object mapping image id -> caption (VOLTA's caption_*.json); "
                         f"got a JSON {type(data).__name__}")
    for image_id, caps in data.items():
        if isinstance(caps, str):
            caps_list = [caps]
        elif isinstance(caps, list) and caps:
            caps_list = caps
        else:
            raise ValueError(f"{path}: image {image_id!r}: the caption must be a string or a non-empty list of "
                             f"strings; got {caps!r:.80}")
        for c in caps_list:
            if not isinstance(c, str) or not c.strip():
                raise ValueError(f"{path}: image {image_id!r}: empty or non-string caption {c!r:.80}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Per-image feature LMDB (Flickr30k etc.)


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


class FeatureLMDB(_LMDBReader):
    """VOLTA's per-image feature LMDB: ``FeatureLMDB(path)[image_id] -> RegionFeatures``, ``.keys()``, iteration.

    ``image_id`` may be a str, int or bytes (the key is ``str(image_id).encode()``). An id that is not in the LMDB
    raises ``KeyError``; an id in the ``keys`` list whose row is missing or bad raises :class:`BadRecord`.
    ``feature_dim`` / ``num_classes`` as in :class:`ConceptualCaptionsLMDB`.
    """

    _list_key = FEATURE_KEYS_KEY
    _writer = "VOLTA's convert_*_lmdb.py"

    def __init__(self, path: str | os.PathLike, skip_bad: bool = False, feature_dim: int | None = VOLTA_FEATURE_DIM,
                 num_classes: int | None = VOLTA_NUM_CLASSES):
        self.feature_dim, self.num_classes = feature_dim, num_classes
        super().__init__(path, skip_bad)
        self._key_set = set(self._keys)

    def keys(self) -> list[str]:
        """The image ids, in the LMDB's ``keys`` order."""
        return [_key_text(k) for k in self._keys]

    def __contains__(self, image_id: object) -> bool:
        return self._key(image_id) in self._key_set

    @staticmethod
    def _key(image_id: object) -> bytes:
        return image_id if isinstance(image_id, bytes) else str(image_id).encode()

    def _parse(self, txn: lmdb.Transaction, key: bytes) -> RegionFeatures:
        raw = self._get(txn, key)
        where = f"{self.path}: record {_key_text(key)!r}"
        try:
            row = safe_pickle_loads(raw)
        except Exception as e:  # noqa: BLE001 - pickle raises many types on corrupt bytes
            raise BadRecord(f"{where}: cannot decode the value ({type(e).__name__}: {e})") from e
        try:
            return parse_feature_row(row, self.path, _key_text(key), self.feature_dim, self.num_classes)
        except BadRecord:
            raise
        except ValueError as e:
            raise BadRecord(f"{where}: {e}") from e

    def __getitem__(self, image_id: object) -> RegionFeatures:
        key = self._key(image_id)
        with self.env.begin(write=False) as txn:
            if key not in self._key_set and txn.get(key) is None:
                raise KeyError(f"{self.path}: no image {_key_text(key)!r}")
            return self._parse(txn, key)

    def __iter__(self) -> Iterator[RegionFeatures]:
        return self._iter(self._parse)


def read_feature_lmdb(path: str | os.PathLike, skip_bad: bool = False, feature_dim: int | None = VOLTA_FEATURE_DIM,
                      num_classes: int | None = VOLTA_NUM_CLASSES) -> Iterator[RegionFeatures]:
    """Iterate the :class:`RegionFeatures` of a VOLTA per-image feature LMDB in ``keys`` order."""
    with FeatureLMDB(path, skip_bad, feature_dim, num_classes) as reader:
        yield from reader
