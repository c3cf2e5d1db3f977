"""The cross-modal ablation source ``flickr30k-entities``: phrases with their image's regions, by image id.

The regions come from a per-image feature store found through a ``FeatureLookup``: a feature LMDB
(``FeatureLMDB``), a directory of ``<image_id>.npz`` files (``NpzFeatureReader``), or a TSV, of which
only the split's images are held in memory. The source string is documented in ``jaxvl.data.sources``.
``open_flickr30k_inputs`` and ``image_regions`` are shared with the in-place reading of the source
(``jaxvl.data.inplace.flickr30k``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol

from jaxvl.data.records import AblationExample, BadRecord, RegionFeatures
from jaxvl.data.sources.base import (
    ParsedSource,
    Prepared,
    Skips,
    SourceError,
    config_name,
    path_stem,
    source_metadata,
    wants_skip_bad,
)
from jaxvl.data.sources.regions import RegionOptions, SpecProbe, check_spec, feature_format, skip_or_raise

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.common import RegionSpec


class FeatureLookup(Protocol):
    """Per-image regions by id: ``get`` gives None for an image without features, raises ``BadRecord`` for bad ones."""

    path: str

    def get(self, image_id: str) -> RegionFeatures | None: ...


class _IndexedFeatures:
    """The regions of a store with random access by id (``in`` and ``[]``): a feature LMDB or an npz directory."""

    def __init__(self, path: str, reader: object):
        self.path, self.reader = path, reader

    def get(self, image_id: str) -> RegionFeatures | None:
        return self.reader[image_id] if image_id in self.reader else None


class _TsvFeatures:
    """The records of ``image_ids`` from a TSV, read once and held in memory (a TSV has no index)."""

    def __init__(self, path: str, opts: RegionOptions, image_ids: Iterable[str], skip_bad: bool):
        from jaxvl.data.readers.tsv import TsvFeatureReader

        self.path, wanted = path, set(image_ids)
        reader = TsvFeatureReader(path, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes,
                                  skip_bad=skip_bad)
        self.records: dict[str, RegionFeatures] = {}
        for rec in reader:
            if rec.image_id in wanted:
                self.records.setdefault(rec.image_id, rec)
        self.skipped = reader.skipped

    def get(self, image_id: str) -> RegionFeatures | None:
        return self.records.get(image_id)


def open_feature_lookup(path: str, fmt: str, opts: RegionOptions, image_ids: Iterable[str],
                        skip_bad: bool) -> FeatureLookup:
    """The ``FeatureLookup`` of the ``fmt`` store at ``path`` (a TSV keeps only ``image_ids``)."""
    if fmt == "tsv":
        return _TsvFeatures(path, opts, image_ids, skip_bad)
    if fmt == "lmdb":
        from jaxvl.data.readers.volta_lmdb import FeatureLMDB as reader_class
    else:
        from jaxvl.data.readers.npz import NpzFeatureReader as reader_class
    return _IndexedFeatures(path, reader_class(path, feature_dim=opts.feature_dim,
                                               num_classes=opts.reader_num_classes))


@dataclasses.dataclass
class Flickr30kInputs:
    """An opened ``flickr30k-entities`` source: its paths, the split's image ids, the regions by image id and the
    region spec read off the first images. ``jaxvl prepare`` and in-place reading (``jaxvl.data.inplace``) both
    start from it, so both see the same regions at the same sizes."""

    root: str
    features: str
    split: str
    fmt: str
    image_ids: list[str]
    lookup: FeatureLookup
    spec: RegionSpec
    skips: Skips


def flickr30k_features_format(src: ParsedSource) -> tuple[str, str]:
    """The features path of a ``flickr30k-entities`` source and its format (``lmdb``, ``tsv`` or ``npz``)."""
    features = src.existing_path(src.require("features"), "features")
    try:
        return features, feature_format(features, src.options.get("format"))
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e


def open_flickr30k_inputs(src: ParsedSource, skip_bad: bool) -> Flickr30kInputs:
    """Opens a ``flickr30k-entities`` source and reads its region spec off the first images (``probe=``)."""
    from jaxvl.data.readers.flickr30k_entities import Flickr30kEntities

    opts, skips = RegionOptions.parse(src), Skips()
    root = src.existing_path(src.path, "Flickr30k Entities root", "dir")
    features, fmt = flickr30k_features_format(src)
    split = src.options.get("split", "val")
    try:
        image_ids = Flickr30kEntities(root, split).image_ids
        lookup = open_feature_lookup(features, fmt, opts, image_ids, skip_bad)
    except BadRecord:
        raise
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e

    def probed() -> Iterator[RegionFeatures]:
        for image_id in image_ids:
            try:
                rec = lookup.get(image_id)
            except BadRecord:
                continue  # counted (or raised) while writing
            if rec is not None:
                yield rec

    probe = SpecProbe(opts)
    probe.feed(probed())
    spec = probe.spec(f"{features} (images of {root}/{split}.txt)")
    if isinstance(lookup, _TsvFeatures):
        skips.add(f"{split}: bad records in {features}", lookup.skipped)
    return Flickr30kInputs(root, features, split, fmt, image_ids, lookup, spec, skips)


def image_regions(inputs: Flickr30kInputs, image_id: str, phrase: str, sentences: str) -> RegionFeatures:
    """The regions of ``image_id`` held to the spec; ``BadRecord`` naming the store (and the phrase and its
    ``sentences`` file) when it has none, or naming the store and the image when they are bad."""
    rec = inputs.lookup.get(image_id)
    if rec is None:
        raise BadRecord(f"{inputs.features}: no features for image {image_id!r} (phrase {phrase!r} of "
                        f"{sentences})")
    return check_spec(rec, inputs.spec, inputs.features)


def flickr30k_entities_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``flickr30k-entities:ROOT,features=FEATURES[,split=val][,format=...][,skip_bad=1]`` as ``AblationPhrases``."""
    from jaxvl.data.builders.ablation import AblationConfig, AblationPhrases
    from jaxvl.data.readers.flickr30k_entities import Flickr30kEntities

    skip_bad = wants_skip_bad(src, skip_bad)
    inputs = open_flickr30k_inputs(src, skip_bad)
    root, features, split, skips = inputs.root, inputs.features, inputs.split, inputs.skips

    def phrases() -> Iterator[tuple[AblationExample, RegionFeatures]]:
        entities = Flickr30kEntities(root, split, skip_bad=skip_bad)
        last_id, last = None, None
        for ex in entities:
            if ex.image_id != last_id:
                last_id, last = ex.image_id, None
                try:
                    last = image_regions(inputs, ex.image_id, ex.phrase, entities.sentence_path(ex.image_id))
                except BadRecord as e:
                    skip_or_raise(e, skip_bad, skips, f"{split}: images without usable features in {features}")
            if last is None:
                skips.add(f"{split}: phrases whose image has no usable features")
                continue
            yield ex, last
        skips.add(f"{split}: bad annotation files or caption lines in {root}", entities.skipped)

    config = AblationConfig(name=config_name(src, split, path_stem(features)), regions=inputs.spec,
                            splits={split: phrases},
                            metadata=source_metadata(src, skips, skip_bad, root=root, features=features,
                                                     format=inputs.fmt),
                            description=f"Flickr30k Entities {split} phrases from {root}, features {features}")
    return Prepared([AblationPhrases(config=config, data_dir=out, file_format="array_record")], skips)
