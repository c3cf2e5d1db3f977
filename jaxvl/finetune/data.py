"""Fine-tuning data: a task's examples, the Grain pipeline over them, and the rows the model reads.

A task split (``TaskSplit``) is a random-access sequence of examples, each a dict of numpy arrays. The fields,
per task type (T tokens, L = R + 1 region rows with the global ``[IMG]`` row first, D feature size, C labels):

- every task: ``input_ids``, ``token_type_ids``, ``text_mask`` int32 [T]; ``features`` float32 [L, D],
  ``locations`` float32 [L, 5], ``region_mask`` int32 [L];
- VL-classifier (VQA, GQA): ``target`` float32 [C], the soft scores;
- VL-tri-classifier (SNLI-VE), VL-binary-classifier (NLVR2): ``target`` int32 [], the label;
- V-logit (RefCOCO+): ``target`` float32 [L], each row's IoU with the gold box (0 on padding);
- VL-logit (retrieval): the K = 4 options of VOLTA's training set per caption, text and image fields with an
  option axis ([4, T], [4, L, D], ...); ``target`` int32 [] (0: the positive is the first option);
- VL-binary-classifier: the image fields hold the example's two images ([2, L, D], ...).

Batches stack examples on a leading axis [B, ...]. ``model_rows`` turns a batch of either layout into the [rows,
...] arrays the model reads (an option axis or NLVR2's image axis folded into the rows, the text repeated for each
image: rows 2i and 2i + 1 are example i, the layout VOLTA's ``BertForVLTasks`` expects). Evaluation batches carry
``example_mask`` int32 [B] (1 = a real example, 0 = padding of the last batch).

The embedded synthetic worlds (``synthetic_task_split``) give every task with a world
(``jaxvl.data.synthetic.tasks*``: answers planted in the images' gold objects) a train and a val split with no
download; VOLTA's own task files with their feature LMDBs come through ``jaxvl.finetune.files`` (lazy: features read
per example).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np

from jaxvl.data.grain import host_batch_size, host_batches
from jaxvl.data.synthetic.tasks import task_vocabulary
from jaxvl.data.synthetic.world import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models.volta.task_heads import TaskSpec

TEXT_KEYS = ("input_ids", "token_type_ids", "text_mask")
IMAGE_KEYS = ("features", "locations", "region_mask")
MODEL_KEYS = TEXT_KEYS + IMAGE_KEYS


class ArraySource(Sequence):
    """A Grain random-access source over ``arrays`` ({field: [N, ...]}): item i is {field: arrays[field][i]}."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)
        self.size = len(next(iter(self.arrays.values())))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}


@dataclasses.dataclass(frozen=True)
class TaskSplit:
    """One split of a task: ``examples``, a random-access sequence of example dicts (the module doc's fields, one
    example each, no leading axis: an ``ArraySource`` for in-memory arrays, or a lazy source reading files), the
    ``tokenizer`` that encoded it, ``num_labels`` (the head's label count the data needs, for VL-classifier tasks)
    and ``chance``, the expected score of the split's uniform (or majority) guess."""

    examples: Sequence[Mapping[str, np.ndarray]]
    tokenizer: Tokenizer
    num_labels: int
    chance: float

    def __len__(self) -> int:
        return len(self.examples)

    def batch(self, rows: Sequence[int]) -> dict[str, np.ndarray]:
        """Examples ``rows`` stacked: {field: [len(rows), ...]}."""
        if isinstance(self.examples, ArraySource):
            return {k: v[np.asarray(rows)] for k, v in self.examples.arrays.items()}
        items = [self.examples[int(i)] for i in rows]
        return {k: np.stack([it[k] for it in items]) for k in items[0]}


# ================================================================================ the model's rows


def model_rows(task: TaskSpec, batch: Mapping[str, Any]) -> dict[str, Any]:
    """A batch (module doc) -> the model's inputs [rows, ...]: the option axis of retrieval folded into the rows
    ([B, 4, ...] -> [4B, ...], an example's options adjacent); NLVR2's two images folded and its text repeated
    ([2B, ...], rows 2i and 2i + 1 = example i); other tasks as they are."""
    fields = {k: batch[k] for k in MODEL_KEYS}
    if task.type == "VL-logit":
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in fields.items()}
    if task.type == "VL-binary-classifier":
        text = {k: fields[k].repeat(2, axis=0) for k in TEXT_KEYS}
        return {**text, **{k: fields[k].reshape(-1, *fields[k].shape[2:]) for k in IMAGE_KEYS}}
    return fields


def score_region_mask(task: TaskSpec, batch: Mapping[str, Any]) -> Any:
    """The region mask ``task_score`` reads (V-logit: the batch's [B, L]); None for the other tasks."""
    return batch["region_mask"] if task.type == "V-logit" else None


# ==================================================================================== pipelines


def train_dataset(split: TaskSplit, batch_size: int, seed: int,
                  shard: grain.sharding.ShardOptions | None = None, num_threads: int = 2) -> grain.IterDataset:
    """This host's endless stream of training batches: the split shuffled per epoch (``seed``), repeated, cut into
    global batches of ``batch_size`` (this host's rows of each); deterministic and resumable (Grain iterator
    state)."""
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    per_host = host_batch_size(batch_size, shard)
    if len(split) < batch_size:
        raise ValueError(f"the train split has {len(split)} examples, fewer than one batch of {batch_size}")
    ds = grain.MapDataset.source(split.examples).shuffle(seed=seed).repeat(None)
    return host_batches(ds, per_host, shard, False, num_threads, 2)


