"""Writes golden task-head logits from VOLTA's own ``BertForVLTasks`` for jaxvl's task-head tests.

Usage (as ``scripts/make_volta_golden.py``, whose VOLTA import and weight randomisation this reuses)::

    git -C /path/to/volta/clone archive HEAD volta | tar -x -C /tmp/volta_run
    python scripts/make_volta_task_golden.py --volta-src /tmp/volta_run --out tests/data

For each of the five presets at jaxvl's tiny size the script

1. builds VOLTA's ``BertForVLTasks(config, task_cfg, task_ids)`` with ``GOLDEN_TASKS``: one task of every head
   type (``VL-classifier`` VQA, ``VL-classifier-GQA``, ``VL-binary-classifier`` NLVR2, ``VL-tri-classifier``
   SNLI-VE, ``VL-logit`` retrieval, ``V-logit`` RefCOCO+, and ``V-logit`` with ``num_clf_layers: 2``), label
   counts shrunk and ``clf_hidden_size`` = ``CLF_HIDDEN`` so the file stays small;
2. overwrites every parameter with random values (``randomize`` of ``make_volta_golden``) rounded to float16
   (exactly representable, so the state dict is stored as float16 and read back bit-exact as float32);
3. runs one batch (B=4, text length 7, 5 regions) in eval mode through every task head: rows 1 and 3 have 2
   padded tokens (VL-BERT: every row, see ``make_volta_golden``), rows 1 and 2 a padded (all-zero) last region,
   and for NLVR2 rows (0, 1) and (2, 3) are the two images of one example, as VOLTA's ``nlvr`` batches are;
4. saves ``volta_task_golden_<name>.npz``: ``config`` (VOLTA JSON), ``tasks`` (the task_cfg JSON, in
   ``task_ids`` order), ``sd/<key>`` (``state_dict()``, float16, every tied alias included), ``in/<field>``
   (jaxvl batch names), ``out/<task>`` (VOLTA's ``vil_prediction``), and ``full_keys`` / ``full_shapes``: the
   ``clfs_dict.*`` names and shapes of ``BertForVLTasks`` at the ctrl size with ``FULL_TASKS`` (VOLTA's own
   label counts).

Deviations from running VOLTA as shipped: those of ``make_volta_golden`` (boto3 stand-ins, ``Tensor.cuda`` a
no-op without a GPU, ``"model": "bert"``), plus ``clf_hidden_size`` added to the config (``to_volta_dict``
does not write it: ``VLConfig`` does not model it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_volta_golden import import_volta, randomize, volta_config_dict  # noqa: E402

PRESETS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")
SEED = 4321
BATCH, TEXT_LEN, REGIONS = 4, 7, 5
CLF_HIDDEN = 20
GOLDEN_TASKS = {
    "TASK1": {"name": "VQA", "type": "VL-classifier", "num_labels": 7},
    "TASK15": {"name": "GQA", "type": "VL-classifier-GQA", "num_labels": 5},
    "TASK12": {"name": "NLVR2", "type": "VL-binary-classifier", "num_labels": 2},
    "TASK13": {"name": "VisualEntailment", "type": "VL-tri-classifier", "num_labels": 3},
    "TASK8": {"name": "RetrievalFlickr30k", "type": "VL-logit", "num_labels": 1},
    "TASK10": {"name": "refcoco+", "type": "V-logit"},
    "TASK11": {"name": "refcocog (two-layer head)", "type": "V-logit", "num_clf_layers": 2},
}
FULL_TASKS = {
    "TASK1": {"type": "VL-classifier", "num_labels": 3129},
    "TASK15": {"type": "VL-classifier-GQA", "num_labels": 1842},
    "TASK12": {"type": "VL-binary-classifier", "num_labels": 2},
    "TASK13": {"type": "VL-tri-classifier", "num_labels": 3},
    "TASK8": {"type": "VL-logit", "num_labels": 1},
    "TASK10": {"type": "V-logit"},
}


def make_batch(name: str, cfg: dict, gen: Any) -> dict[str, Any]:
    """The test batch (torch tensors, jaxvl field names); see the module docstring."""
    import torch

    ids = torch.randint(1, cfg["vocab_size"], (BATCH, TEXT_LEN), generator=gen)
    text_mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    for r in range(BATCH) if name == "vl-bert" else (1, 3):
        ids[r, -2:] = 0
        text_mask[r, -2:] = 0
    types_ = torch.zeros(BATCH, TEXT_LEN, dtype=torch.long)
    types_[:, 4:] = 1
    types_ = types_ * text_mask
    features = torch.randn(BATCH, REGIONS, cfg["v_feature_size"], generator=gen)
    xy1 = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.5
    wh = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.5
    locations = torch.cat([xy1, xy1 + wh, wh[..., :1] * wh[..., 1:]], dim=-1)[..., :cfg["num_locs"]]
    region_mask = torch.ones(BATCH, REGIONS, dtype=torch.long)
    for r in (1, 2):
        region_mask[r, -1] = 0
        features[r, -1] = 0.0
        locations[r, -1] = 0.0
    return {"input_ids": ids, "token_type_ids": types_, "text_mask": text_mask, "features": features,
            "locations": locations, "region_mask": region_mask}


def run_tasks(model: Any, batch: dict[str, Any], task_ids: list[str]) -> dict[str, np.ndarray]:
    """Every task head's ``vil_prediction`` (eval mode; inputs cloned: VL-BERT writes into its features)."""
    import torch

    out = {}
    with torch.no_grad():
        for task in task_ids:
            vil_prediction = model(batch["input_ids"].clone(), batch["features"].clone(), batch["locations"].clone(),
                                   task, batch["token_type_ids"].clone(), batch["text_mask"].clone(),
                                   batch["region_mask"].clone())[0]
            out[task] = vil_prediction.numpy()
    return out


