"""The image store's directory: its manifest, its files, and the dataset info the pipelines read.

A prepared image store is a directory (``<out>/<name>/<config>/1.0.0``, like a TFDS dataset's) holding:

- ``imagestore.json``: the manifest (``MANIFEST``): ``format`` (``FORMAT``), ``name``, ``config``,
  ``version``, ``description``, ``features_dtype`` (``float32`` or ``float16``), ``regions`` (the
  ``RegionSpec`` as a dict), ``splits`` (split -> ``{"images": N, "captions": M}``, plus ``"shards": [[n, m],
  ...]`` when the split was written in shards) and ``metadata`` (what a prepared pair dataset's
  ``metadata.json`` holds: ``regions``, the source, ``words`` for the synthetic world, the ``skipped`` counts, ...);
- per split ``<split>-images.array_record`` (one record per image) and ``<split>-captions.array_record`` (one
  record per caption, naming its image's row), both ArrayRecord with ``group_size:1`` (one record per chunk,
  so a read touches only its own record) and no compression. A split written in S shards (``jaxvl prepare
  --workers``: ``jaxvl.data.imagestore.parallel``) has S such pairs of files, ``<split>-images.array_record-
  00003-of-00008`` and ``<split>-captions.array_record-00003-of-00008`` (``shard_files``): each shard is a
  store of its own (its captions name rows of its own images file, ``n`` images and ``m`` captions), and the
  split is the shards in order.

``ImageStoreInfo`` stands in for ``tfds.core.DatasetInfo``: the pipelines read its ``full_name`` and
``metadata``; ``jaxvl prepare`` its ``splits`` (``num_examples``: captions).

Reading goes through ``etils.epath``, so the directory may be a local or shared-filesystem path or an object-store
URL such as ``gs://bucket/dir`` (kept as it is, never made absolute): epath reads the manifest of a ``gs://`` store
through ``gcsfs`` (``pip install gcsfs``) or TensorFlow's file system; ``jaxvl.data.imagestore.source`` hands the
table URLs to ArrayRecord, whose own reader opens ``gs://`` objects. Writing is local only (``write_manifest``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

from etils import epath

MANIFEST = "imagestore.json"
FORMAT = "jaxvl-imagestore/1"
VERSION = "1.0.0"
FEATURES_DTYPES = ("float32", "float16")
WRITER_OPTIONS = "group_size:1,uncompressed"
"""ArrayRecord writer options of both tables: one record per chunk, raw bytes (float features barely compress: on
ctrl-size synthetic regions zstd saved 11% and made a random read 4x slower; BENCHMARKS.md, "One record per
image")."""


def images_file(split: str, shard: int | None = None, shards: int | None = None) -> str:
    """The images table of ``split``, or of its shard ``shard`` of ``shards`` (module doc)."""
    return f"{split}-images.array_record{shard_suffix(shard, shards)}"


def captions_file(split: str, shard: int | None = None, shards: int | None = None) -> str:
    """The captions table of ``split``, or of its shard ``shard`` of ``shards`` (module doc)."""
    return f"{split}-captions.array_record{shard_suffix(shard, shards)}"


def shard_suffix(shard: int | None, shards: int | None) -> str:
    """``-00003-of-00008`` for shard 3 of 8 (TFDS's file naming); empty for an unsharded split."""
    if shard is None:
        return ""
    if shards is None or not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards}")
    return f"-{shard:05d}-of-{shards:05d}"


def store_path(path: str | os.PathLike) -> epath.Path:
    """``path`` (a file or directory of a store: local, shared filesystem or ``gs://``-style URL) as an epath."""
    return epath.Path(os.fspath(path))


def is_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file; ``ValueError`` naming it when its URL scheme has no file-system backend here."""
    try:
        return store_path(path).is_file()
    except ImportError as e:  # epath's fsspec backend without gcsfs (or s3fs, ...) for the scheme
        raise ValueError(f"{os.fspath(path)}: cannot read this URL here ({e})") from e


def is_image_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory holding an image-store manifest (``gs://`` URLs too: module doc)."""
    return is_file(os.path.join(os.fspath(path), MANIFEST))


@dataclasses.dataclass(frozen=True)
class SplitInfo:
    """A split's size as ``jaxvl prepare`` prints it: ``num_examples`` captions over ``num_images`` images, and
    ``shards``: ``(images, captions)`` per shard file pair, ``()`` for an unsharded split."""

    num_examples: int
    num_images: int
    shards: tuple[tuple[int, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class TableFiles:
    """One pair of tables of a split (the split itself, or one of its shards) and their record counts."""

    images: str
    captions: str
    num_images: int
    num_captions: int


def shard_files(directory: str, split: str, info: SplitInfo) -> list[TableFiles]:
    """The table files of ``split`` in order (one pair for an unsharded split), paths joined as strings."""
    if not info.shards:
        return [TableFiles(os.path.join(directory, images_file(split)), os.path.join(directory, captions_file(split)),
                           info.num_images, info.num_examples)]
    total = len(info.shards)
    return [TableFiles(os.path.join(directory, images_file(split, i, total)),
                       os.path.join(directory, captions_file(split, i, total)), n, m)
            for i, (n, m) in enumerate(info.shards)]


def split_entry(shards: list[tuple[int, int]]) -> dict[str, Any]:
    """A split's manifest entry for ``(images, captions)`` per shard (``shards`` listed when there are several
    files: a parallel build, even of one shard)."""
    return {"images": sum(n for n, _ in shards), "captions": sum(m for _, m in shards),
            "shards": [list(s) for s in shards]}


@dataclasses.dataclass(frozen=True)
class ImageStoreInfo:
    """What the pipelines and ``jaxvl prepare`` read off a prepared image store (module doc)."""

    full_name: str
    metadata: Mapping[str, Any]
    splits: Mapping[str, SplitInfo]
    features_dtype: str
    manifest: Mapping[str, Any] = dataclasses.field(repr=False)


def read_manifest(directory: str | os.PathLike) -> ImageStoreInfo:
    """The manifest of the image store in ``directory`` (a path or URL: module doc); ``ValueError`` naming the file
    when it is unusable."""
    path = os.path.join(os.fspath(directory), MANIFEST)
    try:
        manifest = json.loads(store_path(path).read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        if manifest.get("features_dtype") not in FEATURES_DTYPES:
            raise ValueError(f"features_dtype {manifest.get('features_dtype')!r}, expected one of {FEATURES_DTYPES}")
        splits = {name: _split_info(name, s) for name, s in manifest["splits"].items()}
        full_name = f"{manifest['name']}/{manifest['config']}/{manifest['version']}"
        metadata = dict(manifest["metadata"])
        metadata["regions"] = dict(manifest["regions"])
    except (OSError, ImportError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable image-store manifest ({type(e).__name__}: {e})") from e
    return ImageStoreInfo(full_name=full_name, metadata=metadata, splits=splits,
                          features_dtype=manifest["features_dtype"], manifest=manifest)


def _split_info(name: str, entry: Mapping[str, Any]) -> SplitInfo:
    shards = tuple((int(n), int(m)) for n, m in entry.get("shards", ()))
    info = SplitInfo(num_examples=int(entry["captions"]), num_images=int(entry["images"]), shards=shards)
    held = (sum(n for n, _ in shards), sum(m for _, m in shards))
    if shards and held != (info.num_images, info.num_examples):
        raise ValueError(f"split {name!r}: its shards hold {held[0]} images and {held[1]} captions, but it lists "
                         f"{info.num_images} and {info.num_examples}")
    return info


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
    """Writes ``manifest`` (with ``format`` set) as the directory's ``imagestore.json``."""
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=1)
