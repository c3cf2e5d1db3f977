"""The pretraining-pair sources: ``synthetic``, ``volta-cc`` (VOLTA's CC LMDBs) and ``tsv`` (+ caption json).

Each factory returns ``PretrainPairs`` builders (``synthetic`` also its ablation twin), or with
``layout=images`` the image store writing their pairs (``jaxvl.data.sources.layout``); the source
strings are documented in ``jaxvl.data.sources``. ``cc_lmdb_paths``, ``cc_reader`` and ``cc_region_spec``
are shared with the in-place reading of ``volta-cc`` (``jaxvl.data.inplace``), so both paths see the same
records at the same region sizes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from jaxvl.data.records import BadRecord, CaptionPair, RegionFeatures
from jaxvl.data.sources.base import (
    ParsedSource,
    Prepared,
    Skips,
    SourceError,
    bind_split,
    config_name,
    path_stem,
    source_metadata,
    wants_skip_bad,
)
from jaxvl.data.sources.layout import LayoutOptions, split_layout_knobs
from jaxvl.data.sources.regions import RegionOptions, SpecProbe, fits_spec, skip_or_raise

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.builders.common import RegionSpec
    from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB

log = logging.getLogger(__name__)

CC_TRAIN_LMDB, CC_VAL_LMDB = "training_feat_all.lmdb", "validation_feat_all.lmdb"
"""VOLTA's names of the Conceptual Captions LMDBs (``data/conceptual_captions/``)."""


def synthetic_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``synthetic[:key=value,...]``: both synthetic-world datasets (``skip_bad`` has nothing to skip); with
    ``layout=images`` the pairs go to an image store (``features_dtype=``), the phrases as before."""
    from jaxvl.data.builders.synthetic import parse_knobs, synthetic_builders, synthetic_config

    knobs, layout_options = split_layout_knobs(src.args)
    layout = LayoutOptions.parse(src, layout_options)
    pairs, *others = synthetic_builders(synthetic_config(**parse_knobs(knobs)), out)
    return Prepared([layout.builder(pairs, out), *others])


# ---------------------------------------------------------------------------------------------- volta-cc


def cc_lmdb_paths(src: ParsedSource) -> dict[str, str]:
    """Split -> LMDB path of a ``volta-cc`` source (a directory of VOLTA's LMDBs or an LMDB itself)."""
    path = src.existing_path(src.path, "LMDB")
    paths = {"train": path}
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "data.mdb")):
        train, val = os.path.join(path, CC_TRAIN_LMDB), os.path.join(path, CC_VAL_LMDB)
        if not os.path.exists(train):
            raise src.fail(f"{path} is neither an LMDB (no data.mdb) nor a directory holding {CC_TRAIN_LMDB}")
        paths["train"] = train
        if os.path.exists(val):
            paths["val"] = val
    if "val" in src.options:
        paths["val"] = src.existing_path(src.options["val"], "val LMDB")
    return paths


def cc_reader(src: ParsedSource, path: str, skip_bad: bool) -> ConceptualCaptionsLMDB:
    """The reader of one ``volta-cc`` LMDB with the source's region checks; ``SourceError`` if it cannot open."""
    from jaxvl.data.readers.volta_lmdb import ConceptualCaptionsLMDB

    opts = RegionOptions.parse(src)
    try:
        return ConceptualCaptionsLMDB(path, skip_bad, feature_dim=opts.feature_dim,
                                      num_classes=opts.reader_num_classes)
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e


def cc_region_spec(src: ParsedSource, paths: dict[str, str], skip_bad: bool) -> RegionSpec:
    """The region spec of a ``volta-cc`` source, read off the first records of every split (``probe=``)."""
    probe = SpecProbe(RegionOptions.parse(src))
    for path in paths.values():
        with cc_reader(src, path, skip_bad) as r:
            probe.feed(r, lambda pair: pair.regions)
    return probe.spec(paths["train"])


