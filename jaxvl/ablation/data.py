"""Grain batches of stored cross-modal ablation examples (``AblationPhrases``), at fixed shapes.

Two steps, so that bad data fails on the host before anything is compiled::

    source, info = open_split(out / "jaxvl_synthetic_ablation/default/1.0.0", "val")
    tokenizer = tokenizer_for(info)
    cfg = AblationPipelineConfig(batch_size=16)
    index = scan_ablation(source, tokenizer, cfg, label_matcher=LabelMatcher.from_label_list(labels))
    for batch in ablation_dataset(source, tokenizer, cfg, index):   # every example once, in order
        ...

``scan_ablation`` reads the split once: the phrase's sub-word span in the sentence (reference section
5.1, ``phrase_token_span``), the number of gold boxes, the LabelMatch label, and the dataset-mean
region feature vis4lang ablates with (VOLTA's ``_avg_feature``: the mean over examples of each
example's mean region feature, over the rows the model sees). A bad example raises ``BadRecord``
naming it, or with ``skip_bad`` is counted and left out. An empty split is an error.

``ablation_dataset`` yields every usable example exactly once, in order, in batches of the global
``batch_size`` split over the JAX processes (host ``p`` of ``P`` takes positions ``p, p + P, ...``, so
each global batch is a contiguous block); the last batch is padded with copies of the first example
marked ``valid = 0``. Fields (B rows, T = ``max_seq_length``, L = R + 1 with the global row, G gold boxes):
everything ``PretrainTransform`` gives for the sentence (``input_ids``, ``text_mask``, ``token_type_ids``
[B, T]; ``features`` [B, L, D], ``locations`` [B, L, 5], ``boxes`` [B, L, 4] pixels, ``region_mask``,
``region_target_mask`` [B, L]; ``cls_prob`` [B, L, K+1], ``objects_id``, ``objects_conf`` [B, L];
``num_boxes`` [B]) plus ``phrase_mask`` [B, T] int32 (the phrase's sub-words that survive truncation to
T), ``ref_boxes`` [B, G, 4] float32 and ``ref_mask`` [B, G] int32, ``valid`` [B] int32, ``example`` [B]
int32 (the position in ``index``) and, with a label matcher, ``vg_label`` [B] int32 ((K+1)-space, -1: none).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxvl.data.builders.common import RegionSpec, as_str, encode_regions
from jaxvl.data.grain import PretrainTransform, host_batch_size
from jaxvl.data.readers.flickr30k_entities import phrase_token_span
from jaxvl.data.records import AblationExample, BadRecord, RegionFeatures
from jaxvl.data.synthetic import World
from jaxvl.data.tokenizer import VOLTA_MAX_SEQ_LENGTH, Tokenizer

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AblationPipelineConfig:
    """Global ``batch_size``, text length, region count R (None: the stored R), the ``[IMG]`` row
    (the model config's ``add_global_imgfeat``) and G gold boxes per example (None: the split's largest)."""

    batch_size: int = 16
    max_seq_length: int = VOLTA_MAX_SEQ_LENGTH
    num_regions: int | None = None
    add_global_imgfeat: str | None = "first"
    max_ref_boxes: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_seq_length < 3:
            raise ValueError(f"max_seq_length={self.max_seq_length} must be >= 3 ([CLS], a phrase token, [SEP])")
        if self.add_global_imgfeat not in ("first", "last", None):
            raise ValueError(f"add_global_imgfeat={self.add_global_imgfeat!r}; expected 'first', 'last' or None")
        if self.max_ref_boxes is not None and self.max_ref_boxes < 1:
            raise ValueError(f"max_ref_boxes={self.max_ref_boxes} must be >= 1 or None")


@dataclasses.dataclass
class AblationIndex:
    """What ``scan_ablation`` learnt about a split. Arrays have one row per usable example, in order.

    ``records`` [N]: their record indices in the source; ``spans`` [N, 2]: phrase sub-words ``[start, end)``
    in ``Tokenizer.encode(sentence)`` coordinates (``[CLS]`` at 0); ``vg_labels`` [N] or None;
    ``mean_feature`` [D]; ``max_ref_boxes``: G; ``truncated``: phrases cut by ``max_seq_length``
    (``fully_truncated`` of them lost every token: vis4lang leaves them out); ``skipped``: the messages
    of the examples left out with ``skip_bad``.
    """

    records: np.ndarray
    spans: np.ndarray
    image_ids: tuple[str, ...]
    phrases: tuple[str, ...]
    mean_feature: np.ndarray
    max_ref_boxes: int
    vg_labels: np.ndarray | None = None
    truncated: int = 0
    fully_truncated: int = 0
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return int(self.records.shape[0])

    def max_phrase_tokens(self, max_seq_length: int) -> int:
        """The longest phrase's sub-words left after truncation to ``max_seq_length`` (at least 1): the
        ``AblationSpec.max_phrase_tokens`` that covers every batch of this split."""
        kept = np.minimum(self.spans[:, 1], max_seq_length - 1) - self.spans[:, 0]
        return max(1, int(kept.max(initial=0)))


def stored_ablation_example(ex: AblationExample, regions: RegionFeatures, spec: RegionSpec,
                            source: str = "<memory>") -> dict[str, Any]:
    """The record ``AblationPhrases`` stores for ``(ex, regions)``: for in-memory sources (tests, the demo)."""
    return {"image_id": ex.image_id, "sentence": ex.sentence, "phrase": ex.phrase, "entity_id": ex.entity_id,
            "phrase_type": ex.phrase_type, "sentence_index": int(ex.sentence_index),
            "first_word_index": int(ex.first_word_index),
            "ref_boxes": np.asarray(ex.ref_boxes, np.float32).reshape(-1, 4), **encode_regions(regions, spec, source)}


def world_ablation_source(world: World, images: Iterable[int]) -> list[dict[str, Any]]:
    """The stored records of the grounded phrases of ``images`` of a synthetic ``world``, in memory (what
    ``SyntheticAblation`` writes for them)."""
    c = world.cfg
    spec = RegionSpec(c.num_regions, c.feature_dim, c.num_classes)
    out = []
    for i in images:
        image = world[i]
        out.extend(stored_ablation_example(p, image.regions, spec, f"synthetic image {i}") for p in image.phrases)
    return out


def scan_ablation(source: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, cfg: AblationPipelineConfig,
                  label_matcher: Any | None = None, skip_bad: bool = False,
                  source_name: str = "ablation split") -> AblationIndex:
    """One pass over ``source`` (stored examples): spans, gold-box counts, labels, the mean region feature.

    ``label_matcher``: an object with ``match(phrase) -> int`` ((K+1)-space label or -1), e.g.
    ``jaxvl.ablation.labelmatch.LabelMatcher``. Raises ``BadRecord`` (naming the record) for a phrase
    whose sub-words cannot be located or a record without detector classes, unless ``skip_bad``;
    ``ValueError`` when no usable example is left or an example has more gold boxes than ``max_ref_boxes``.
    """
    records, spans, image_ids, phrases, labels, skipped = [], [], [], [], [], []
    feature_sum, with_regions, max_boxes, truncated, lost = 0.0, 0, 0, 0, 0
    for i in range(len(source)):
        element = source[i]
        where = f"{source_name}: record {i} (image {as_str(element['image_id'])!r})"
        try:
            if "cls_prob" not in element:
                raise BadRecord(f"{where}: no detector classes (cls_prob); the ablation needs them")
            sentence, phrase = as_str(element["sentence"]), as_str(element["phrase"])
            start, end = phrase_token_span(tokenizer, sentence, int(element["first_word_index"]), phrase, where)
            ref = np.asarray(element["ref_boxes"], np.float32).reshape(-1, 4)
            if ref.shape[0] == 0:
                raise BadRecord(f"{where}: phrase {phrase!r} has no gold box")
        except BadRecord as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            log.warning("skipping: %s", e)
            continue
        if cfg.max_ref_boxes is not None and ref.shape[0] > cfg.max_ref_boxes:
            raise ValueError(f"{where}: phrase {phrase!r} has {ref.shape[0]} gold boxes, more than "
                             f"max_ref_boxes={cfg.max_ref_boxes}; raise it (or leave it None: the split's largest)")
        last = cfg.max_seq_length - 1  # positions >= last are [SEP] or gone
        truncated += end > last
        lost += start >= last
        n = min(int(element["num_boxes"]), cfg.num_regions or int(element["num_boxes"]))
        if n:
            feature_sum = feature_sum + np.asarray(element["features"], np.float32)[:n].mean(0, dtype=np.float64)
            with_regions += 1
        records.append(i)
        spans.append((start, end))
        image_ids.append(as_str(element["image_id"]))
        phrases.append(phrase)
        labels.append(-1 if label_matcher is None else int(label_matcher.match(phrase)))
        max_boxes = max(max_boxes, ref.shape[0])
    if not records:
        raise ValueError(f"empty evaluation set: {source_name} has no usable example "
                         f"({len(source)} records, {len(skipped)} skipped)")
    if not with_regions:
        raise ValueError(f"{source_name}: no example has a detector region; the ablation needs regions")
    if skipped:
        log.warning("%s: skipped %d bad examples", source_name, len(skipped))
    return AblationIndex(records=np.asarray(records, np.int64), spans=np.asarray(spans, np.int32).reshape(-1, 2),
                         image_ids=tuple(image_ids), phrases=tuple(phrases),
                         mean_feature=(feature_sum / with_regions).astype(np.float32),
                         max_ref_boxes=cfg.max_ref_boxes or max_boxes,
                         vg_labels=None if label_matcher is None else np.asarray(labels, np.int32),
                         truncated=int(truncated), fully_truncated=int(lost), skipped=tuple(skipped))


class AblationRow(grain.transforms.Map):
    """Position in the (padded) evaluation order -> the fixed-shape fields of one row (module doc)."""

    def __init__(self, source: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, cfg: AblationPipelineConfig,
                 index: AblationIndex):
        self.source, self.cfg, self.index = source, cfg, index
        self.pretrain = PretrainTransform(tokenizer, cfg.max_seq_length, cfg.num_regions, cfg.add_global_imgfeat)

    def map(self, position: int) -> dict[str, np.ndarray]:
        index, cfg = self.index, self.cfg
        valid = position < len(index)
        j = int(position) if valid else 0
        element = self.source[int(index.records[j])]
        out = self.pretrain.map({**element, "caption": element["sentence"]})
        t = cfg.max_seq_length
        start, end = (int(x) for x in index.spans[j])
        phrase = np.zeros((t,), np.int32)
        phrase[start:min(end, t - 1)] = 1
        ref = np.asarray(element["ref_boxes"], np.float32).reshape(-1, 4)
        g = index.max_ref_boxes
        ref_boxes = np.zeros((g, 4), np.float32)
        ref_mask = np.zeros((g,), np.int32)
        ref_boxes[:len(ref)] = ref
        ref_mask[:len(ref)] = 1
        out.update(phrase_mask=phrase, ref_boxes=ref_boxes, ref_mask=ref_mask, valid=np.int32(valid),
                   example=np.int32(j))
        if index.vg_labels is not None:
            out["vg_label"] = np.int32(index.vg_labels[j])
        return out


def ablation_dataset(source: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, cfg: AblationPipelineConfig,
                     index: AblationIndex, shard: grain.sharding.ShardOptions | None = None) -> grain.MapDataset:
    """This host's batches of every example of ``index`` once, in order (a finite Grain ``MapDataset``;
    ``len`` = batches per host, the same on every host). ``shard`` defaults to this JAX process.
    ``.to_iter_dataset(grain.ReadOptions(num_threads=...))`` reads ahead with threads."""
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_host = host_batch_size(cfg.batch_size, shard)
    per_global = per_host * shard.shard_count
    padded = -(-len(index) // per_global) * per_global
    ds = grain.MapDataset.range(padded)[shard.shard_index::shard.shard_count]
    ds = ds.map(AblationRow(source, tokenizer, cfg, index))
    return ds.batch(per_host, drop_remainder=True)
