"""The synthetic world (``jaxvl.data.synthetic``) as two TFDS datasets over one ``SyntheticConfig``.

- ``jaxvl_synthetic_pretrain``: the world's (image, caption) pairs, built by ``PretrainPairs``;
- ``jaxvl_synthetic_ablation``: its grounded phrases with their images' regions, built by ``AblationPhrases``.

Splits: ``train`` holds images ``[0, num_images)`` and ``val`` the next ``val_images`` images of the
same world (same vocabulary, prototypes and detector), so val is held-out data, not a new world.
Region sizes come from the world (R = ``num_regions``, D = ``feature_dim``, K = ``num_classes``), and
the dataset metadata carries what a pipeline needs besides the records: ``words`` (for
``Tokenizer.from_words``), ``label_list`` (background + class names), the ``world`` config and the
split ranges.

A config is named after its non-default knobs (``default``, or e.g.
``num_images-128+vision_to_language-0.5``), so worlds with different knobs sit side by side under
one ``--out`` directory.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow_datasets as tfds

from jaxvl.data.builders.ablation import AblationPhrases, PhraseSource
from jaxvl.data.builders.common import RegionSpec
from jaxvl.data.builders.pretrain import PairSource, PretrainPairs
from jaxvl.data.records import AblationExample, CaptionPair, RegionFeatures
from jaxvl.data.synthetic import World, WorldConfig

PRETRAIN_NAME = "jaxvl_synthetic_pretrain"
ABLATION_NAME = "jaxvl_synthetic_ablation"
DEFAULT_VAL_IMAGES = 16


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """A synthetic world (``WorldConfig`` knobs; ``num_images`` train images) plus ``val_images`` held out."""

    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)
    val_images: int = DEFAULT_VAL_IMAGES

    def __post_init__(self):
        if self.val_images < 0:
            raise ValueError(f"val_images={self.val_images} must be >= 0")

    @property
    def split_ranges(self) -> dict[str, tuple[int, int]]:
        """Split -> [first, last) image index in the world."""
        n = self.world.num_images
        out = {"train": (0, n)}
        if self.val_images:
            out["val"] = (n, n + self.val_images)
        return out


def _format_value(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def synthetic_config(name: str | None = None, val_images: int = DEFAULT_VAL_IMAGES,
                     **world_knobs: Any) -> SyntheticConfig:
    """A ``SyntheticConfig`` from ``WorldConfig`` knobs; named after the non-default knobs unless ``name``."""
    world = WorldConfig(**world_knobs)
    if name is None:
        default = WorldConfig()
        parts = [f"{f.name}-{_format_value(getattr(world, f.name))}" for f in dataclasses.fields(world)
                 if getattr(world, f.name) != getattr(default, f.name)]
        if val_images != DEFAULT_VAL_IMAGES:
            parts.append(f"val_images-{val_images}")
        name = "+".join(parts) or "default"
    description = f"jaxvl synthetic world {name!r}: {world.num_images} train + {val_images} val images"
    return SyntheticConfig(name=name, world=world, val_images=val_images, description=description)


def parse_knobs(spec: str) -> dict[str, Any]:
    """``"num_images=128,vision_to_language=0.5,image_size=240x320"`` -> typed ``synthetic_config`` kwargs.

    Values are cast to the type of the knob's default; tuples take ``x`` or ``/`` between elements
    (``detector_rank_probs=0.5/0.2/0.1/0.1/0.1``). ``val_images`` and ``name`` are accepted too.
    """
    defaults = {f.name: getattr(WorldConfig(), f.name) for f in dataclasses.fields(WorldConfig)}
    defaults["val_images"] = DEFAULT_VAL_IMAGES
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"synthetic knob {item!r} must be key=value")
        if key == "name":
            out[key] = value
            continue
        if key not in defaults:
            raise ValueError(f"unknown synthetic knob {key!r}; known: {', '.join(sorted(defaults))}, name")
        default = defaults[key]
        try:
            if isinstance(default, tuple):
                out[key] = tuple(type(default[0])(v) for v in re.split(r"[x/]", value))
            elif isinstance(default, bool):
                out[key] = value.lower() in ("1", "true", "yes")
            else:
                out[key] = type(default)(value)
        except ValueError as e:
            raise ValueError(f"synthetic knob {key}={value!r}: expected {type(default).__name__} ({e})") from e
    return out


class _SyntheticWorld:
    """What both synthetic builders share: the world, its region sizes, its metadata, its images per split."""

    builder_config: SyntheticConfig

    def _synthetic(self) -> SyntheticConfig:
        cfg = self.builder_config
        if not isinstance(cfg, SyntheticConfig):
            raise ValueError(f"{type(self).__name__} needs a SyntheticConfig; got {cfg!r}")
        return cfg

    @functools.cached_property
    def world(self) -> World:
        """The world holding train and val images (image ``i`` does not depend on the image count)."""
        cfg = self._synthetic()
        return World(dataclasses.replace(cfg.world, num_images=cfg.world.num_images + cfg.val_images))

    def region_spec(self) -> RegionSpec:
        w = self._synthetic().world
        return RegionSpec(num_regions=w.num_regions, feature_dim=w.feature_dim, num_classes=w.num_classes)

    def dataset_metadata(self) -> dict[str, Any]:
        cfg = self._synthetic()
        return {"source": "synthetic", "words": self.world.vocabulary(), "label_list": self.world.label_list(),
                "world": dataclasses.asdict(cfg.world), "val_images": cfg.val_images,
                "split_ranges": {k: list(v) for k, v in cfg.split_ranges.items()}}

    def _images(self, split: str) -> range:
        return range(*self._synthetic().split_ranges[split])


class SyntheticPretrain(_SyntheticWorld, PretrainPairs):
    """The synthetic world's (image, caption) pairs: ``captions_per_image`` examples per image."""

    name = PRETRAIN_NAME
    BUILDER_CONFIGS = [synthetic_config()]

    def pair_splits(self) -> Mapping[str, PairSource]:
        def pairs(split: str) -> Iterator[CaptionPair]:
            for i in self._images(split):
                image = self.world[i]
                for caption in image.captions:
                    yield CaptionPair(regions=image.regions, caption=caption)

        return {split: functools.partial(pairs, split) for split in self._synthetic().split_ranges}


class SyntheticAblation(_SyntheticWorld, AblationPhrases):
    """The synthetic world's grounded phrases (Flickr30k-Entities style), each with its image's regions."""

    name = ABLATION_NAME
    BUILDER_CONFIGS = [synthetic_config()]

    def phrase_splits(self) -> Mapping[str, PhraseSource]:
        def phrases(split: str) -> Iterator[tuple[AblationExample, RegionFeatures]]:
            for i in self._images(split):
                image = self.world[i]
                for phrase in image.phrases:
                    yield phrase, image.regions

        return {split: functools.partial(phrases, split) for split in self._synthetic().split_ranges}


def synthetic_builders(config: SyntheticConfig, data_dir: str) -> list[PretrainPairs | AblationPhrases]:
    """Both synthetic builders of ``config`` under ``data_dir``, writing ArrayRecord.

    A config named like one of the builder's own ``BUILDER_CONFIGS`` is passed by name (TFDS refuses a
    second object under a registered name); names are derived from the knobs, so the two agree.
    """
    def pick(cls):
        return config.name if any(c.name == config.name for c in cls.BUILDER_CONFIGS) else config

    return [cls(config=pick(cls), data_dir=data_dir, file_format="array_record")
            for cls in (SyntheticPretrain, SyntheticAblation)]
