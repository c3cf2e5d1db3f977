"""``jaxvl caption decode`` / ``evaluate``: caption every image of a split with a trained captioner, score it.

``decode_split`` reads the split in order (every image once; the last batch padded and the padding
dropped), decodes with one compiled program per batch shape (``jaxvl.caption.decoding``) and writes COCO-style
results JSON. ``evaluate_split`` scores those captions (or a given results file) against the split's
references with ``jaxvl.metrics.evaluate_captions`` and returns the table the ORT paper reports.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from jaxvl.caption.data import CaptionPipelineConfig, caption_dataset
from jaxvl.data.grain import open_split


def _split_batches(dataset: str, split: str, batch_size: int, captions_per_image: int):
    """The split's images in order, in host batches of ``batch_size`` (the last padded by repeating its last
    image), with the number of real rows of each."""
    import grain

    source, _ = open_split(dataset, split)
    if len(source) == 0:
        raise ValueError(f"{dataset}: split {split!r} is empty")
    rows = caption_dataset(source, CaptionPipelineConfig(batch_size=1, shuffle=False, num_epochs=1,
                                                          caption_window="first",
                                                          captions_per_image=captions_per_image, num_threads=1),
                           shard=grain.sharding.NoSharding())
    buffer: list[dict[str, Any]] = []
    for row in rows:
        buffer.append(row)
        if len(buffer) == batch_size:
            yield {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}, batch_size
            buffer = []
    if buffer:
        real = len(buffer)
        buffer += [buffer[-1]] * (batch_size - real)
        yield {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}, real


def decode_split(cfg: ConfigDict, workdir: str, split: str = "test", method: str = "beam",
                 beam_size: int | None = None, out: str | None = None) -> str:
    """Captions for every image of ``split`` by the trained captioner of ``workdir``; returns the JSON path."""
    from jaxvl.caption.decoding import decode_captions, write_coco_results
    from jaxvl.caption.trainer import load_captioner

    model, params, data, _ = load_captioner(cfg, workdir)
    ids, captions = [], []
    rng = jax.random.key(cfg.seed)
    for i, (batch, real) in enumerate(_split_batches(data.dataset, split, cfg.decode.batch_size,
                                                      cfg.data.captions_per_image)):
        texts = decode_captions(model, params, batch, vocab=data.vocab, method=method,
                                beam_size=beam_size or cfg.decode.beam_size, max_len=cfg.decode.max_len,
                                alpha=cfg.decode.length_penalty, rng=jax.random.fold_in(rng, i))
        ids += [str(x) for x in batch["image_id"][:real]]
        captions += texts[:real]
    path = out or os.path.join(workdir, f"captions_{split}_{method}.json")
    write_coco_results(path, ids, captions)
    return path


def split_references(dataset: str, split: str) -> dict[str, list[str]]:
    """image id -> its reference captions (untruncated text) for ``split``."""
    from jaxvl.data.builders.common import as_str

    source, _ = open_split(dataset, split)
    refs = {}
    for i in range(len(source)):
        ex = source[i]
        refs[as_str(ex["image_id"])] = [line for line in as_str(ex["references"]).split("\n") if line.strip()]
    return refs


def analyze_split(cfg: ConfigDict, workdir: str, split: str = "val", out: str | None = None,
                  max_batches: int | None = None) -> str:
    """The attention analyses (``jaxvl.caption.attention``) of the trained captioner, teacher-forced
    on ``split``'s reference captions; writes the tidy results and plots under ``out`` (default
    ``<workdir>/analysis_<split>``) and returns that directory."""
    import grain

    from jaxvl.caption.attention import analyze
    from jaxvl.caption.trainer import load_captioner

    model, params, data, _ = load_captioner(cfg, workdir)
    source, _ = open_split(data.dataset, split)
    batch_size = min(cfg.decode.batch_size, len(source))
    pipeline = CaptionPipelineConfig(batch_size=batch_size, shuffle=False, num_epochs=1, caption_window="first",
                                     captions_per_image=cfg.data.captions_per_image, num_threads=1,
                                     analysis_fields=True)
    batches = []
    for batch in caption_dataset(source, pipeline, shard=grain.sharding.NoSharding()):
        batches.append(batch)
        if max_batches is not None and len(batches) == max_batches:
            break
    directory = out or os.path.join(workdir, f"analysis_{split}")
    analyze(model, params, batches, directory)
    return directory


def _id_key(image_id: Any) -> str:
    """COCO results store digit-only ids as integers ("000064" -> 64): compare ids in that form."""
    text = str(image_id)
    return str(int(text)) if text.isdigit() else text


def evaluate_split(cfg: ConfigDict, workdir: str, split: str = "test", method: str = "beam",
                   beam_size: int | None = None, captions: str | None = None) -> str:
    """The metrics table of ``split`` (x100; its title names the split, the number of images scored and the
    references per image): decoding first unless ``captions`` names a results JSON."""
    from jaxvl.caption.trainer import open_caption_data
    from jaxvl.metrics import evaluate_captions, format_table

    path = captions or decode_split(cfg, workdir, split, method, beam_size)
    with open(path, encoding="utf-8") as f:
        results = json.load(f)
    predictions = {_id_key(r["image_id"]): r["caption"] for r in results}
    refs = {_id_key(k): v for k, v in split_references(open_caption_data(cfg, workdir).dataset, split).items()}
    missing = sorted(set(refs) - set(predictions))
    if missing:
        raise ValueError(f"{path}: no caption for {len(missing)} images of split {split!r} (e.g. {missing[:3]})")
    scores = evaluate_captions(predictions, {k: refs[k] for k in predictions})
    n_refs = sorted({len(refs[k]) for k in predictions})
    per_image = str(n_refs[0]) if len(n_refs) == 1 else f"{n_refs[0]}-{n_refs[-1]}"
    title = (f"Caption metrics (x100) on split {split!r}: {len(predictions)} images scored, {per_image} reference "
             f"captions each; {'captions from ' + captions if captions else method + ' decoding'}")
    return f"{title}\n\n{format_table({f'jaxvl ({method}, {split})': scores})}"
