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
  :func:`read_cc_lmdb` / :class:`ConceptualCaptionsLMDB` yield :class:`CaptionPair`; ``reader[i]`` reads record
  ``i`` alone (what :mod:`jaxvl.data.inplace` serves to Grain). The key list is read once, when a reader opens;
  tensorpack's numbered keys are then held as their count (:class:`NumberedKeys`), not as millions of ``bytes``.
* **Per-image feature LMDB** (e.g. Flickr30k's ``flickr30k_feat.lmdb``, ``data/flickr30k/convert_flickr30k_lmdb.py``):
  key ``str(img_id).encode()`` -> ``pickle.dumps`` of a csv ``DictReader`` row whose values are strings
  (``img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf, num_boxes, boxes, features, cls_prob,
  attrs, classes``; arrays as base64 of raw float32 / int64 bytes), plus ``b'keys'`` -> pickled list of id bytes.
  Rows are ``collections.OrderedDict`` pickled with protocol 3 (Python 3.6) or ``dict`` with protocol >= 4.
  :class:`FeatureLMDB` gives random access by image id, :func:`read_feature_lmdb` iterates.

Safety: an LMDB from the internet must never reach ``pickle.loads``; the values are decoded by
:mod:`jaxvl.data.readers.volta_records` (restricted msgpack-numpy and pickle decoding, documented there), whose
names this module re-exports. This module holds the LMDB side: opening, the key lists, one shared environment per
file and process, iteration and random access. A file cut short is refused when it is opened (its size against
what its meta page says it uses), before LMDB's memory map could read past its end and kill the process (SIGBUS).

Every record passes :func:`jaxvl.data.records.check_region_features`; a bad one raises :class:`BadRecord` naming
the file and the record, or with ``skip_bad=True`` is counted, logged and skipped (``reader.errors.skipped``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import lmdb

from jaxvl.data.readers.safe_pickle import (
    SafeUnpickler,
    UnsafeData,
    array_from_bytes,
    is_pickle,
    safe_dtype,
    safe_pickle_loads,
)
from jaxvl.data.readers.volta_records import (
    CC_FIELDS,
    VOLTA_FEATURE_DIM,
    VOLTA_NUM_CLASSES,
    loads_value,
    msgpack_loads,
    parse_cc_datapoint,
    parse_feature_row,
)
from jaxvl.data.records import BadRecord, CaptionPair, RecordErrors, RegionFeatures

__all__ = [
    "CC_FIELDS", "CC_KEYS_KEY", "FEATURE_KEYS_KEY", "VOLTA_FEATURE_DIM", "VOLTA_NUM_CLASSES", "ConceptualCaptionsLMDB",
    "FeatureLMDB", "NumberedKeys", "SafeUnpickler", "UnsafeData", "array_from_bytes", "compact_keys", "is_pickle",
    "loads_value", "msgpack_loads", "open_lmdb", "parse_cc_datapoint", "parse_feature_row", "read_caption_json",
    "read_cc_lmdb", "read_feature_lmdb", "safe_dtype", "safe_pickle_loads",
]

log = logging.getLogger(__name__)

CC_KEYS_KEY = b"__keys__"
FEATURE_KEYS_KEY = b"keys"

# ---------------------------------------------------------------------------------------------------------------
# LMDB plumbing


def open_lmdb(path: str | os.PathLike) -> lmdb.Environment:
    """Open an LMDB read-only, as a directory (``data.mdb`` inside) or as a single file (``subdir=False``).

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` naming the file for anything that is not a
    complete LMDB (not an LMDB at all, or truncated: see :func:`_check_not_truncated`).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such LMDB file or directory")
    subdir = os.path.isdir(path)
    data_file = os.path.join(path, "data.mdb") if subdir else path
    if subdir and not os.path.exists(data_file):
        raise ValueError(f"{path}: a directory without data.mdb is not an LMDB")
    if os.path.getsize(data_file) == 0:
        raise ValueError(f"{data_file}: the file is empty (0 bytes), not an LMDB")
    try:
        env = lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False, meminit=False,
                        max_readers=256)
    except lmdb.Error as e:
        raise ValueError(f"{path}: cannot open as an LMDB ({e})") from e
    try:
        _check_not_truncated(env, data_file)
    except ValueError:
        env.close()
        raise
    return env


def _check_not_truncated(env: lmdb.Environment, data_file: str) -> None:
    """``ValueError`` naming ``data_file`` when it is shorter than its own meta page says it is.

    LMDB reads its pages through a memory map, so a read past the end of a file that was cut short (an
    interrupted copy or download) kills the process with SIGBUS instead of raising. The newest of the two meta
    pages (pages 0 and 1, which ``lmdb.open`` has already read with ``pread``) records the last page the
    database uses (``last_pgno``) and the page size (``psize``): a sound file holds at least
    ``(last_pgno + 1) * psize`` bytes. Nothing beyond the meta pages is read here.
    """
    pages, page_size = env.info()["last_pgno"] + 1, env.stat()["psize"]
    needed, size = pages * page_size, os.path.getsize(data_file)
    if size < needed:
        raise ValueError(f"{data_file}: truncated LMDB: the file has {size} bytes but its header says it uses "
                         f"{pages} pages of {page_size} bytes ({needed} bytes); it was cut short (an interrupted "
                         "copy or download?)")


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


class NumberedKeys(Sequence[bytes]):
    """tensorpack's key list ``[b'%08d' % i for i in range(n)]`` held as ``n`` alone.

    ``LMDBSerializer`` numbers its records, so a Conceptual Captions store of 3M pairs would otherwise keep 3M
    ``bytes`` objects (about 150 MB) in every process that reads it and in every pickle sent to a Grain worker.
    """

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> bytes:  # type: ignore[override] - slices are not needed
        i = index + self.n if index < 0 else index
        if not 0 <= i < self.n:
            raise IndexError(f"record index {index} out of range for {self.n} records")
        return b"%08d" % i

    def __iter__(self) -> Iterator[bytes]:
        return (b"%08d" % i for i in range(self.n))


def compact_keys(keys: list[bytes]) -> Sequence[bytes]:
    """``NumberedKeys(len(keys))`` when ``keys`` are tensorpack's numbering, else ``keys`` unchanged."""
    if all(k == b"%08d" % i for i, k in enumerate(keys)):
        return NumberedKeys(len(keys))
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
        self._keys = compact_keys(self._keys)

    def key(self, index: int) -> str:
        """The LMDB key of record ``index`` as text (``'00000012'``), for messages naming a record."""
        return _key_text(self._keys[index])

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
