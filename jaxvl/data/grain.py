"""Grain helpers every task's input pipeline shares: open a prepared split, its tokenizer, the per-host
batch size, and the transform of a stored image-caption record into fixed-shape model inputs.

    source, info = open_split(out / "jaxvl_synthetic_pretrain/default/1.0.0", "train")
    tokenizer = tokenizer_for(info)                   # the world's words, or from_vocab_file(...)
    example = PretrainTransform(tokenizer, max_seq_length=16)(source[0])

Fields of ``PretrainTransform`` (T = ``max_seq_length``, L = R + 1 with a global ``[IMG]`` row):
``input_ids``, ``text_mask``, ``token_type_ids`` [T] int32 (``[CLS] caption [SEP]`` padded with the pad
id, segment 0); ``features`` [L, D] float32, ``locations`` [L, 5] float32, ``region_mask`` [L] int32,
``boxes`` [L, 4] float32 pixels (``jaxvl.data.regions``); ``region_target_mask`` [L] int32 (1 on detector
regions, 0 on ``[IMG]`` and padding: the rows region objectives may mask and predict); ``num_boxes`` []
int32; and when the dataset stores classes ``cls_prob`` [L, K+1] float32 (zeros on ``[IMG]``/padding),
``objects_id`` [L] int32 (-1 there) and ``objects_conf`` [L] float32 (0 there). The pretraining
pipeline (``jaxvl.pretrain.data``) and the ablation pipeline (``jaxvl.ablation.data``) batch them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxvl.data.builders.common import as_str, decode_regions
from jaxvl.data.imagestore import ImageStoreInfo, is_image_store, open_image_store
from jaxvl.data.imagestore.layout import is_file
from jaxvl.data.inplace import InPlaceInfo, is_in_place, open_in_place
from jaxvl.data.regions import region_inputs
from jaxvl.data.tokenizer import VOLTA_MAX_SEQ_LENGTH, Tokenizer

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------- sources


def open_split(dataset: str | os.PathLike, split: str, data_dir: str | os.PathLike | None = None,
               skip_bad: bool = False
               ) -> tuple[Sequence[dict[str, Any]], tfds.core.DatasetInfo | InPlaceInfo | ImageStoreInfo]:
    """A random-access source of one split of a prepared dataset, and the dataset's info.

    ``dataset`` is either the dataset's version directory (``<out>/<name>/<config>/<version>``, read
    with ``tfds.builder_from_directory``, no builder class needed; or an image store's, ``jaxvl.data.imagestore``,
    whose pairs come back as the pair layout's), a TFDS name such as
    ``"jaxvl_synthetic_pretrain/default"`` found under ``data_dir``, or a source string read in place
    (``volta-cc:PATH``, ``flickr30k-entities:ROOT,features=LMDB``: ``jaxvl.data.inplace``; ``skip_bad`` applies
    to those and to image stores, whose records are joined and checked on read). Examples come back
    as dicts of numpy arrays, Python ints and ``bytes`` (text); the info's ``full_name`` and ``metadata`` are
    what the pipelines read.
    """
    path = os.fspath(dataset)
    if is_image_store(path):
        return open_image_store(path, split, skip_bad)
    prepared = is_file(os.path.join(path, "dataset_info.json"))  # a local path or a URL (gs://...)
    if not prepared and is_in_place(path):
        return open_in_place(path, split, skip_bad)
    if prepared:
        try:
            builder = tfds.builder_from_directory(path)
        except Exception as e:  # TFDS raises protobuf / JSON / KeyError kinds for a damaged dataset_info.json
            raise ValueError(f"{os.path.join(path, 'dataset_info.json')}: not a readable TFDS dataset "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    else:
        import jaxvl.data.builders  # noqa: F401 -- registers the jaxvl builders by name

        builder = tfds.builder(path, data_dir=None if data_dir is None else os.fspath(data_dir))
    if split not in builder.info.splits:
        raise ValueError(f"{path}: no split {split!r}; it has {sorted(builder.info.splits)}")
    warn_slow_protobuf()
    return builder.as_data_source(split=split), builder.info


SLOW_PROTOBUF_BELOW = 7
"""protobuf below this major version turns a ``tf.Example`` float list into numpy element by element: 5.4 ms for
a ctrl pair's 131,000 floats with protobuf 6.33.6 against 0.04-0.13 ms with 7.36.2 (BENCHMARKS.md, "Feeding an
accelerator"). apache-beam 2.78 (the ``beam`` extra) requires protobuf < 7."""


@functools.cache
def warn_slow_protobuf() -> bool:
    """Warns once per process when a TFDS (pair-layout) split is read with protobuf below ``SLOW_PROTOBUF_BELOW``;
    returns whether protobuf is that old."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        installed = version("protobuf")
    except PackageNotFoundError:
        return False
    if int(installed.split(".")[0]) >= SLOW_PROTOBUF_BELOW:
        return False
    log.warning("reading a pair-layout (tf.Example) split with protobuf %s, which decodes float lists several times "
                "slower than protobuf >= %d (about 6 vs 1.6 ms of CPU per ctrl-size pair through the pipeline); "
                "apache-beam pins protobuf < 7: train from an environment without it, or prepare with "
                "layout=images", installed, SLOW_PROTOBUF_BELOW)
    return True


def tokenizer_for(info: tfds.core.DatasetInfo | InPlaceInfo | ImageStoreInfo,
                  vocab_file: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer of a dataset: from ``vocab_file`` when given (e.g. bert-base-uncased's ``vocab.txt`` or its
    HF ``tokenizer.json``), else from the word list the dataset's metadata carries (the synthetic world's
    vocabulary). A dataset without one needs the config key ``data.vocab_file``: the error names it."""
    if vocab_file is not None:
        return Tokenizer.from_vocab_file(vocab_file)
    words = (info.metadata or {}).get("words")
    if not words:
        raise ValueError(f"dataset {info.full_name} carries no word list of its own: set --config.data.vocab_file="
                         f"PATH, the vocabulary its text was written for (a BERT vocab.txt, e.g. bert-base-uncased's, "
                         f"or its HF tokenizer.json)")
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


def host_batches(ds: grain.MapDataset, per_host: int, shard: grain.sharding.ShardOptions, finite: bool,
                 num_threads: int, prefetch_buffer_size: int) -> grain.IterDataset:
    """Transformed examples -> this host's batches: chunks of ``per_host`` consecutive rows (``drop_remainder``);
    a ``finite`` stream first cut to a multiple of P chunks (every host yields as many batches); host ``p`` takes
    chunks ``p, p + P, ...`` (slice ``p`` of each global batch); read ahead with threads."""
    ds = ds.batch(per_host, drop_remainder=True)
    if finite:
        ds = ds[: len(ds) // shard.shard_count * shard.shard_count]
    ds = ds[shard.shard_index::shard.shard_count]
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size))