def make_one(name: str, bert_config: Any, tasks_cls: Any, out_dir: str) -> str:
    """Builds, runs and saves the golden file of preset ``name``; returns its path."""
    import torch

    cfg = {**volta_config_dict(name, tiny=True), "clf_hidden_size": CLF_HIDDEN}
    task_ids = list(GOLDEN_TASKS)
    torch.manual_seed(SEED)
    model = tasks_cls(bert_config.from_dict(cfg), GOLDEN_TASKS, task_ids).eval()
    gen = torch.Generator().manual_seed(SEED)
    randomize(model, gen)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    batch = make_batch(name, cfg, gen)
    outputs = run_tasks(model, batch, task_ids)

    full_cfg = {**volta_config_dict(name, tiny=False), "clf_hidden_size": 1536}
    full = tasks_cls(bert_config.from_dict(full_cfg), FULL_TASKS, list(FULL_TASKS))
    full_heads = {k: list(v.shape) for k, v in full.state_dict().items() if k.startswith("clfs_dict.")}
    del full
    arrays: dict[str, np.ndarray] = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "tasks": np.array(json.dumps(GOLDEN_TASKS)),
        "full_tasks": np.array(json.dumps(FULL_TASKS)),
        "full_keys": np.array(list(full_heads)),
        "full_shapes": np.array(json.dumps(list(full_heads.values()))),
    }
    arrays.update({f"sd/{k}": v.detach().numpy().astype(np.float16) for k, v in model.state_dict().items()})
    arrays.update({f"in/{k}": v.numpy() for k, v in batch.items()})
    arrays.update({f"out/{k}": v for k, v in outputs.items()})
    path = os.path.join(out_dir, f"volta_task_golden_{name}.npz")
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volta-src", required=True, help="directory that holds VOLTA's volta/ package")
    ap.add_argument("--out", default="tests/data", help="output directory (default tests/data)")
    ap.add_argument("--models", nargs="*", default=list(PRESETS), choices=PRESETS)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    bert_config, _ = import_volta(args.volta_src)
    from volta.encoders import BertForVLTasks

    for name in args.models:
        path = make_one(name, bert_config, BertForVLTasks, args.out)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