def eval_batches(split: TaskSplit, batch_size: int) -> list[dict[str, np.ndarray]]:
    """The whole split in order as batches of ``batch_size`` (the last padded by repeating its first row), each
    with ``example_mask`` int32 [B] (1 = real)."""
    n, out = len(split), []
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        real = rows < n
        rows = np.where(real, rows, start)
        out.append({**split.batch(rows), "example_mask": real.astype(np.int32)})
    return out


# ============================================================================== synthetic worlds


@functools.cache
def task_world(task: str, num_images: int, num_regions: int, seed: int) -> World:
    """The world of a synthetic task: a colour world (4 colour words in their own feature dims) with a sharp
    detector; images of 1-2 objects for retrieval and NLVR2, 2-3 for VQA, RefCOCO+ and SNLI-VE."""
    few = task in ("retrieval", "nlvr2")
    return World(WorldConfig(num_images=num_images, num_regions=num_regions, min_objects=1 if few else 2,
                             max_objects=2 if few else 3, num_classes=12, num_attributes=4, colour_dims=4,
                             detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0), detector_temperature=0.5, seed=seed))


def synthetic_task_split(task: str, split: str, train_images: int, val_images: int, num_regions: int,
                         max_seq_length: int, seed: int = 0) -> TaskSplit:
    """``split`` ("train" or "val") of ``task``'s synthetic world: ``train_images`` world images for training, the
    next ``val_images`` held out. Example draws depend on (task, split, sizes, seed) only."""
    from jaxvl.data.synthetic import tasks_nlvr2, tasks_refer, tasks_retrieval, tasks_snli_ve, tasks_vqa

    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: the synthetic task worlds have 'train' and 'val'")
    world = task_world(task, train_images + val_images, num_regions, seed)
    tok = Tokenizer.from_words(tasks_snli_ve.snli_ve_vocabulary(world) if task == "snli-ve" else task_vocabulary(world))
    images = range(train_images) if split == "train" else range(train_images, train_images + val_images)
    draw = seed + (split == "val")
    if task == "vqa":
        answers = tasks_vqa.answer_vocabulary(world)
        b = tasks_vqa.vqa_batch(world, tasks_vqa.vqa_examples(world, images, seed=draw), tok, max_seq_length)
        chance = float(b["target"].mean(0).max())  # always answering the most frequent-scoring answer
        return TaskSplit(_inputs(b, target=b["target"]), tok, len(answers), chance)
    if task == "refcoco+":
        b = tasks_refer.refer_batch(world, tasks_refer.refer_examples(world, images, seed=draw), tok, max_seq_length)
        return TaskSplit(_inputs(b, target=b["target"]), tok, 1, tasks_refer.refer_chance(b))
    if task == "nlvr2":
        examples = tasks_nlvr2.nlvr2_examples(world, images, 4 * len(images), count_share=0.0, seed=draw)
        b = tasks_nlvr2.nlvr2_batch(world, examples, tok, max_seq_length)
        return TaskSplit(_inputs(b, target=b["labels"].astype(np.int32)), tok, 2, 0.5)
    if task == "snli-ve":
        examples = tasks_snli_ve.snli_ve_examples(world, images, seed=draw)
        b = tasks_snli_ve.snli_ve_batch(world, examples, tok, max_seq_length)
        return TaskSplit(_inputs(b, target=b["label"]), tok, 3, float(np.bincount(b["label"]).max() / len(examples)))
    if task == "retrieval":
        rset = tasks_retrieval.retrieval_set(world, images)
        options = tasks_retrieval.retrieval_options(world, rset, seed=draw)
        b = tasks_retrieval.retrieval_batch(world, rset, options, tok, max_seq_length)
        return TaskSplit(_inputs(b, target=np.zeros(len(options), np.int32)), tok, 1, 1 / options.shape[1])
    raise ValueError(f"task {task!r} has no synthetic world (worlds: vqa, retrieval, refcoco+, nlvr2, snli-ve)")


def retrieval_items(train_images: int, val_images: int, num_regions: int, max_seq_length: int, seed: int = 0
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """The synthetic retrieval world's held-out images and captions as ``RetrievalProgram`` items: (texts {input_ids,
    token_type_ids, text_mask} [N x M, T], images {features, locations, region_mask} [N, L, ...], caption_image
    [N x M], each caption's own image)."""
    from jaxvl.data.synthetic import tasks
    from jaxvl.data.synthetic.tasks_retrieval import retrieval_set

    world = task_world("retrieval", train_images + val_images, num_regions, seed)
    tok = Tokenizer.from_words(task_vocabulary(world))
    rset = retrieval_set(world, range(train_images, train_images + val_images))
    texts = tasks.text_inputs(rset.captions, tok, max_seq_length)
    images = tasks.image_inputs(world, [int(i) for i in rset.images])
    return texts, {k: images[k] for k in IMAGE_KEYS}, np.asarray(rset.caption_image)


def _inputs(batch: Mapping[str, np.ndarray], target: np.ndarray) -> ArraySource:
    return ArraySource({**{k: batch[k] for k in MODEL_KEYS}, "target": target})


__all__ = ["IMAGE_KEYS", "MODEL_KEYS", "TEXT_KEYS", "ArraySource", "TaskSplit", "eval_batches", "model_rows",
           "retrieval_items", "score_region_mask", "synthetic_task_split", "task_world", "train_dataset"]
