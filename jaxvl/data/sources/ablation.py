"""The cross-modal ablation source ``flickr30k-entities``: phrases with their image's regions, by image id.

The regions come from a per-image feature store found through a ``FeatureLookup``: a feature LMDB
(``FeatureLMDB``), a directory of ``<image_id>.npz`` files (``NpzFeatureReader``), or a TSV, of which
only the split's images are held in memory. The source string is documented in ``jaxvl.data.sources``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from jaxvl.data.records import AblationExample, BadRecord, RegionFeatures
from jaxvl.data.sources.base import (
    ParsedSource,
    Prepared,
    Skips,
    SourceError,
    config_name,
    path_stem,
    source_metadata,
)
from jaxvl.data.sources.regions import RegionOptions, SpecProbe, check_spec, feature_format, skip_or_raise


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


def flickr30k_entities_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``flickr30k-entities:ROOT,features=FEATURES[,split=val][,format=...]`` as ``AblationPhrases``."""
    from jaxvl.data.builders.ablation import AblationConfig, AblationPhrases
    from jaxvl.data.readers.flickr30k_entities import Flickr30kEntities

    opts, skips = RegionOptions.parse(src), Skips()
    root = src.existing_path(src.path, "Flickr30k Entities root", "dir")
    features = src.existing_path(src.require("features"), "features")
    split = src.options.get("split", "val")
    try:
        fmt = feature_format(features, src.options.get("format"))
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

    def phrases() -> Iterator[tuple[AblationExample, RegionFeatures]]:
        entities = Flickr30kEntities(root, split, skip_bad=skip_bad)
        last_id, last = None, None
        for ex in entities:
            if ex.image_id != last_id:
                last_id, last = ex.image_id, None
                try:
                    rec = lookup.get(ex.image_id)
                    if rec is None:
                        raise BadRecord(f"{features}: no features for image {ex.image_id!r} (phrase {ex.phrase!r} "
                                        f"of {entities.sentence_path(ex.image_id)})")
                    last = check_spec(rec, spec, features)
                except BadRecord as e:
                    skip_or_raise(e, skip_bad, skips, f"{split}: images without usable features in {features}")
            if last is None:
                skips.add(f"{split}: phrases whose image has no usable features")
                continue
            yield ex, last
        skips.add(f"{split}: bad annotation files or caption lines in {root}", entities.skipped)

    config = AblationConfig(name=config_name(src, split, path_stem(features)), regions=spec, splits={split: phrases},
                            metadata=source_metadata(src, skips, skip_bad, root=root, features=features, format=fmt),
                            description=f"Flickr30k Entities {split} phrases from {root}, features {features}")
    return Prepared([AblationPhrases(config=config, data_dir=out, file_format="array_record")], skips)
