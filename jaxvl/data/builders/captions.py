"""TFDS builders of captioning images: one ArrayRecord example per image, its regions and all its captions.

- ``CaptionImages`` (``jaxvl_caption_images``): any ``CaptionExample`` source per split (the COCO
  Karpathy reader joined with region features, or a test's list) and a ``CaptionVocab``;
- ``SyntheticCaptions`` (``jaxvl_synthetic_captions``): the synthetic captioning world
  (``jaxvl.data.synthetic.captions``) with ``train``, ``val`` and ``test`` splits of one world.

Stored fields (R regions, T = ``max_length`` words, N captions of this image):

- the region fields of ``jaxvl.data.builders.common`` (``features`` [R, D], ``boxes`` [R, 4] pixel
  x1y1x2y2, ``image_h``, ``image_w``, ``num_boxes``; with K classes ``cls_prob``, ``objects_id``,
  ``objects_conf``) and ``region_mask`` [R] int32: 1 on real rows whose box has positive width and
  height (the rows a captioner attends to), 0 on degenerate boxes and padding;
- ``captions`` [N, T] int32: ORT's label layout, word ids (``CaptionVocab``: unknown words -> UNK)
  truncated to T and padded with 0 (the end id); ``caption_lengths`` [N] int32, the words kept
  (<= T); ``num_captions`` int32;
- ``references`` (text): the N captions as written (untruncated, no UNK), one per line, for metrics;
- ``image_id`` (text);
- with ``max_phrases`` P > 0 (the synthetic world: P = 2), the noun-phrase links of the attention
  analyses: ``phrase_spans`` [N, P, 2] int32, each noun phrase's word span ``[start, end)`` in its
  caption (cut to T; ``[0, 0]`` pads and marks phrases cut away), and ``phrase_regions`` [N, P, R]
  bool, the regions linked to it (the detections of the object it names).

The dataset's metadata carries ``vocab`` (``CaptionVocab.to_json``), ``max_length``, ``regions`` and
``caption_stats`` per split (images, captions, histogram of captions per image, captions truncated,
tokens, UNK tokens, images with more than R boxes), filled while the split is written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxvl.data.builders.common import ConfiguredBuilder, RegionSpec, encode_regions
from jaxvl.data.builders.synthetic import DEFAULT_VAL_IMAGES, parse_knobs
from jaxvl.data.caption_vocab import ORT_MAX_LENGTH, CaptionVocab
from jaxvl.data.records import BadRecord, RegionFeatures
from jaxvl.data.synthetic import WorldConfig
from jaxvl.data.synthetic.captions import MAX_PHRASES, CaptionWorld, CaptionWorldConfig

log = logging.getLogger(__name__)

CAPTIONS_NAME = "jaxvl_caption_images"
SYNTHETIC_CAPTIONS_NAME = "jaxvl_synthetic_captions"
DEFAULT_TEST_IMAGES = 16


@dataclasses.dataclass(frozen=True)
class PhraseLink:
    """A noun phrase of a caption: word span ``[start, end)`` and the indices of the regions it is linked to."""

    start: int
    end: int
    regions: tuple[int, ...] = ()


@dataclasses.dataclass
class CaptionExample:
    """One image to store: its regions and its captions as token lists (``image_id`` = ``regions.image_id``);
    optionally ``phrases[c]``, the noun phrases of caption ``c`` (stored by builders with ``max_phrases`` > 0)."""

    regions: RegionFeatures
    captions: list[list[str]]
    phrases: list[list[PhraseLink]] | None = None


CaptionSource = Callable[[], Iterable[CaptionExample]]


def encode_captions(captions: list[list[str]], vocab: CaptionVocab, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> ``captions`` [N, T] int32 (ids truncated to T = ``max_length``, 0-padded) and lengths [N]."""
    ids = np.zeros((len(captions), max_length), np.int32)
    lengths = np.zeros((len(captions),), np.int32)
    for j, tokens in enumerate(captions):
        row = vocab.encode(tokens, max_length)
        ids[j, :len(row)] = row
        lengths[j] = len(row)
    return ids, lengths


