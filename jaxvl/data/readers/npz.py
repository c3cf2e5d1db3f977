"""Per-image ``.npz`` feature files in a directory -> ``RegionFeatures`` keyed by file stem.

Two layouts are read (R = number of regions, D = feature size):

- bottom-up-attention.pytorch (MILVLG ``extract_features.py``, ``save_roi_features``):
  ``x`` float32 [R, D], ``bbox`` float32 [R, 4] pixel x1y1x2y2, ``num_bbox`` int, ``image_h`` /
  ``image_w`` int, and ``info``: a pickled dict ``{image_id, image_h, image_w, num_boxes, objects_id,
  objects_conf[, attrs_id, attrs_conf]}``. There ``objects_id`` is the argmax over *all* 1601 class
  scores, background (index 0) included, and ``attrs_id`` likewise over 401 attribute scores; with
  ``info_ids_include_background=True`` (the default) they are shifted to VOLTA's K-space (id - 1), and
  a region whose argmax was the background gets id -1 and confidence 0. The file carries no
  ``cls_prob``.
- flat (``features`` or ``x``; ``boxes`` or ``bbox``; ``image_h``/``img_h``/``image_height`` and the
  widths alike; optional ``num_boxes``/``num_bbox``, ``cls_prob`` [R, K+1], ``objects_id`` (or
  ``objects``), ``objects_conf``, ``attrs_id``, ``attrs_conf``): ids already K-space, as in the TSV.

Top-level keys win over ``info`` keys. Floating arrays of another width (float16/64) are cast to
float32; integer or object features are refused.

``info`` is a pickle inside the npz. It is never passed to ``pickle.loads``/``np.load(allow_pickle)``:
:func:`jaxvl.data.readers.safe_pickle.safe_pickle_load` accepts only plain containers, numbers, strings and plain
numeric numpy arrays (object arrays too, as ``np.save`` writes the dict as one), rebuilt without running numpy's
unpickling code, and refuses any other global (``os.system``, ``builtins.eval``, ...) before anything runs.

Bad files (unreadable zip, missing keys, wrong shapes/dtypes, NaN/Inf, boxes outside the image,
``num_bbox`` disagreeing with the arrays, a forbidden pickle) raise ``BadRecord`` naming the file and
image id; ``skip_bad=True`` logs and counts them while iterating.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxvl.data.readers.safe_pickle import UnsafeData, safe_pickle_load
from jaxvl.data.records import BadRecord, RecordErrors, RegionFeatures, check_region_features

FEATURE_KEYS = ("features", "x")
BOX_KEYS = ("boxes", "bbox")
NUM_BOX_KEYS = ("num_boxes", "num_bbox")
HEIGHT_KEYS = ("image_h", "img_h", "image_height")
WIDTH_KEYS = ("image_w", "img_w", "image_width")
OBJECT_KEYS = ("objects_id", "objects")


def safe_load_npy_object(data: bytes) -> Any:
    """The object stored in a ``.npy`` buffer whose dtype is ``object`` (numpy writes a pickle there).

    Non-object arrays are returned as arrays. The pickle goes through :func:`safe_pickle_load` (object arrays
    allowed, ``encoding="latin1"`` for Python 2 files); raises :class:`UnsafeData` on a forbidden global.
    """
    f = io.BytesIO(data)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"unsupported .npy version {version}")
    if not dtype.hasobject:
        return np.load(io.BytesIO(data), allow_pickle=False)
    arr = safe_pickle_load(f, encoding="latin1", allow_object_arrays=True)
    if isinstance(arr, np.ndarray) and arr.shape == () and arr.dtype == object:
        return arr.item()
    return arr


def _load_members(path: str, image_id: str) -> dict[str, Any]:
    """Every member of the npz: plain arrays via ``np.load(allow_pickle=False)``, object ones safely."""
    where = f"{path}: record {image_id!r}"
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if not member.endswith(".npy"):
                    continue
                data = zf.read(member)
                try:
                    out[member[:-4]] = np.load(io.BytesIO(data), allow_pickle=False)
                except ValueError:  # an object array
                    out[member[:-4]] = safe_load_npy_object(data)
    except (pickle.UnpicklingError, UnsafeData) as e:
        raise BadRecord(f"{where}: {e}") from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, pickle.PickleError, TypeError, AttributeError,
            IndexError, KeyError) as e:  # a corrupt pickle can raise any of these from its opcodes
        raise BadRecord(f"{where}: not a readable .npz file ({type(e).__name__}: {e})") from None
    if not out:
        raise BadRecord(f"{where}: the .npz file holds no arrays")
    return out


def _pick(members: dict[str, Any], info: dict[str, Any], keys: tuple[str, ...]) -> tuple[Any, bool]:
    """The first of ``keys`` present at top level, else in ``info``; and whether it came from ``info``."""
    for k in keys:
        if k in members:
            return members[k], False
    for k in keys:
        if k in info:
            return info[k], True
    return None, False


def _float_array(value: Any, where: str, name: str, ndim: int) -> np.ndarray:
    arr = np.asarray(value)
    if not np.issubdtype(arr.dtype, np.floating):
        raise BadRecord(f"{where}: {name} must be a floating-point array; got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise BadRecord(f"{where}: {name} must have {ndim} dimensions; got shape {arr.shape}")
    return arr.astype(np.float32, copy=False)


def _int_scalar(value: Any, where: str, name: str) -> int:
    arr = np.asarray(value)
    if arr.size == 1 and (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        x = arr.reshape(())[()]
        if np.isfinite(x) and float(x) == int(x):
            return int(x)
    raise BadRecord(f"{where}: {name} must be one integer; got {arr.dtype} {arr.shape}: {str(value)[:40]}")


def _vector(value: Any, where: str, name: str, dtype: type) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.number)):
        raise BadRecord(f"{where}: {name} must be a numeric vector; got {arr.dtype} {arr.shape}")
    if np.issubdtype(dtype, np.integer) and not np.issubdtype(arr.dtype, np.integer):
        raise BadRecord(f"{where}: {name} must hold integers; got {arr.dtype}")
    return arr.astype(dtype)


def parse_npz(path: str | os.PathLike, image_id: str | None = None, feature_dim: int | None = None,
              num_classes: int | None = None, info_ids_include_background: bool = True) -> RegionFeatures:
    """One ``.npz`` file -> checked ``RegionFeatures`` (``image_id`` defaults to the file stem)."""
    path = os.fspath(path)
    if image_id is None:
        image_id = os.path.splitext(os.path.basename(path))[0]
    where = f"{path}: record {image_id!r}"
    members = _load_members(path, image_id)
    info = members.get("info")
    if info is None:
        info = {}
    elif not isinstance(info, dict):
        raise BadRecord(f"{where}: 'info' must be a dict; got {type(info).__name__}")

    feats, _ = _pick(members, info, FEATURE_KEYS)
    boxes, _ = _pick(members, info, BOX_KEYS)
    h, _ = _pick(members, info, HEIGHT_KEYS)
    w, _ = _pick(members, info, WIDTH_KEYS)
    for name, value, keys in (("features", feats, FEATURE_KEYS), ("boxes", boxes, BOX_KEYS),
                              ("image height", h, HEIGHT_KEYS), ("image width", w, WIDTH_KEYS)):
        if value is None:
            raise BadRecord(f"{where}: no {name} (looked for {list(keys)}; the file has {sorted(members)})")
    feats = _float_array(feats, where, "features", 2)
    boxes = _float_array(boxes, where, "boxes", 2)
    n, _ = _pick(members, info, NUM_BOX_KEYS)
    if n is not None and (n := _int_scalar(n, where, "num_boxes")) != feats.shape[0]:
        raise BadRecord(f"{where}: num_boxes {n} disagrees with features of shape {feats.shape}")

    cls_prob, _ = _pick(members, info, ("cls_prob",))
    if cls_prob is not None:
        cls_prob = _float_array(cls_prob, where, "cls_prob", 2)
    objects_id, obj_from_info = _pick(members, info, OBJECT_KEYS)
    objects_conf, _ = _pick(members, info, ("objects_conf",))
    attrs_id, attr_from_info = _pick(members, info, ("attrs_id",))
    attrs_conf, _ = _pick(members, info, ("attrs_conf",))
    objects_id = _vector(objects_id, where, "objects_id", np.int64)
    attrs_id = _vector(attrs_id, where, "attrs_id", np.int64)
    objects_conf = _vector(objects_conf, where, "objects_conf", np.float32)
    attrs_conf = _vector(attrs_conf, where, "attrs_conf", np.float32)
    if info_ids_include_background and "x" in members:  # MILVLG: argmax over scores incl. background 0
        if objects_id is not None and obj_from_info:
            objects_id, objects_conf = _drop_background(objects_id, objects_conf)
        if attrs_id is not None and attr_from_info:
            attrs_id, attrs_conf = _drop_background(attrs_id, attrs_conf)

    rec = RegionFeatures(image_id=image_id, image_h=_int_scalar(h, where, "image height"),
                         image_w=_int_scalar(w, where, "image width"), boxes=boxes, features=feats,
                         cls_prob=cls_prob, objects_id=objects_id, objects_conf=objects_conf, attrs_id=attrs_id,
                         attrs_conf=attrs_conf)
    if objects_id is not None and objects_id.size:
        hi = None if num_classes is None else num_classes - 1
        if objects_id.min() < -1 or (hi is not None and objects_id.max() >= hi):
            raise BadRecord(f"{where}: objects_id out of range: min {int(objects_id.min())}, "
                            f"max {int(objects_id.max())}")
    return check_region_features(rec, path, feature_dim=feature_dim, num_classes=num_classes)


def _drop_background(ids: np.ndarray, conf: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(K+1)-space ids with background 0 -> K-space ids; background rows -> id -1, confidence 0."""
    bg = ids == 0
    ids = ids - 1
    if conf is not None and conf.shape == ids.shape:
        conf = np.where(bg, np.float32(0), conf).astype(np.float32)
    return ids, conf


