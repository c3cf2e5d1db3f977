"""The image store's directory: its manifest, its files, and the dataset info the pipelines read.

A prepared image store is a directory (``<out>/<name>/<config>/1.0.0``, like a TFDS dataset's) holding:

- ``imagestore.json``: the manifest (``MANIFEST``): ``format`` (``FORMAT``), ``name``, ``config``,
  ``version``, ``description``, ``features_dtype`` (``float32`` or ``float16``), ``regions`` (the
  ``RegionSpec`` as a dict), ``splits`` (split -> ``{"images": N, "captions": M}``) and ``metadata`` (what a
  prepared pair dataset's ``metadata.json`` holds: ``regions``, the source, ``words`` for the synthetic world,
  the ``skipped`` counts, ...);
- per split ``<split>-images.array_record`` (one record per image) and ``<split>-captions.array_record`` (one
  record per caption, naming its image's row), both ArrayRecord with ``group_size:1`` (one record per chunk,
  so a read touches only its own record) and no compression.

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


def images_file(split: str) -> str:
    return f"{split}-images.array_record"


def captions_file(split: str) -> str:
    return f"{split}-captions.array_record"


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
    """A split's size as ``jaxvl prepare`` prints it: ``num_examples`` captions over ``num_images`` images."""

    num_examples: int
    num_images: int


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
        splits = {name: SplitInfo(num_examples=int(s["captions"]), num_images=int(s["images"]))
                  for name, s in manifest["splits"].items()}
        full_name = f"{manifest['name']}/{manifest['config']}/{manifest['version']}"
        metadata = dict(manifest["metadata"])
        metadata["regions"] = dict(manifest["regions"])
    except (OSError, ImportError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable image-store manifest ({type(e).__name__}: {e})") from e
    return ImageStoreInfo(full_name=full_name, metadata=metadata, splits=splits,
                          features_dtype=manifest["features_dtype"], manifest=manifest)


def write_manifest(directory: str, manifest: Mapping[str, Any]) -> None:
    """Writes ``manifest`` (with ``format`` set) as the directory's ``imagestore.json``."""
    with open(os.path.join(directory, MANIFEST), "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, **manifest}, f, indent=1)
