"""Flickr30k Entities with a per-image feature store read in place: one split as a prepared ``AblationPhrases`` split.

    source, info = open_flickr30k(parse_source("flickr30k-entities:ROOT,features=flickr30k_feat.lmdb"), "val")
    source[i]          # {"image_id": b"...", "sentence": b"...", "phrase": b"...", "ref_boxes": [N, 4], ...}

The split's phrases are read from ``ROOT`` (``<split>.txt``, ``Sentences/``, ``Annotations/``: small text files)
once, when the source opens; each ``source[i]`` then looks its image's regions up by id in the feature store (VOLTA's
per-image LMDB, ``FeatureLMDB``, or a directory of ``<image_id>.npz`` files) and lays the record out with the
builder's own ``phrase_record``: the dict the prepared split stores for the same phrase, at the region sizes
``jaxvl prepare`` reads off the same files. A TSV has no index to look an image up in, so it is not read in place.

Bad input: without ``skip_bad`` an image with no or bad features raises ``BadRecord`` naming the store and the
image when one of its phrases is read (the ablation reads every phrase before it compiles). With ``skip_bad`` every
image of the split is checked when the source opens and the phrases of bad ones are left out and counted, as
``jaxvl prepare --skip-bad`` leaves them out: an evaluation set cannot replace a phrase by another.
"""

from __future__ import annotations

from typing import Any

from jaxvl.data.builders.ablation import phrase_record
from jaxvl.data.inplace.common import InPlaceInfo, as_stored
from jaxvl.data.readers.flickr30k_entities import Flickr30kEntities
from jaxvl.data.records import AblationExample, BadRecord, RegionFeatures
from jaxvl.data.sources.ablation import Flickr30kInputs, flickr30k_features_format, image_regions, open_flickr30k_inputs
from jaxvl.data.sources.base import ParsedSource, wants_skip_bad
from jaxvl.data.sources.regions import skip_or_raise


class Flickr30kPhrases:
    """The phrases of one Flickr30k Entities split as a Grain random-access source of ``AblationPhrases`` records.

    The feature store's environment opens lazily in each reading process and is left out of pickles; the last
    image's regions are kept (phrases of one image are consecutive), never pickled.
    """

    def __init__(self, examples: list[AblationExample], inputs: Flickr30kInputs, entities: Flickr30kEntities):
        self.examples, self.inputs, self.entities = examples, inputs, entities
        self._last: tuple[str, RegionFeatures] | None = None

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.examples[int(index)]
        return as_stored(phrase_record(ex, self._regions(ex), self.inputs.spec, self.inputs.features))

    def _regions(self, ex: AblationExample) -> RegionFeatures:
        last = self._last  # one read of a tuple: consistent under Grain's threads
        if last is not None and last[0] == ex.image_id:
            return last[1]
        regions = image_regions(self.inputs, ex.image_id, ex.phrase, self.entities.sentence_path(ex.image_id))
        self._last = (ex.image_id, regions)
        return regions

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_last": None}

    def __repr__(self) -> str:
        return (f"Flickr30kPhrases({self.inputs.root!r} split {self.inputs.split!r}, features "
                f"{self.inputs.features!r}, {len(self)} phrases, {self.inputs.spec})")


def reads_indexed_features(src: ParsedSource) -> bool:
    """Whether the source's feature store can be read in place (an LMDB or npz directory, not a TSV)."""
    return flickr30k_features_format(src)[1] != "tsv"


def open_flickr30k(src: ParsedSource, split: str, skip_bad: bool = False) -> tuple[Flickr30kPhrases, InPlaceInfo]:
    """The ``split`` of a ``flickr30k-entities`` source read in place (it has one split: the ``split=`` option,
    default ``val``), and its info. ``ValueError`` for another split or a TSV feature store; ``SourceError`` for
    unusable files."""
    skip_bad = wants_skip_bad(src, skip_bad)
    if not reads_indexed_features(src):
        raise ValueError(f"{src.text}: features in a TSV cannot be read in place (no index by image id); prepare "
                         "them with `jaxvl prepare --source`")
    inputs = open_flickr30k_inputs(src, skip_bad)
    if split != inputs.split:
        raise ValueError(f"{src.text}: no split {split!r}; it has [{inputs.split!r}] (set split= in the source)")
    entities = Flickr30kEntities(inputs.root, inputs.split, skip_bad=skip_bad)
    examples = list(entities)
    inputs.skips.add(f"{split}: bad annotation files or caption lines in {inputs.root}", entities.skipped)
    if skip_bad:
        examples = _with_usable_regions(examples, inputs, entities)
    metadata = {"regions": inputs.spec.to_dict(), "source": src.name, "source_string": src.text,
                "files": {"root": inputs.root, "features": inputs.features}, "format": inputs.fmt,
                "skip_bad": skip_bad, "skipped": inputs.skips.counts, "in_place": True}
    return Flickr30kPhrases(examples, inputs, entities), InPlaceInfo(full_name=src.text, metadata=metadata)


def _with_usable_regions(examples: list[AblationExample], inputs: Flickr30kInputs,
                         entities: Flickr30kEntities) -> list[AblationExample]:
    """``examples`` without those whose image has no usable features (each image checked once, counted)."""
    usable: dict[str, bool] = {}
    kept = []
    for ex in examples:
        if ex.image_id not in usable:
            try:
                image_regions(inputs, ex.image_id, ex.phrase, entities.sentence_path(ex.image_id))
                usable[ex.image_id] = True
            except BadRecord as e:
                skip_or_raise(e, True, inputs.skips, f"{inputs.split}: images without usable features in "
                                                     f"{inputs.features}")
                usable[ex.image_id] = False
        if usable[ex.image_id]:
            kept.append(ex)
        else:
            inputs.skips.add(f"{inputs.split}: phrases whose image has no usable features")
    return kept
