"""VOLTA's downstream task files joined to their per-image feature LMDB: a ``TaskSplit`` for ``jaxvl finetune``.

``data.dataset`` spelling (relative paths as in VOLTA's ``config_tasks/*.yml``, from the working directory)::

    volta:ROOT,features=LMDB[,val_features=LMDB]

``ROOT`` is the task's ``dataroot`` in the yml, ``features`` its ``features_h5path1`` (VOLTA's per-image feature
LMDB, ``jaxvl.data.readers.volta_lmdb.FeatureLMDB``), ``val_features`` an LMDB for the val split only (GQA's
``features_h5path2``; default: ``features``). Files read per task (train / val = VOLTA's split names):

- ``vqa`` (``datasets/vqa/annotations``): ``v2_OpenEnded_mscoco_{train,val}2014_questions.json``,
  ``cache/{train,val}_target.pkl``, ``trainval_ans2label.pkl`` (+ ``trainval_label2ans.pkl``, checked if
  present); train / val (VOLTA's ``trainval`` / ``minval`` variants are left out);
- ``gqa`` (``datasets/gqa/annotations``): ``{train,val}_target.pkl`` (questions inside), ``trainval_ans2label.pkl``
  (+ label2ans); train / val. Features must be per-image LMDBs: VOLTA's ``serialized_lmdb`` GQA stores are not read;
- ``retrieval`` (``datasets/flickr30k``): ``annotations/{train,valid}_ann.jsonl``, ``hard_negative.pkl`` (train);
  train / valid;
- ``refcoco+`` (``datasets/refcoco+_unc/annotations``): ``refcoco+/refs(unc).p`` + ``refcoco+/instances.json``
  (REFER's layout); REFER splits train / val, one example per sentence;
- ``nlvr2`` (``datasets/nlvr2/annotations``): ``{train,dev}.jsonl``; train / dev;
- ``snli-ve`` (``datasets/snli_ve/annotations``): ``{train,dev}.jsonl``; train / dev; pairs with no gold label
  (``"-"``, VOLTA's empty target) are left out: the label field holds one label.

Examples (``jaxvl.finetune.data``'s fields) come from lazy sources (``.sources``): texts tokenised once
(``[CLS] text[:T - 2] [SEP]``, VOLTA's truncation), targets in memory, regions read from the LMDB per example.
Targets are VOLTA's: VQA / GQA soft scores [C] from the ``*_target.pkl``; RefCOCO+ the IoU of every row's box
(global row included) with the gold ``[x, y, x + w, y + h]`` box; NLVR2 / SNLI-VE the label (SNLI-VE's
``LABEL_MAP``: contradiction 0, neutral 1, entailment 2). Retrieval: per caption VOLTA's 4 options (the positive;
a random caption of another image with the image; the caption with a random other image; a caption of a
``hard_negative.pkl`` image, pool columns 1..K-1, with the image) drawn once with ``seed`` (fixed per caption
for the whole run: VOLTA redraws per epoch); val items are 4-option items too, their 4th option a random
caption (VOLTA's non-train draw); the full score matrix and R@K of VOLTA's ``RetrievalDatasetVal`` are not
built here.

``chance``: VQA / GQA the mean target of the best single answer; NLVR2 / SNLI-VE the majority label's share;
RefCOCO+ a uniform pick among real rows (over at most ``REFER_CHANCE_SAMPLE`` evenly spaced examples, which
reads their images); retrieval 1/4.

Bad input raises one error line before any compilation: the readers' ``BadRecord`` / ``FileNotFoundError``
naming the file and record, and an image missing from the LMDB naming the image id, the LMDB and the record.
"""

from __future__ import annotations

import os

import numpy as np

from jaxvl.data.readers.tasks.answers import read_answer_vocab
from jaxvl.data.readers.tasks.nlvr2 import read_nlvr2_jsonl
from jaxvl.data.readers.tasks.refer import read_refer, refer_sentences, refs_in_split
from jaxvl.data.readers.tasks.retrieval import read_hard_negatives, read_retrieval_jsonl
from jaxvl.data.readers.tasks.snli_ve import read_snli_ve_jsonl
from jaxvl.data.readers.tasks.vqa import read_answer_targets, read_vqa_split
from jaxvl.data.records import BadRecord
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.finetune.data import TaskSplit
from jaxvl.finetune.files.sources import (
    ImagePairExamples,
    ImageStore,
    IoUTargets,
    LabelTargets,
    RetrievalExamples,
    SoftTargets,
    TextImageExamples,
    Texts,
)

TASKS = ("vqa", "retrieval", "refcoco+", "nlvr2", "snli-ve", "gqa")
SPLIT_NAMES = {"vqa": ("train", "val"), "gqa": ("train", "val"), "retrieval": ("train", "valid"),
               "refcoco+": ("train", "val"), "nlvr2": ("train", "dev"), "snli-ve": ("train", "dev")}