class NpzFeatureReader:
    """The ``*.npz`` files of one directory (sorted by name), each one image keyed by its stem.

    Iterating yields ``RegionFeatures`` lazily (``skip_bad`` counts and logs bad files instead of
    raising; ``skipped`` holds the count); ``reader[image_id]`` reads one file (always raising).
    """

    def __init__(self, directory: str | os.PathLike, feature_dim: int | None = None,
                 num_classes: int | None = None, skip_bad: bool = False, info_ids_include_background: bool = True):
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            raise FileNotFoundError(f"feature directory not found: {self.directory}")
        self.feature_dim, self.num_classes = feature_dim, num_classes
        self.info_ids_include_background = info_ids_include_background
        self._paths = {os.path.splitext(n)[0]: os.path.join(self.directory, n)
                       for n in sorted(os.listdir(self.directory)) if n.endswith(".npz")}
        self.errors = RecordErrors(self.directory, skip_bad=skip_bad)

    @property
    def image_ids(self) -> list[str]:
        return list(self._paths)

    @property
    def skipped(self) -> int:
        return self.errors.skipped

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, image_id: str) -> bool:
        return str(image_id) in self._paths

    def __getitem__(self, image_id: str) -> RegionFeatures:
        image_id = str(image_id)
        if image_id not in self._paths:
            raise FileNotFoundError(f"{os.path.join(self.directory, image_id + '.npz')}: no such feature file")
        return self._parse(image_id)

    def _parse(self, image_id: str) -> RegionFeatures:
        return parse_npz(self._paths[image_id], image_id, self.feature_dim, self.num_classes,
                         self.info_ids_include_background)

    def __iter__(self) -> Iterator[RegionFeatures]:
        self.errors = RecordErrors(self.directory, skip_bad=self.errors.skip_bad)  # a fresh count per pass
        yield from self.errors.filter(list(self._paths), self._parse)
        self.errors.report()