def encode_phrases(ex: CaptionExample, max_phrases: int, num_regions: int, max_length: int,
                   where: str) -> tuple[np.ndarray, np.ndarray]:
    """``ex.phrases`` -> ``phrase_spans`` [N, P, 2] int32 and ``phrase_regions`` [N, P, R] bool (module doc);
    zeros when ``ex.phrases`` is None. Spans are cut to T = ``max_length`` words (a phrase starting past T is
    dropped) and links to regions past R dropped. Raises ``BadRecord`` on more than P phrases, a span outside
    its caption, or a region index outside ``[0, num_boxes)``."""
    n, image_id = len(ex.captions), ex.regions.image_id
    spans = np.zeros((n, max_phrases, 2), np.int32)
    regions = np.zeros((n, max_phrases, num_regions), bool)
    if ex.phrases is None:
        return spans, regions
    if len(ex.phrases) != n:
        raise BadRecord(f"{where}: image {image_id!r} has {n} captions but noun phrases for {len(ex.phrases)}")
    for c, (tokens, phrases) in enumerate(zip(ex.captions, ex.phrases, strict=True)):
        if len(phrases) > max_phrases:
            raise BadRecord(f"{where}: image {image_id!r} caption {c} has {len(phrases)} noun phrases, more than "
                            f"max_phrases={max_phrases}")
        for j, ph in enumerate(phrases):
            if not 0 <= ph.start < ph.end <= len(tokens):
                raise BadRecord(f"{where}: image {image_id!r} caption {c} noun phrase {j}: span [{ph.start}, "
                                f"{ph.end}) outside its {len(tokens)} words")
            bad = [r for r in ph.regions if not 0 <= r < ex.regions.num_boxes]
            if bad:
                raise BadRecord(f"{where}: image {image_id!r} caption {c} noun phrase {j}: region {bad[0]} outside "
                                f"[0, {ex.regions.num_boxes})")
            if ph.start >= max_length:
                continue
            spans[c, j] = ph.start, min(ph.end, max_length)
            regions[c, j, [r for r in ph.regions if r < num_regions]] = True
    return spans, regions


def region_mask(num_regions: int, rec: RegionFeatures) -> np.ndarray:
    """[R] int32: 1 on the first ``min(num_boxes, R)`` rows whose box has positive width and height."""
    n = min(rec.num_boxes, num_regions)
    b = rec.boxes[:n]
    mask = np.zeros((num_regions,), np.int32)
    mask[:n] = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    return mask


def new_stats() -> dict[str, Any]:
    return {"images": 0, "captions": 0, "captions_per_image": {}, "truncated_captions": 0, "tokens": 0,
            "unk_tokens": 0, "images_over_R_boxes": 0}


@dataclasses.dataclass(eq=False)
class CaptionConfig(tfds.core.BuilderConfig):
    """A captioning dataset: region sizes, vocabulary, caption length T, a source per split, metadata.

    ``stats`` is filled while the splits are written and saved as ``caption_stats`` in ``metadata.json``.
    ``max_phrases`` > 0 stores the sources' noun-phrase links (module doc).
    """

    regions: RegionSpec = dataclasses.field(default_factory=RegionSpec)
    vocab: CaptionVocab | None = None
    max_length: int = ORT_MAX_LENGTH
    max_phrases: int = 0
    splits: Mapping[str, CaptionSource] = dataclasses.field(default_factory=dict)
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


