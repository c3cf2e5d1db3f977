"""TFDS builder of pretraining pairs: one ArrayRecord example per (image, caption).

Fed by any iterable of ``CaptionPair`` per split (the VOLTA LMDB / TSV readers, the synthetic
world, or a test's list), with the region sizes fixed by a ``RegionSpec``::

    config = PretrainConfig(name="cc_val", regions=RegionSpec(36, 2048, 1600),
                            splits={"val": lambda: reader.pairs()})
    builder = PretrainPairs(config=config, data_dir=out, file_format="array_record")
    builder.download_and_prepare()

Stored fields: ``image_id`` and ``caption`` (text) plus the region fields of
``jaxvl.data.builders.common`` (``features`` [R, D], ``boxes`` [R, 4], ``image_h``, ``image_w``,
``num_boxes``, and with K classes ``cls_prob`` [R, K+1], ``objects_id`` [R], ``objects_conf`` [R]).
Read back with ``tfds.builder_from_directory(dir).as_data_source()`` (no TensorFlow needed).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds

from jaxvl.data.builders.common import ConfiguredBuilder, RegionSpec, encode_regions
from jaxvl.data.records import CaptionPair

log = logging.getLogger(__name__)

PairSource = Callable[[], Iterable[CaptionPair]]


def pair_record(pair: CaptionPair, spec: RegionSpec, where: str) -> dict[str, Any]:
    """The stored fields of one pair (module doc; text as ``str``); ``BadRecord`` naming ``where``."""
    return {"image_id": pair.regions.image_id, "caption": pair.caption, **encode_regions(pair.regions, spec, where)}


@dataclasses.dataclass(eq=False)
class PretrainConfig(tfds.core.BuilderConfig):
    """A pretraining-pairs dataset: its region sizes, a pair source per split, extra metadata.

    ``splits`` maps a split name to a zero-argument callable returning the split's pairs (called once,
    while the split is written). ``metadata`` (JSON-serialisable) lands in the dataset's
    ``metadata.json`` next to ``regions`` (the spec).
    """

    regions: RegionSpec = dataclasses.field(default_factory=RegionSpec)
    splits: Mapping[str, PairSource] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class PretrainPairs(ConfiguredBuilder, tfds.core.GeneratorBasedBuilder):
    """(image, caption) pairs with fixed-size region features, written as ArrayRecord.

    Subclasses (the synthetic world) override ``region_spec``, ``pair_splits`` and
    ``dataset_metadata`` instead of passing callables through a ``PretrainConfig``.
    """

    name = "jaxvl_pretrain_pairs"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: image_id, caption and region fields padded to R."}
    config_class = PretrainConfig

    # what subclasses override ------------------------------------------------------------------

    def pair_splits(self) -> Mapping[str, PairSource]:
        return self.typed_config().splits

    # tfds ---------------------------------------------------------------------------------------

    def _info(self) -> tfds.core.DatasetInfo:
        spec = self.region_spec()
        return self.dataset_info_from_configs(
            description="jaxvl pretraining pairs: one example per (image, caption), regions padded to "
                        f"R={spec.num_regions}.",
            features=tfds.features.FeaturesDict(
                {"image_id": tfds.features.Text(), "caption": tfds.features.Text(), **spec.features()}),
            metadata=tfds.core.MetadataDict(regions=spec.to_dict(), **self.dataset_metadata()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        return self.split_generators({split: functools.partial(self._generate_examples, split, source)
                                      for split, source in self.pair_splits().items()})

    def _generate_examples(self, split: str, source: PairSource) -> Iterator[tuple[int, dict[str, Any]]]:
        spec, truncated = self.region_spec(), 0
        where = f"{self.name}/{self.builder_config.name} split {split!r}"
        for i, pair in enumerate(source()):
            truncated += pair.regions.num_boxes > spec.num_regions
            yield i, pair_record(pair, spec, where)
        if truncated:
            log.warning("%s: %d examples had more than %d boxes and kept the first %d",
                        where, truncated, spec.num_regions, spec.num_regions)