def volta_cc_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``volta-cc:LMDB[,val=LMDB]``: VOLTA's Conceptual Captions LMDBs as ``PretrainPairs`` (train / val).

    ``jaxvl prepare`` writes them as ArrayRecord; a pretraining config's ``data.dataset`` reads them in place
    instead (``jaxvl.data.inplace``), with the same paths, reader and region spec.
    """
    from jaxvl.data.builders.pretrain import PretrainConfig, PretrainPairs

    skips, skip_bad = Skips(), wants_skip_bad(src, skip_bad)
    layout = LayoutOptions.parse(src)
    paths = cc_lmdb_paths(src)
    spec = cc_region_spec(src, paths, skip_bad)

    def pairs(split: str, path: str) -> Iterator[CaptionPair]:
        with cc_reader(src, path, skip_bad) as r:
            what = f"{split}: records not fitting the region sizes in {path}"
            yield from (pair for pair in r if fits_spec(pair.regions, spec, path, skip_bad, skips, what))
            skips.add(f"{split}: bad records in {path}", r.errors.skipped)

    config = PretrainConfig(name=config_name(src, path_stem(paths["train"])), regions=spec,
                            splits={split: bind_split(pairs, split, path) for split, path in paths.items()},
                            metadata=source_metadata(src, skips, skip_bad, **paths),
                            description=f"VOLTA Conceptual Captions LMDBs {paths}")
    pairs_builder = PretrainPairs(config=config, data_dir=out, file_format="array_record")
    return Prepared([layout.builder(pairs_builder, out, skip_bad, skips)], skips)


# ---------------------------------------------------------------------------------------------- tsv


def tsv_files(src: ParsedSource) -> dict[str, tuple[str, str]]:
    """Split -> (features TSV, captions JSON) of a ``tsv`` source; ``SourceError`` naming a missing file or option."""
    files = {"train": (src.existing_path(src.path, "features", "file"),
                       src.existing_path(src.require("captions"), "captions", "file"))}
    if "val" in src.options:
        files["val"] = (src.existing_path(src.options["val"], "val features", "file"),
                        src.existing_path(src.options.get("val_captions", src.options["captions"]), "val captions",
                                          "file"))
    elif "val_captions" in src.options:
        raise src.fail("val_captions= without val=")
    return files


def tsv_reader(opts: RegionOptions, path: str, skip_bad: bool, fieldnames: tuple[str, ...] | None = None) -> Any:
    """A ``TsvFeatureReader`` of ``path`` checking the source's feature size and class count."""
    from jaxvl.data.readers.tsv import TsvFeatureReader

    return TsvFeatureReader(path, fieldnames, feature_dim=opts.feature_dim, num_classes=opts.reader_num_classes,
                            skip_bad=skip_bad)


def captioned_pairs(records: Iterable[tuple[int, RegionFeatures]], by_image: Mapping[str, Any], split: str,
                    features: str, captions_path: str, spec: RegionSpec, skip_bad: bool, skips: Skips,
                    seen: set[str]) -> Iterator[tuple[str, CaptionPair]]:
    """``(line, record)``s of a features TSV joined to their captions (``by_image``: image id -> caption or
    captions): ``("<line>/<j>", pair)`` per caption. A record without a caption or not fitting ``spec`` raises
    ``BadRecord``, or with ``skip_bad`` is counted in ``skips``; ``seen`` collects the captioned image ids."""
    for line, rec in records:
        caps = by_image.get(rec.image_id)
        if caps is None:
            skip_or_raise(BadRecord(f"{features}: record {rec.image_id!r} has no caption in {captions_path}"),
                          skip_bad, skips, f"{split}: images without a caption in {features}")
            continue
        seen.add(rec.image_id)
        if fits_spec(rec, spec, features, skip_bad, skips, f"{split}: records not fitting the region sizes in "
                     f"{features}"):
            for j, caption in enumerate([caps] if isinstance(caps, str) else caps):
                yield f"{line:012d}/{j:04d}", CaptionPair(rec, caption)


def tsv_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv][,val_captions=VAL.json]`` as ``PretrainPairs``."""
    from jaxvl.data.builders.pretrain import PretrainConfig, PretrainPairs
    from jaxvl.data.readers.volta_lmdb import read_caption_json

    opts, skips, layout = RegionOptions.parse(src), Skips(), LayoutOptions.parse(src)
    files = tsv_files(src)
    captions = {path: read_caption_json(path) for _, path in files.values()}
    probe = SpecProbe(opts)
    for features, _ in files.values():
        probe.feed(tsv_reader(opts, features, skip_bad))
    spec = probe.spec(files["train"][0])

    def pairs(split: str, features: str, captions_path: str) -> Iterator[CaptionPair]:
        by_image, seen = captions[captions_path], set()
        tsv = tsv_reader(opts, features, skip_bad)
        for _, pair in captioned_pairs(tsv.numbered(), by_image, split, features, captions_path, spec, skip_bad,
                                       skips, seen):
            yield pair
        skips.add(f"{split}: bad records in {features}", tsv.skipped)
        if len(seen) < len(by_image):
            log.warning("%s: %d of %d captioned images have no features in %s", captions_path,
                        len(by_image) - len(seen), len(by_image), features)

    config = PretrainConfig(name=config_name(src, path_stem(files["train"][0])), regions=spec,
                            splits={split: bind_split(pairs, split, *f) for split, f in files.items()},
                            metadata=source_metadata(src, skips, skip_bad, **{s: list(f) for s, f in files.items()}),
                            description=f"bottom-up-attention TSV features with VOLTA captions {files}")
    pairs_builder = PretrainPairs(config=config, data_dir=out, file_format="array_record")
    return Prepared([layout.builder(pairs_builder, out, skip_bad, skips)], skips)