class CaptionImages(ConfiguredBuilder, tfds.core.GeneratorBasedBuilder):
    """Images with their regions and captions (module doc), written as ArrayRecord.

    Subclasses override ``region_spec``, ``caption_vocab``, ``max_length``, ``max_phrases``, ``caption_splits``,
    ``dataset_metadata`` and ``split_stats`` instead of passing them through a ``CaptionConfig``.
    """

    name = CAPTIONS_NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First version: regions padded to R, region_mask, all captions [N, T], references."}
    config_class = CaptionConfig

    def caption_vocab(self) -> CaptionVocab:
        vocab = self.typed_config().vocab
        if vocab is None:
            raise ValueError(f"{self.name}/{self.builder_config.name}: CaptionConfig has no vocab")
        return vocab

    def max_length(self) -> int:
        return self.typed_config().max_length

    def max_phrases(self) -> int:
        return self.typed_config().max_phrases

    def caption_splits(self) -> Mapping[str, CaptionSource]:
        return self.typed_config().splits

    def split_stats(self) -> dict[str, dict[str, Any]]:
        return self.typed_config().stats

    def _info(self) -> tfds.core.DatasetInfo:
        spec, t, p = self.region_spec(), self.max_length(), self.max_phrases()
        if t < 1 or p < 0:
            raise ValueError(f"{self.name}/{self.builder_config.name}: max_length={t} must be >= 1 and "
                             f"max_phrases={p} >= 0")
        phrases = {} if not p else {
            "phrase_spans": tfds.features.Tensor(shape=(None, p, 2), dtype=np.int32),
            "phrase_regions": tfds.features.Tensor(shape=(None, p, spec.num_regions), dtype=np.bool_)}
        return self.dataset_info_from_configs(
            description=f"jaxvl captioning images: regions padded to R={spec.num_regions} and every caption "
                        f"encoded to T={t} word ids.",
            features=tfds.features.FeaturesDict({
                "image_id": tfds.features.Text(), "references": tfds.features.Text(),
                "captions": tfds.features.Tensor(shape=(None, t), dtype=np.int32),
                "caption_lengths": tfds.features.Tensor(shape=(None,), dtype=np.int32),
                "num_captions": tfds.features.Scalar(dtype=np.int32),
                "region_mask": tfds.features.Tensor(shape=(spec.num_regions,), dtype=np.int32),
                **spec.features(), **phrases,
            }),
            metadata=tfds.core.MetadataDict(regions=spec.to_dict(), vocab=self.caption_vocab().to_json(),
                                            max_length=t, caption_stats=self.split_stats(),
                                            **self.dataset_metadata()),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        splits = self.caption_splits()
        if not splits:
            raise ValueError(f"{self.name}/{self.builder_config.name}: no splits to build")
        return {split: self._generate_examples(split, source) for split, source in splits.items()}

    def _generate_examples(self, split: str, source: CaptionSource) -> Iterator[tuple[int, dict[str, Any]]]:
        spec, vocab, t, p = self.region_spec(), self.caption_vocab(), self.max_length(), self.max_phrases()
        where = f"{self.name}/{self.builder_config.name} split {split!r}"
        stats = self.split_stats().setdefault(split, new_stats())
        stats.update(new_stats())  # a rebuild counts afresh
        for i, ex in enumerate(source()):
            image_id = ex.regions.image_id
            if not ex.captions or any(not c for c in ex.captions):
                raise BadRecord(f"{where}: image {image_id!r} has no captions or an empty caption")
            ids, lengths = encode_captions(ex.captions, vocab, t)
            phrases = {}
            if p:
                spans, linked = encode_phrases(ex, p, spec.num_regions, t, where)
                phrases = {"phrase_spans": spans, "phrase_regions": linked}
            elif ex.phrases is not None:
                raise ValueError(f"{where}: image {image_id!r} carries noun phrases but the builder stores none "
                                 "(max_phrases=0)")
            n = len(ex.captions)
            stats["images"] += 1
            stats["captions"] += n
            stats["captions_per_image"][str(n)] = stats["captions_per_image"].get(str(n), 0) + 1
            stats["truncated_captions"] += sum(len(c) > t for c in ex.captions)
            stats["tokens"] += sum(len(c) for c in ex.captions)
            stats["unk_tokens"] += sum(w not in vocab for c in ex.captions for w in c)
            stats["images_over_R_boxes"] += ex.regions.num_boxes > spec.num_regions
            yield i, {"image_id": image_id, "references": "\n".join(" ".join(c) for c in ex.captions),
                      "captions": ids, "caption_lengths": lengths, "num_captions": n,
                      "region_mask": region_mask(spec.num_regions, ex.regions),
                      **encode_regions(ex.regions, spec, where), **phrases}
        if not stats["images"]:  # TFDS cannot write an empty split
            raise BadRecord(f"{where}: no usable images (every image was skipped or the source is empty)")
        stats["captions_per_image"] = dict(sorted(stats["captions_per_image"].items(), key=lambda kv: int(kv[0])))
        if stats["truncated_captions"]:
            log.warning("%s: %d of %d captions were longer than %d words and were truncated", where,
                        stats["truncated_captions"], stats["captions"], t)
        if stats["images_over_R_boxes"]:
            log.warning("%s: %d images had more than %d boxes and kept the first %d", where,
                        stats["images_over_R_boxes"], spec.num_regions, spec.num_regions)


# ---------------------------------------------------------------------------------------------- synthetic


@dataclasses.dataclass(eq=False)
class SyntheticCaptionConfig(tfds.core.BuilderConfig):
    """A synthetic captioning world: ``num_images`` train images, then ``val_images`` and ``test_images``."""

    world: CaptionWorldConfig = dataclasses.field(default_factory=CaptionWorldConfig)
    val_images: int = DEFAULT_VAL_IMAGES
    test_images: int = DEFAULT_TEST_IMAGES
    max_length: int = ORT_MAX_LENGTH
    stats: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.val_images < 0 or self.test_images < 0:
            raise ValueError(f"val_images={self.val_images} and test_images={self.test_images} must be >= 0")

    @property
    def split_ranges(self) -> dict[str, tuple[int, int]]:
        """Split -> [first, last) image index in the world."""
        n, v = self.world.world.num_images, self.val_images
        out = {"train": (0, n), "val": (n, n + v), "test": (n + v, n + v + self.test_images)}
        return {k: r for k, r in out.items() if r[1] > r[0]}


def _caption_defaults() -> dict[str, Any]:
    """Knob -> default of the caption knobs (``CaptionWorldConfig`` minus ``world``, split sizes, T)."""
    out = {f.name: getattr(CaptionWorldConfig(), f.name) for f in dataclasses.fields(CaptionWorldConfig)
           if f.name != "world"}
    out.update(test_images=DEFAULT_TEST_IMAGES, max_length=ORT_MAX_LENGTH)
    return out


def synthetic_caption_config(name: str | None = None, val_images: int = DEFAULT_VAL_IMAGES,
                             test_images: int = DEFAULT_TEST_IMAGES, max_length: int = ORT_MAX_LENGTH,
                             **knobs: Any) -> SyntheticCaptionConfig:
    """A ``SyntheticCaptionConfig`` from ``WorldConfig`` and ``CaptionWorldConfig`` knobs (``captions_per_image``
    is the captioning world's); named after the non-default knobs unless ``name``."""
    caption_keys = {f.name for f in dataclasses.fields(CaptionWorldConfig)} - {"world"}
    world = WorldConfig(**{k: v for k, v in knobs.items() if k not in caption_keys})
    cfg = CaptionWorldConfig(world=world, **{k: v for k, v in knobs.items() if k in caption_keys})
    if name is None:
        defaults = {**_caption_defaults(), "val_images": DEFAULT_VAL_IMAGES}
        given = {"val_images": val_images, "test_images": test_images, "max_length": max_length,
                 **{k: getattr(cfg, k) for k in caption_keys}}
        parts = [f"{f.name}-{_format(getattr(world, f.name))}" for f in dataclasses.fields(world)
                 if getattr(world, f.name) != getattr(WorldConfig(), f.name)]
        parts += [f"{k}-{_format(v)}" for k, v in sorted(given.items()) if v != defaults[k]]
        name = "+".join(parts) or "default"
    return SyntheticCaptionConfig(
        name=name, world=cfg, val_images=val_images, test_images=test_images, max_length=max_length,
        description=f"jaxvl synthetic captions {name!r}: {world.num_images} train + {val_images} val + "
                    f"{test_images} test images")


def _format(value: Any) -> str:
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def parse_caption_knobs(spec: str) -> dict[str, Any]:
    """``"num_images=64,grounding=0.5,test_images=8"`` -> typed ``synthetic_caption_config`` kwargs.

    Caption knobs (``captions_per_image``, ``grounding``, ``relation_prob``, ``attribute_prob``,
    ``next_to_radius``, ``on_band``, ``test_images``, ``max_length``) are cast to their default's type;
    the rest go to ``jaxvl.data.builders.synthetic.parse_knobs`` (``WorldConfig`` knobs, ``val_images``, ``name``).
    """
    defaults = _caption_defaults()
    world_keys = {f.name for f in dataclasses.fields(WorldConfig)} | {"val_images", "name"}
    out: dict[str, Any] = {}
    world_items = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if sep and key in defaults:
            try:
                out[key] = type(defaults[key])(value)
            except ValueError as e:
                raise ValueError(f"synthetic-captions knob {key}={value!r}: expected "
                                 f"{type(defaults[key]).__name__} ({e})") from e
        elif not sep or key in world_keys:
            world_items.append(item)
        else:
            raise ValueError(f"unknown synthetic-captions knob {key!r}; known: "
                             f"{', '.join(sorted(set(defaults) | world_keys))}")
    return {**parse_knobs(",".join(world_items)), **out}


class SyntheticCaptions(CaptionImages):
    """The synthetic captioning world's images, each with its ``captions_per_image`` generated captions and their
    noun phrases linked to the detections of the objects they name (``max_phrases`` = ``MAX_PHRASES``)."""

    name = SYNTHETIC_CAPTIONS_NAME
    BUILDER_CONFIGS = [synthetic_caption_config()]

    def _synthetic(self) -> SyntheticCaptionConfig:
        cfg = self.builder_config
        if not isinstance(cfg, SyntheticCaptionConfig):
            raise ValueError(f"{type(self).__name__} needs a SyntheticCaptionConfig; got {cfg!r}")
        return cfg

    @functools.cached_property
    def world(self) -> CaptionWorld:
        """The world holding every split's images (image ``i`` does not depend on the image count)."""
        cfg = self._synthetic()
        total = max(hi for _, hi in cfg.split_ranges.values())
        return CaptionWorld(dataclasses.replace(cfg.world, world=dataclasses.replace(cfg.world.world,
                                                                                     num_images=total)))

    def region_spec(self) -> RegionSpec:
        w = self._synthetic().world.world
        return RegionSpec(num_regions=w.num_regions, feature_dim=w.feature_dim, num_classes=w.num_classes)

    def caption_vocab(self) -> CaptionVocab:
        return CaptionVocab(self.world.vocabulary())

    def max_length(self) -> int:
        return self._synthetic().max_length

    def max_phrases(self) -> int:
        return MAX_PHRASES

    def split_stats(self) -> dict[str, dict[str, Any]]:
        return self._synthetic().stats

    def dataset_metadata(self) -> dict[str, Any]:
        cfg = self._synthetic()
        world = dataclasses.asdict(cfg.world)
        return {"source": "synthetic-captions", "caption_world": world, "label_list": self.world.world.label_list(),
                "val_images": cfg.val_images, "test_images": cfg.test_images,
                "split_ranges": {k: list(v) for k, v in cfg.split_ranges.items()}}

    def caption_splits(self) -> Mapping[str, CaptionSource]:
        def examples(split: str) -> Iterator[CaptionExample]:
            for i in range(*self._synthetic().split_ranges[split]):
                image = self.world[i]
                phrases = [[PhraseLink(start, end, tuple(int(r) for r in regions))
                            for (start, end), regions in zip(image.spans[c], image.linked_regions(c), strict=True)]
                           for c in range(len(image.captions))]
                yield CaptionExample(regions=image.regions, captions=[c.split(" ") for c in image.captions],
                                     phrases=phrases)

        return {split: functools.partial(examples, split) for split in self._synthetic().split_ranges}


def synthetic_caption_builder(config: SyntheticCaptionConfig, data_dir: str) -> SyntheticCaptions:
    """The synthetic captions builder of ``config`` under ``data_dir``, writing ArrayRecord (a config named like
    the registered default is passed by name, as ``synthetic_builders`` does)."""
    registered = any(c.name == config.name for c in SyntheticCaptions.BUILDER_CONFIGS)
    return SyntheticCaptions(config=config.name if registered else config, data_dir=data_dir,
                             file_format="array_record")
