"""Writers for small LMDBs in VOLTA's two layouts (our own code, mimicking the byte formats of the originals).

* tensorpack ``LMDBSerializer`` (Conceptual Captions): keys ``b'%08d'``, ``b'__keys__'``; values msgpack with
  ``use_bin_type=True`` and msgpack-numpy's array maps, or pickle (tensorpack >= 0.11).
* VOLTA ``convert_*_lmdb.py`` (per-image features): key ``str(img_id).encode()`` -> pickled csv row of strings
  (base64 arrays), ``b'keys'`` -> pickled list of id bytes.
"""

from __future__ import annotations

import base64
import builtins
import os
import pickle
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import msgpack
import numpy as np

CC_FIELDS = ("features", "cls_prob", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "attr_scores",
             "boxes", "num_boxes", "h", "w", "image_id", "caption")
TSV_FIELDNAMES = ("img_id", "img_h", "img_w", "objects_id", "objects_conf", "attrs_id", "attrs_conf", "num_boxes",
                  "boxes", "features", "cls_prob", "attrs", "classes")


# ------------------------------------------------------------------------------------------------- serializers


def msgpack_numpy_default(obj: Any) -> Any:
    """msgpack ``default`` hook with msgpack-numpy's map layout (object arrays as a pickle, like the original)."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "OV":
            kind, descr = obj.dtype.kind.encode(), obj.dtype.descr
            data = pickle.dumps(obj, protocol=2) if obj.dtype.kind == "O" else obj.tobytes()
        else:
            kind, descr, data = b"", obj.dtype.str, obj.tobytes()
        return {b"nd": True, b"type": descr, b"kind": kind, b"shape": obj.shape, b"data": data}
    if isinstance(obj, np.bool_ | np.number):
        return {b"nd": False, b"type": obj.dtype.str, b"data": obj.tobytes()}
    raise TypeError(f"cannot serialize {type(obj)}")


def dumps_msgpack(obj: Any) -> bytes:
    """tensorpack 0.9's ``dumps_msgpack`` with msgpack-numpy patched in."""
    return msgpack.packb(obj, use_bin_type=True, default=msgpack_numpy_default)


def dumps_pickle(obj: Any) -> bytes:
    """tensorpack 0.11's ``dumps_pickle``."""
    return pickle.dumps(obj, protocol=-1)


SERIALIZERS = {"msgpack": dumps_msgpack, "pickle": dumps_pickle}


def write_lmdb(path: Path, entries: Iterable[tuple[bytes, bytes]], subdir: bool) -> Path:
    """Write raw key/value pairs: one file (+ ``-lock``) when ``subdir`` is False, else a directory."""
    env = lmdb.open(str(path), subdir=subdir, map_size=1 << 27, meminit=False)
    with env.begin(write=True) as txn:
        for k, v in entries:
            txn.put(k, v)
    env.close()
    return path


# ------------------------------------------------------------------------------------------- Conceptual Captions


def cc_datapoint(rng: np.random.Generator, image_id: str, num_boxes: int = 3, feature_dim: int = 8,
                 num_classes: int = 5, num_attrs: int = 4, h: int = 60, w: int = 80, as_str: bool = True,
                 caption: str | None = None) -> list:
    """One datapoint in ``preprocess_cc_train.py``'s field order; scalars as ``str`` like the real files."""
    r = num_boxes
    logits = rng.normal(size=(r, num_classes)).astype(np.float32)
    cls_prob = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    objects_id = cls_prob[:, 1:].argmax(1).astype(np.int64)
    x1 = rng.uniform(0, w / 2, r)
    y1 = rng.uniform(0, h / 2, r)
    boxes = np.stack([x1, y1, x1 + rng.uniform(1, w / 2, r), y1 + rng.uniform(1, h / 2, r)], 1).astype(np.float32)
    attr_scores = rng.uniform(size=(r, num_attrs)).astype(np.float32)
    dp = [rng.normal(size=(r, feature_dim)).astype(np.float32), cls_prob, objects_id,
          cls_prob[np.arange(r), objects_id + 1].astype(np.float32), attr_scores.argmax(1).astype(np.int64),
          attr_scores.max(1).astype(np.float32), attr_scores, boxes, r, h, w, image_id,
          caption if caption is not None else f"a photo number {image_id} with ünïcode"]
    if as_str:
        dp[8:11] = [str(v) for v in dp[8:11]]
    return dp


def tensorpack_entries(datapoints: list, serializer: str = "msgpack") -> dict[bytes, bytes]:
    """The key/value pairs ``LMDBSerializer.save`` writes for ``datapoints``."""
    dumps = SERIALIZERS[serializer]
    keys = [f"{i:08}".encode("ascii") for i in range(len(datapoints))]
    entries = {k: dumps(dp) for k, dp in zip(keys, datapoints, strict=True)}
    entries[b"__keys__"] = dumps(keys)
    return entries


# ------------------------------------------------------------------------------------------- per-image features


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def tsv_row(rng: np.random.Generator, image_id: str, num_boxes: int = 3, feature_dim: int = 8, num_classes: int = 5,
            h: int = 60, w: int = 80, ordered: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """A csv ``DictReader`` row of the 13-column TSV (all values ``str``) and the arrays it encodes."""
    dp = cc_datapoint(rng, image_id, num_boxes, feature_dim, num_classes, 4, h, w)
    arrays = dict(zip(CC_FIELDS[:8], dp[:8], strict=True))
    values = {"img_id": image_id, "img_h": str(h), "img_w": str(w), "objects_id": b64(arrays["objects_id"]),
              "objects_conf": b64(arrays["objects_conf"]), "attrs_id": b64(arrays["attrs_id"]),
              "attrs_conf": b64(arrays["attrs_conf"]), "num_boxes": str(num_boxes), "boxes": b64(arrays["boxes"]),
              "features": b64(arrays["features"]), "cls_prob": b64(arrays["cls_prob"]),
              "attrs": b64(arrays["attr_scores"]), "classes": b64(arrays["cls_prob"][:, 1:])}
    row = (OrderedDict if ordered else dict)((k, values[k]) for k in TSV_FIELDNAMES)
    return row, arrays


def feature_entries(rows: list[tuple[str, Any]], protocol: int = 3) -> dict[bytes, bytes]:
    """The key/value pairs ``convert_flickr30k_lmdb.py`` writes (pickle ``protocol`` 3 = Python 3.6's default)."""
    entries = {str(i).encode(): pickle.dumps(row, protocol=protocol) for i, row in rows}
    entries[b"keys"] = pickle.dumps([str(i).encode() for i, _ in rows], protocol=protocol)
    return entries


# ------------------------------------------------------------------------------------------- hostile pickles


class SystemCall:
    """Pickles as ``os.system('touch <marker>')``."""

    def __init__(self, marker: os.PathLike):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


class EvalCall:
    """Pickles as ``builtins.eval("open(<marker>, 'w').write('x')")``."""

    def __init__(self, marker: os.PathLike):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.eval, (f"open({self.marker!r}, 'w').write('x')",)


# ------------------------------------------------------------------------------------------------- corrupted copies


def corrupt_record(lmdb_file: str | os.PathLike, key: bytes) -> None:
    """Overwrites record ``key`` of a single-file LMDB with bytes no decoder accepts."""
    env = lmdb.open(os.fspath(lmdb_file), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(key, b"\x93not a datapoint")
    env.close()
