"""Grain input pipelines over the prepared ArrayRecord datasets: deterministic, resumable, per host.

The pretraining pipeline (``pretrain_dataset``) reads a split of a ``PretrainPairs`` dataset (prepared
by ``jaxvl prepare``) through ``tfds`` data sources, with no TensorFlow::

    source, info = open_split(out / "jaxvl_synthetic_pretrain/default/1.0.0", "train")
    tokenizer = tokenizer_for(info)                   # the world's words, or from_vocab_file(...)
    ds = pretrain_dataset(source, tokenizer, PipelineConfig(batch_size=256, seed=42))
    it = iter(ds)
    batch = next(it)                                  # dict of numpy arrays, this host's rows
    state = it.get_state()                            # save with the model; it.set_state(state) resumes

Order of operations (all index-based, so the output depends only on the seed and the config):

1. global shuffle of the whole split (``MapDataset.shuffle``; each epoch reshuffled with seed + epoch);
2. ``repeat(num_epochs)`` (None: forever);
3. per-example transform to fixed shapes (``PretrainTransform``);
4. chunks of ``batch_size // P`` consecutive rows with ``drop_remainder``, so every batch has the
   same shapes (one compilation of the step);
5. per-host split: host ``p`` of ``P`` takes chunks ``p, p + P, ...`` (a finite stream is first cut
   to a multiple of P chunks so every host yields the same number of batches). So global batch
   ``k`` is rows ``[k * batch_size, (k + 1) * batch_size)`` of the shuffled stream whatever P is,
   host ``p`` holding its ``p``-th slice: with ``global_batch.to_global`` a run on P hosts sees
   exactly the batches of a run on one (same masking draws, same losses);
6. ``to_iter_dataset`` with threads and prefetch; the iterator's ``get_state``/``set_state`` save and
   restore the position exactly.

Batch fields (B = per-host batch, T = ``max_seq_length``, L = R + 1 with a global ``[IMG]`` row):
``input_ids``, ``text_mask``, ``token_type_ids`` [B, T] int32 (``[CLS] caption [SEP]`` padded with
the pad id, segment 0); ``features`` [B, L, D] float32, ``locations`` [B, L, 5] float32,
``region_mask`` [B, L] int32, ``boxes`` [B, L, 4] float32 pixels (``jaxvl.data.regions``);
``region_target_mask`` [B, L] int32 (1 on detector regions, 0 on ``[IMG]`` and padding: the rows
region objectives may mask and predict); ``num_boxes`` [B] int32; and when the dataset stores classes
``cls_prob`` [B, L, K+1] float32 (zeros on ``[IMG]``/padding), ``objects_id`` [B, L] int32 (-1 there)
and ``objects_conf`` [B, L] float32 (0 there).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxvl.data.builders.common import as_str, decode_regions
from jaxvl.data.regions import region_inputs
from jaxvl.data.tokenizer import VOLTA_MAX_SEQ_LENGTH, Tokenizer


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """How to read a split: global batch size, text length, region count, seed, epochs, threads.

    ``batch_size`` is the global batch: each of the P JAX processes yields ``batch_size // P`` rows.
    ``num_regions`` is R of the model input (None: the dataset's stored R); with
    ``add_global_imgfeat`` ("first", "last" or None, the model config's field) L = R + 1.
    """

    batch_size: int = 16
    max_seq_length: int = VOLTA_MAX_SEQ_LENGTH
    num_regions: int | None = None
    add_global_imgfeat: str | None = "first"
    seed: int = 0
    shuffle: bool = True
    num_epochs: int | None = None
    num_threads: int = 4
    prefetch_buffer_size: int = 16

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.max_seq_length < 2:
            raise ValueError(f"max_seq_length={self.max_seq_length} must be >= 2 ([CLS] and [SEP])")
        if self.add_global_imgfeat not in ("first", "last", None):
            raise ValueError(f"add_global_imgfeat={self.add_global_imgfeat!r}; expected 'first', 'last' or None")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs={self.num_epochs} must be >= 1 or None (forever)")


# --------------------------------------------------------------------------------------- sources


def open_split(dataset: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None,
               ) -> tuple[Sequence[dict[str, Any]], tfds.core.DatasetInfo]:
    """A random-access source of one split of a prepared dataset, and the dataset's info.

    ``dataset`` is either the dataset's version directory (``<out>/<name>/<config>/<version>``, read
    with ``tfds.builder_from_directory``, no builder class needed) or a TFDS name such as
    ``"jaxvl_synthetic_pretrain/default"`` found under ``data_dir``. Examples come back as dicts of
    numpy arrays, Python ints and ``bytes`` (text).
    """
    path = os.fspath(dataset)
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        builder = tfds.builder_from_directory(path)
    else:
        import jaxvl.data.builders  # noqa: F401 -- registers the jaxvl builders by name

        builder = tfds.builder(path, data_dir=None if data_dir is None else os.fspath(data_dir))
    if split not in builder.info.splits:
        raise ValueError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
    return builder.as_data_source(split=split), builder.info


def tokenizer_for(info: tfds.core.DatasetInfo, vocab_file: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer of a dataset: from ``vocab_file`` when given (e.g. bert-base-uncased's ``vocab.txt``),
    else from the word list the dataset's metadata carries (the synthetic world's vocabulary)."""
    if vocab_file is not None:
        return Tokenizer.from_vocab_file(vocab_file)
    words = (info.metadata or {}).get("words")
    if not words:
        raise ValueError(f"dataset {info.full_name} carries no word list in its metadata; pass a vocabulary file")
    return Tokenizer.from_words(words)


# ------------------------------------------------------------------------------------- transform


def _rows(values: np.ndarray, num_regions: int, fill: float | int, add_global: str | None,
          dtype: np.dtype) -> np.ndarray:
    """[n, ...] per-region values -> [L, ...]: cut or padded with ``fill`` to R rows, plus a ``fill`` row
    for ``[IMG]`` first or last."""
    out = np.full((num_regions, *values.shape[1:]), fill, dtype)
    n = min(len(values), num_regions)
    out[:n] = values[:n]
    if add_global is None:
        return out
    row = np.full((1, *values.shape[1:]), fill, dtype)
    return np.concatenate([row, out] if add_global == "first" else [out, row], axis=0)


class PretrainTransform(grain.transforms.Map):
    """One stored pretraining example -> fixed-shape model inputs (fields in the module doc, without B)."""

    def __init__(self, tokenizer: Tokenizer, max_seq_length: int = VOLTA_MAX_SEQ_LENGTH,
                 num_regions: int | None = None, add_global_imgfeat: str | None = "first"):
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.num_regions = num_regions
        self.add_global = add_global_imgfeat

    def map(self, element: Mapping[str, Any]) -> dict[str, np.ndarray]:
        regions = decode_regions(element)
        r = self.num_regions or int(np.shape(element["features"])[0])
        ids, mask = self.tokenizer.encode(as_str(element["caption"]), self.max_seq_length)
        out = dict(input_ids=ids, text_mask=mask, token_type_ids=np.zeros_like(ids))
        out.update(region_inputs(regions, r, self.add_global))
        real = np.ones((regions.num_boxes,), np.int32)
        out["region_target_mask"] = _rows(real, r, 0, self.add_global, np.int32)
        out["num_boxes"] = np.int32(min(regions.num_boxes, r))
        if regions.cls_prob is not None:
            out["cls_prob"] = _rows(regions.cls_prob, r, 0.0, self.add_global, np.float32)
            out["objects_id"] = _rows(regions.objects_id, r, -1, self.add_global, np.int32)
            out["objects_conf"] = _rows(regions.objects_conf, r, 0.0, self.add_global, np.float32)
        return out


# -------------------------------------------------------------------------------------- pipeline


def host_batch_size(global_batch_size: int, shard: grain.sharding.ShardOptions) -> int:
    """Rows per host: the global batch split evenly over ``shard.shard_count`` processes."""
    if global_batch_size % shard.shard_count:
        raise ValueError(f"global batch_size={global_batch_size} is not divisible by the "
                         f"{shard.shard_count} JAX processes")
    return global_batch_size // shard.shard_count


def pretrain_dataset(source: Sequence[Mapping[str, Any]], tokenizer: Tokenizer, cfg: PipelineConfig,
                     shard: grain.sharding.ShardOptions | None = None) -> grain.IterDataset:
    """This host's batches of ``source`` (a split from ``open_split``), as a Grain ``IterDataset``.

    ``shard`` defaults to this JAX process (``ShardByJaxProcess``). ``iter(...)`` gives an iterator of
    dicts of numpy arrays (fields in the module doc) with ``get_state``/``set_state``; the sequence of
    batches depends only on ``cfg`` (seed included) and the shard, never on threads or timing.
    A finite run (``num_epochs``) ends after its last full global batch (``batch_size`` rows of all hosts).
    """
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_host = host_batch_size(cfg.batch_size, shard)
    if len(source) < shard.shard_count * per_host:
        raise ValueError(f"the split has {len(source)} examples, fewer than one global batch of {cfg.batch_size}")
    ds = grain.MapDataset.source(source)
    if cfg.shuffle:
        ds = ds.shuffle(seed=cfg.seed)
    ds = ds.repeat(cfg.num_epochs)
    ds = ds.map(PretrainTransform(tokenizer, cfg.max_seq_length, cfg.num_regions, cfg.add_global_imgfeat))
    ds = ds.batch(per_host, drop_remainder=True)
    if cfg.num_epochs is not None:
        ds = ds[: len(ds) // shard.shard_count * shard.shard_count]
    ds = ds[shard.shard_index::shard.shard_count]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.num_threads,
                                                prefetch_buffer_size=cfg.prefetch_buffer_size))
