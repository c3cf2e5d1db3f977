"""The pretraining input pipeline over a prepared ArrayRecord dataset: deterministic, resumable, per host.

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
   host ``p`` holding its ``p``-th slice: with ``jaxvl.runtime.sharding.to_global`` a run on P hosts sees
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
from collections.abc import Mapping, Sequence
from typing import Any

import grain

from jaxvl.data.grain import PretrainTransform, host_batch_size, host_batches
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
    return host_batches(ds, per_host, shard, cfg.num_epochs is not None, cfg.num_threads, cfg.prefetch_buffer_size)
