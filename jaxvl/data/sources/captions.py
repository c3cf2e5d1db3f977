"""The captioning sources: ``synthetic-captions`` and ``coco-karpathy`` (Karpathy's split file + region stores).

Each factory returns one ``CaptionImages`` builder (one example per image, every caption encoded
with a ``CaptionVocab``); the source strings are documented in ``jaxvl.data.sources``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from jaxvl.data.records import BadRecord
from jaxvl.data.sources.base import (
    ParsedSource,
    Prepared,
    Skips,
    SourceError,
    bind_split,
    config_name,
    path_stem,
    source_metadata,
)
from jaxvl.data.sources.regions import RegionOptions, SpecProbe, feature_format, fits_spec

if TYPE_CHECKING:  # the builders import tensorflow_datasets: only the factories load them
    from jaxvl.data.caption_vocab import CaptionVocab
    from jaxvl.data.readers.coco_karpathy import KarpathyCaptions, KarpathyImage


def synthetic_captions_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``synthetic-captions[:key=value,...]``: the synthetic captioning world (``skip_bad`` has nothing to skip)."""
    from jaxvl.data.builders.captions import parse_caption_knobs, synthetic_caption_builder, synthetic_caption_config

    return Prepared([synthetic_caption_builder(synthetic_caption_config(**parse_caption_knobs(src.args)), out)])


def _caption_vocab(src: ParsedSource, karpathy: KarpathyCaptions) -> CaptionVocab:
    """The ``CaptionVocab`` of a ``coco-karpathy`` source: ``vocab=`` loaded, or built from its captions."""
    from jaxvl.data.caption_vocab import ORT_COUNT_THRESHOLD, CaptionVocab
    from jaxvl.data.readers.coco_karpathy import SPLITS

    if "vocab" in src.options:
        clash = sorted({"count_threshold", "vocab_splits"} & set(src.options))
        if clash:
            raise src.fail(f"vocab= loads a vocabulary; {', '.join(k + '=' for k in clash)} would build one")
        return CaptionVocab.load(src.existing_path(src.options["vocab"], "vocabulary", "file"))
    threshold = src.options.get("count_threshold", str(ORT_COUNT_THRESHOLD))
    if not threshold.isdigit():
        raise src.fail(f"option count_threshold={threshold!r} must be an integer >= 0")
    which = src.options.get("vocab_splits", "train")
    if which not in ("train", "all"):
        raise src.fail(f"option vocab_splits={which!r} must be train or all")
    return karpathy.build_vocab(int(threshold), SPLITS if which == "all" else ("train",))


def coco_karpathy_source(src: ParsedSource, out: str, skip_bad: bool) -> Prepared:
    """``coco-karpathy:dataset_coco.json,features=FEATURES[,...]`` as ``CaptionImages`` (one split per file split)."""
    from jaxvl.data.builders.captions import CaptionConfig, CaptionExample, CaptionImages
    from jaxvl.data.caption_vocab import ORT_MAX_LENGTH
    from jaxvl.data.readers.coco_karpathy import KarpathyCaptions, RegionJoin, caption_stats

    opts, skips = RegionOptions.parse(src), Skips()
    path = src.existing_path(src.path, "Karpathy split file", "file")
    value = src.require("features")  # one store, or several joined by '+' (a path holding '+' is taken whole)
    whole = os.path.exists(os.path.expanduser(value)) or "+" not in value
    paths = [src.existing_path(v, "features") for v in ([value] if whole else value.split("+"))]
    features = " + ".join(paths)
    max_length = src.int_option("max_length") or ORT_MAX_LENGTH
    fold = src.bool_option("fold_restval", True)
    id_key = src.options.get("id_key", "cocoid")
    try:
        formats = {p: feature_format(p, src.options.get("format")) for p in paths}
        if len(set(formats.values())) > 1:
            raise ValueError(f"features= mixes formats {formats}; give stores of one format")
        fmt = formats[paths[0]]
        karpathy = KarpathyCaptions(path, fold_restval=fold, id_key=id_key, skip_bad=skip_bad)
        vocab = _caption_vocab(src, karpathy)

        def join(skip: bool, quiet: bool = False) -> RegionJoin:
            return RegionJoin(paths, fmt, opts.feature_dim, opts.reader_num_classes, skip, quiet)

        join(skip_bad)  # opens the features: a missing or unreadable store fails here
    except BadRecord:
        raise
    except (OSError, ValueError) as e:
        raise SourceError(f"--source {src.name}: {e}") from e
    skips.add(f"bad images in {path}", karpathy.skipped)
    splits = karpathy.splits
    if "splits" in src.options:
        wanted = [s.strip() for s in src.options["splits"].split("+")]
        missing = [s for s in wanted if s not in splits]
        if missing:
            raise src.fail(f"splits={src.options['splits']!r}: {path} has no images in {missing}; it has "
                           f"{'+'.join(splits)}")
        splits = {s: splits[s] for s in wanted}
    probe = SpecProbe(opts)
    probe.feed(join(True, quiet=True).pairs(splits.get("train") or next(iter(splits.values()))), lambda p: p[1])
    spec = probe.spec(f"{features} (images of {path})")

    def examples(split: str, images: list[KarpathyImage]) -> Iterator[CaptionExample]:
        joined = join(skip_bad)
        what = f"{split}: records not fitting the region sizes in {features}"
        for image, rec in joined.pairs(images):
            if fits_spec(rec, spec, features, skip_bad, skips, what):
                yield CaptionExample(regions=rec, captions=image.captions)
        for kind, n in joined.counts.items():
            skips.add(f"{split}: {kind} in {features}", n)

    counts = karpathy.caption_counts()
    file_stats = {split: {**caption_stats(imgs, vocab, max_length),
                          "captions_per_image": {str(n): k for n, k in counts[split].items()}}
                  for split, imgs in splits.items()}
    metadata = source_metadata(src, skips, skip_bad, split_file=path, features=paths, format=fmt)
    metadata.update(fold_restval=fold, id_key=id_key, split_file_stats=file_stats)
    stem = os.path.splitext(os.path.basename(path))[0]
    config = CaptionConfig(name=config_name(src, stem, path_stem(paths[0])), regions=spec, vocab=vocab,
                           max_length=max_length,
                           splits={s: bind_split(examples, s, imgs) for s, imgs in splits.items()},
                           metadata=metadata, description=f"Karpathy captions {path} with features {features}")
    return Prepared([CaptionImages(config=config, data_dir=out, file_format="array_record")], skips)
