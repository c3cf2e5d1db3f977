"""TFDS builder of cross-modal ablation examples: one ArrayRecord example per (sentence, phrase).

Fed by any iterable of ``(AblationExample, RegionFeatures)`` per split; ``attach_regions`` pairs an
iterable of ``AblationExample`` (e.g. the Flickr30k Entities reader) with per-image regions (a
mapping or a lookup function by image id, e.g. a feature LMDB reader)::

    config = AblationConfig(name="flickr30k_val", regions=RegionSpec(36, 2048, 1600),
                            splits={"val": lambda: attach_regions(entities.examples(), features.get)})
    AblationPhrases(config=config, data_dir=out, file_format="array_record").download_and_prepare()

Stored fields: ``image_id``, ``sentence``, ``phrase``, ``entity_id``, ``phrase_type`` (text),
``sentence_index`` and ``first_word_index`` (int32), ``ref_boxes`` [N, 4] float32 (N varies per
example: every gold box of the phrase's entity), plus the image's region fields of
``jaxvl.data.builders.common``. Each example carries its image's regions, so the ablation pipeline
reads one record per example (at Flickr30k's 14,433 phrases x 36 x 2048 float32 features that is
about 4.3 GB; a shared per-image table would be smaller but needs a join at read time).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxvl.data.builders.common import ConfiguredBuilder, RegionSpec, as_str, decode_regions, encode_regions
from jaxvl.data.records import AblationExample, BadRecord, RegionFeatures, check_ablation_example

log = logging.getLogger(__name__)

PhraseSource = Callable[[], Iterable[tuple[AblationExample, RegionFeatures]]]


def attach_regions(examples: Iterable[AblationExample],
                   regions: Mapping[str, RegionFeatures] | Callable[[str], RegionFeatures],
                   ) -> Iterator[tuple[AblationExample, RegionFeatures]]:
    """Pairs each example with its image's regions, looked up by ``image_id``.

    ``regions`` is a mapping or a function; a missing image raises ``BadRecord`` naming it. The last
    image's regions are reused while consecutive examples share an image (readers emit them grouped).
    """
    lookup = regions.__getitem__ if isinstance(regions, Mapping) else regions
    last_id, last = None, None
    for ex in examples:
        if ex.image_id != last_id:
            try:
                last = lookup(ex.image_id)
            except KeyError as e:
                raise BadRecord(f"no regions for image {ex.image_id!r} (phrase {ex.phrase!r})") from e
            if last is None:
                raise BadRecord(f"no regions for image {ex.image_id!r} (phrase {ex.phrase!r})")
            last_id = ex.image_id
        yield ex, last


def decode_ablation(example: Mapping[str, Any]) -> tuple[AblationExample, RegionFeatures]:
    """A stored example (from ``as_data_source``) -> the ``AblationExample`` and its image's regions."""
    ex = AblationExample(
        image_id=as_str(example["image_id"]), sentence_index=int(example["sentence_index"]),
        sentence=as_str(example["sentence"]), phrase=as_str(example["phrase"]),
        first_word_index=int(example["first_word_index"]), entity_id=as_str(example["entity_id"]),
        phrase_type=as_str(example["phrase_type"]), ref_boxes=np.asarray(example["ref_boxes"], np.float32))
    return ex, decode_regions(example)


def phrase_record(ex: AblationExample, regions: RegionFeatures, spec: RegionSpec, where: str) -> dict[str, Any]:
    """The stored fields of one example (module doc; text as ``str``), checked; ``BadRecord`` naming ``where``."""
    check_ablation_example(ex, where)
    if regions.image_id != ex.image_id:
        raise BadRecord(f"{where}: phrase {ex.phrase!r} of image {ex.image_id!r} was given the regions "
                        f"of image {regions.image_id!r}")
    return {"image_id": ex.image_id, "sentence": ex.sentence, "phrase": ex.phrase, "entity_id": ex.entity_id,
            "phrase_type": ex.phrase_type, "sentence_index": int(ex.sentence_index),
            "first_word_index": int(ex.first_word_index),
            "ref_boxes": np.asarray(ex.ref_boxes, np.float32).reshape(-1, 4), **encode_regions(regions, spec, where)}


@dataclasses.dataclass(eq=False)
class AblationConfig(tfds.core.BuilderConfig):
    """An ablation dataset: region sizes, a ``(AblationExample, RegionFeatures)`` source per split, metadata."""

    regions: RegionSpec = dataclasses.field(default_factory=RegionSpec)
    splits: Mapping[str, PhraseSource] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class AblationPhrases(ConfiguredBuilder, tfds.core.GeneratorBasedBuilder):
    """(sentence, grounded phrase) examples with their image's regions, written as ArrayRecord.

    Subclasses override ``region_spec``, ``phrase_splits`` and ``dataset_metadata``.
    """

    name = "jaxvl_ablation_phrases"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: phrase fields, ragged ref_boxes, region fields padded to R."}
    config_class = AblationConfig

    def phrase_splits(self) -> Mapping[str, PhraseSource]:
        return self.typed_config().splits

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.region_spec()
        text = tfds.features.Text
        return self.dataset_info_from_configs(
            description="jaxvl cross-modal ablation examples: one per (sentence, phrase) with its gold boxes "
                        f"and its image's regions padded to R={spec.num_regions}.",
            features=tfds.features.FeaturesDict({
                "image_id": text(), "sentence": text(), "phrase": text(), "entity_id": text(),
                "phrase_type": text(),
                "sentence_index": tfds.features.Scalar(dtype=np.int32),
                "first_word_index": tfds.features.Scalar(dtype=np.int32),
                "ref_boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32),
                **spec.features(),
            }),
            metadata=tfds.core.MetadataDict(regions=spec.to_dict(), **self.dataset_metadata()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        return self.split_generators({split: functools.partial(self._generate_examples, split, source)
                                      for split, source in self.phrase_splits().items()})

    def _generate_examples(self, split: str, source: PhraseSource) -> Iterator[tuple[int, dict[str, Any]]]:
        spec, truncated = self.region_spec(), 0
        where = f"{self.name}/{self.builder_config.name} split {split!r}"
        for i, (ex, regions) in enumerate(source()):
            truncated += regions.num_boxes > spec.num_regions
            yield i, phrase_record(ex, regions, spec, where)
        if truncated:
            log.warning("%s: %d examples had more than %d boxes and kept the first %d",
                        where, truncated, spec.num_regions, spec.num_regions)