OPTIONS = ("features", "val_features")
REFER_CHANCE_SAMPLE = 2000
USAGE = "volta:ROOT,features=LMDB[,val_features=LMDB]"


def parse_dataset(dataset: str) -> tuple[str, dict[str, str]]:
    """``volta:ROOT,features=...[,val_features=...]`` -> (ROOT, options); ValueError naming the problem."""
    kind, _, rest = dataset.partition(":")
    parts = [p.strip() for p in rest.split(",")]
    if kind != "volta" or not parts[0] or "=" in parts[0]:
        raise ValueError(f"data.dataset={dataset!r}: expected {USAGE}")
    options = {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if key not in OPTIONS or not eq or not value:
            raise ValueError(f"data.dataset={dataset!r}: bad option {part!r}; expected {USAGE}")
        options[key] = value
    if "features" not in options:
        raise ValueError(f"data.dataset={dataset!r}: missing features=LMDB (the yml's features_h5path1); "
                         f"expected {USAGE}")
    return parts[0], options


def task_files_split(task: str, dataset: str, split: str, max_seq_length: int, num_regions: int,
                     vocab_file: str, seed: int = 0) -> TaskSplit:
    """``split`` ("train" or "val") of ``task``'s VOLTA files (module doc); ``seed`` draws retrieval's options."""
    if task not in TASKS:
        raise ValueError(f"task {task!r}: VOLTA's task files are read for {', '.join(TASKS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split {split!r}: expected 'train' or 'val'")
    root, options = parse_dataset(dataset)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data.dataset {dataset!r}: {root}: no such directory (the task's VOLTA dataroot)")
    if not vocab_file:
        raise ValueError("config data.vocab_file is empty: give the BERT vocab.txt VOLTA's tokenizer uses")
    tokenizer = Tokenizer.from_vocab_file(vocab_file)
    images = ImageStore(options["val_features"] if split == "val" and "val_features" in options
                        else options["features"], num_regions)
    name = SPLIT_NAMES[task][split == "val"]
    read = {"vqa": _vqa, "gqa": _vqa, "retrieval": _retrieval, "refcoco+": _refer, "nlvr2": _nlvr2,
            "snli-ve": _snli_ve}[task]
    return read(task, root, name, tokenizer, max_seq_length, images, seed)


def _vqa(task: str, root: str, split: str, tok: Tokenizer, max_seq_length: int, images: ImageStore,
         seed: int) -> TaskSplit:
    label2ans = os.path.join(root, "trainval_label2ans.pkl")
    vocab = read_answer_vocab(os.path.join(root, "trainval_ans2label.pkl"),
                              label2ans if os.path.exists(label2ans) else None)
    if task == "vqa":
        targets_path = os.path.join(root, "cache", f"{split}_target.pkl")
        entries = read_vqa_split(os.path.join(root, f"v2_OpenEnded_mscoco_{split}2014_questions.json"),
                                 targets_path, vocab)
    else:  # GQA: the questions are inside the targets
        targets_path = os.path.join(root, f"{split}_target.pkl")
        entries = sorted(read_answer_targets(targets_path, vocab), key=lambda t: t.question_id)
        for t in entries:
            if t.question is None:
                raise BadRecord(f"{targets_path}: question_id {t.question_id}: no 'question' field")
    image_ids = [e.image_id for e in entries]
    images.require(image_ids, lambda i: f"{targets_path} question_id {entries[i].question_id}")
    target = SoftTargets([e.labels for e in entries], [e.scores for e in entries], len(vocab))
    text = Texts.encode([e.question for e in entries], tok, max_seq_length)
    return TaskSplit(TextImageExamples(text, image_ids, images, target), tok, len(vocab), target.chance())


def _refer(task: str, root: str, split: str, tok: Tokenizer, max_seq_length: int, images: ImageStore,
           seed: int) -> TaskSplit:
    refs_path = os.path.join(root, task, "refs(unc).p")
    entries = refer_sentences(refs_in_split(read_refer(refs_path, os.path.join(root, task, "instances.json")), split))
    if not entries:
        raise BadRecord(f"{refs_path}: no ref in split {split!r}")
    image_ids = [e.image_id for e in entries]
    images.require(image_ids, lambda i: f"{refs_path} ref_id {entries[i].ref_id} sent_id {entries[i].sent_id}")
    gold = np.array([(x, y, x + w, y + h) for x, y, w, h in (e.bbox for e in entries)], np.float32)
    source = TextImageExamples(Texts.encode([e.caption for e in entries], tok, max_seq_length), image_ids, images,
                               IoUTargets(gold))
    return TaskSplit(source, tok, 1, source.refer_chance(REFER_CHANCE_SAMPLE))


def _nlvr2(task: str, root: str, split: str, tok: Tokenizer, max_seq_length: int, images: ImageStore,
           seed: int) -> TaskSplit:
    path = os.path.join(root, f"{split}.jsonl")
    entries = read_nlvr2_jsonl(path)
    pairs = [(e.image_id_0, e.image_id_1) for e in entries]
    for side in (0, 1):
        images.require([p[side] for p in pairs], lambda i: f"{path} line {entries[i].line} "
                       f"(identifier {entries[i].identifier!r})")
    target = LabelTargets([e.label for e in entries])
    text = Texts.encode([e.sentence for e in entries], tok, max_seq_length)
    return TaskSplit(ImagePairExamples(text, pairs, images, target), tok, 2, target.chance())


def _snli_ve(task: str, root: str, split: str, tok: Tokenizer, max_seq_length: int, images: ImageStore,
             seed: int) -> TaskSplit:
    path = os.path.join(root, f"{split}.jsonl")
    entries = [e for e in read_snli_ve_jsonl(path) if e.label is not None]
    if not entries:
        raise BadRecord(f"{path}: no labelled pair (every gold_label is '-')")
    image_ids = [e.image_id for e in entries]
    images.require(image_ids, lambda i: f"{path} line {entries[i].line}")
    target = LabelTargets([e.label for e in entries])
    text = Texts.encode([e.hypothesis for e in entries], tok, max_seq_length)
    return TaskSplit(TextImageExamples(text, image_ids, images, target), tok, 3, target.chance())


def _retrieval(task: str, root: str, split: str, tok: Tokenizer, max_seq_length: int, images: ImageStore,
               seed: int) -> TaskSplit:
    path = os.path.join(root, "annotations", f"{split}_ann.jsonl")
    entries = read_retrieval_jsonl(path)
    if len(entries) < 2:
        raise BadRecord(f"{path}: {len(entries)} image(s); retrieval's negatives need 2 or more")
    image_ids = [e.image_id for e in entries]
    images.require(image_ids, lambda i: f"{path} line {entries[i].line}")
    caption_image = np.repeat(np.arange(len(entries)), [len(e.captions) for e in entries])
    hard = None
    if split == "train":
        negatives = read_hard_negatives(os.path.join(root, "hard_negative.pkl"), entries)
        index = {image_id: n for n, image_id in enumerate(image_ids)}
        position = np.array([index[i] for i in negatives.image_ids], np.int64)  # pool row -> split image
        row_of = np.empty(len(entries), np.int64)
        row_of[position] = np.arange(len(position))
        hard = position[negatives.pool[row_of]]  # [N, K] split image indices
    options = retrieval_options(caption_image, hard, seed)
    text = Texts.encode([c for e in entries for c in e.captions], tok, max_seq_length)
    return TaskSplit(RetrievalExamples(text, image_ids, options, images), tok, 1, 1 / options.shape[1])


def retrieval_options(caption_image: np.ndarray, hard: np.ndarray | None, seed: int) -> np.ndarray:
    """VOLTA's 4 training options per caption as int64 [C, 4, 2] (caption row, image index): (c, p), (a caption of
    a random other image, p), (c, a random other image), (a caption of a hard image, p), where p is caption c's
    image, ``caption_image`` [C] (captions grouped by image, images 0..N-1, N >= 2) and ``hard`` [N, K] the split
    indices of each image's hard-negative pool (column 0 never drawn; None: a random other image instead)."""
    caption_image = np.asarray(caption_image, np.int64)
    n, c = int(caption_image.max()) + 1, len(caption_image)
    counts = np.bincount(caption_image, minlength=n)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8]))

    def other_image() -> np.ndarray:
        q = rng.integers(n - 1, size=c)
        return q + (q >= caption_image)

    def caption_of(images: np.ndarray) -> np.ndarray:
        return starts[images] + (rng.random(c) * counts[images]).astype(np.int64)

    rows = np.arange(c)
    random_caption, random_image = caption_of(other_image()), other_image()
    if hard is None:
        hard_caption = caption_of(other_image())
    else:
        hard_caption = caption_of(hard[caption_image, rng.integers(1, hard.shape[1], size=c)])
    pairs = [(rows, caption_image), (random_caption, caption_image), (rows, random_image),
             (hard_caption, caption_image)]
    return np.stack([np.stack(p, axis=-1) for p in pairs], axis=1)


__all__ = ["OPTIONS", "REFER_CHANCE_SAMPLE", "SPLIT_NAMES", "TASKS", "parse_dataset", "retrieval_options",
           "task_files_split"]
