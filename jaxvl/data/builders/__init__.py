"""TFDS builders that write jaxvl's datasets as ArrayRecord (read back with ``tfds.data_source`` + Grain).

- ``PretrainPairs``: (image, caption) pairs from any iterable of ``CaptionPair``;
- ``AblationPhrases``: (sentence, phrase, gold boxes) examples with their image's regions;
- ``SyntheticPretrain`` / ``SyntheticAblation``: the synthetic world over ``WorldConfig`` knobs;
- ``ImagePairsBuilder``: a ``PretrainPairs`` dataset's pairs written as an image store instead (one record per
  image, captions referring to it: ``jaxvl.data.imagestore``; the sources' ``layout=images``).

Region fields are stored at a fixed count R (``RegionSpec``), padded, with ``num_boxes``.
Preparing needs only ``tensorflow-datasets`` and ``array-record`` (no TensorFlow) for these builders.
"""

from jaxvl.data.builders.ablation import AblationConfig, AblationPhrases, attach_regions, decode_ablation
from jaxvl.data.builders.common import RegionSpec, decode_regions, encode_regions
from jaxvl.data.builders.images import ImagePairsBuilder
from jaxvl.data.builders.pretrain import PretrainConfig, PretrainPairs
from jaxvl.data.builders.synthetic import (
    SyntheticAblation,
    SyntheticConfig,
    SyntheticPretrain,
    parse_knobs,
    synthetic_builders,
    synthetic_config,
)

__all__ = [
    "AblationConfig", "AblationPhrases", "ImagePairsBuilder", "PretrainConfig", "PretrainPairs", "RegionSpec",
    "SyntheticAblation", "SyntheticConfig", "SyntheticPretrain", "attach_regions", "decode_ablation", "decode_regions",
    "encode_regions", "parse_knobs", "synthetic_builders", "synthetic_config",
]
