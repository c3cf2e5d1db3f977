"""Writes golden tensors from ORT's own PyTorch code for jaxvl's captioner and ORT converter tests.

Usage::

    mkdir -p /tmp/ort_run
    git -C /path/to/object_relation_transformer archive HEAD models misc | tar -x -C /tmp/ort_run
    python scripts/make_ort_golden.py --ort-src /tmp/ort_run --out tests/data

``--ort-src`` is a scratch directory holding ORT's ``models/`` and ``misc/`` packages
(yahoo/object_relation_transformer, read at 9f28357). They are imported from there, never copied into
jaxvl. For each variant (``default``: ORT's defaults; ``legacy``: ``legacy_extra_skip=1`` and
``box_trignometric_embedding=0``) at a tiny size (``CaptionerConfig.tiny`` with ORT's fixed 8 heads and
12 tokens) the script

1. builds ORT's ``RelationTransformerModel`` under ``torch.manual_seed(SEED)`` (ORT's own init: xavier
   matrices, torch-default biases), then overwrites the LayerNorm ``a_2`` / ``b_2`` (ORT sets them to 1 / 0)
   with random values so that a swapped norm shows up in the outputs;
2. runs, in eval mode, one batch of 3 images x 5 regions with ``[x_min, y_min, x_max, y_max]`` boxes in
   [0, 1]: row 0 ordinary boxes; row 1 with its last 2 regions padded (zero features and boxes,
   ``att_masks`` 0); row 2 with degenerate boxes (two identical boxes, a zero-width and a zero-height
   box, a point). Captions: BOS 0, words, then 0s (EOS and padding) as ORT's labels;
3. saves ``ort_golden_<variant>.npz`` (compressed, tens of KiB): ``config`` (``CaptionerConfig`` JSON),
   ``sd/<key>`` (ORT's state dict without the ``model.tgt_embed.1.pe`` buffer: 5000 rows of fixed
   sinusoids, 640 KiB, which the converter accepts either way), ``pe_head`` (its first 32 rows),
   ``in/features``, ``in/boxes``, ``in/mask``, ``in/labels``, ``out/box_embedding``
   (``misc.utils.BoxRelationalEmbedding`` of the boxes), ``out/memory`` (``model.encode``),
   ``out/logprobs`` (``model(..., labels, att_masks)``: teacher-forced on ``labels[:, :-1]`` with ORT's
   token mask), ``out/greedy_seq`` / ``out/greedy_logprobs`` (ORT's ``_sample`` with ``sample_max=1``,
   its incremental decoding), and ``full_keys`` / ``full_shapes`` / ``full_params``: ORT's state-dict
   names and shapes and parameter count at its published sizes (6 layers, 512 / 2048, 9487 words,
   2048-d features).

Deviations from running ORT as shipped, all confined to this process:

- ``misc.utils.BoxRelationalEmbedding`` calls ``.cuda()`` on its frequency range; without a GPU,
  ``torch.Tensor.cuda`` is monkeypatched to return the tensor unchanged.
- ORT is imported with torch 2.13 (CPU) unchanged otherwise; no file of it is edited.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np

SEED = 4321
BATCH, REGIONS, LABEL_LEN, SEQ_LENGTH = 3, 5, 8, 6
VARIANTS = {"default": {}, "legacy": {"legacy_extra_skip": True, "trigonometric_embedding": False}}


def golden_config(variant: str):
    """The jaxvl config of ``variant``: tiny sizes with ORT's 8 heads."""
    from jaxvl.models.ort.captioner import CaptionerConfig

    return CaptionerConfig.tiny(num_heads=8, vocab_size=12, **VARIANTS[variant])


def ort_opt(cfg: Any) -> SimpleNamespace:
    """ORT's ``opt`` for a jaxvl config (ORT's vocab_size excludes token 0; one layer count for both stacks)."""
    if cfg.num_encoder_layers != cfg.num_decoder_layers:
        raise SystemExit("ORT uses one num_layers for the encoder and the decoder")
    return SimpleNamespace(vocab_size=cfg.vocab_size - 1, input_encoding_size=cfg.d_model, rnn_size=cfg.d_ff,
                           drop_prob_lm=cfg.feature_dropout, seq_length=SEQ_LENGTH, att_feat_size=cfg.feature_size,
                           num_layers=cfg.num_encoder_layers, use_bn=0,
                           box_trignometric_embedding=cfg.trigonometric_embedding,
                           legacy_extra_skip=cfg.legacy_extra_skip)


def import_ort(ort_src: str) -> tuple[Any, Any]:
    """``RelationTransformerModel`` and ``BoxRelationalEmbedding`` from ``ort_src`` with the stand-in above."""
    import torch

    if not os.path.isdir(os.path.join(ort_src, "models")) or not os.path.isdir(os.path.join(ort_src, "misc")):
        raise SystemExit(f"{ort_src}: expected ORT's models/ and misc/ packages there")
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # BoxRelationalEmbedding's hard-coded .cuda()
    sys.path.insert(0, os.path.abspath(ort_src))
    from misc.utils import BoxRelationalEmbedding
    from models.RelationTransformerModel import RelationTransformerModel

    return RelationTransformerModel, BoxRelationalEmbedding


def make_batch(cfg: Any, gen: Any) -> dict[str, Any]:
    """The test batch (torch tensors); see the module docstring."""
    import torch

    features = torch.randn(BATCH, REGIONS, cfg.feature_size, generator=gen)
    xy = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.6
    wh = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.4
    boxes = torch.cat([xy, xy + wh], dim=-1)
    mask = torch.ones(BATCH, REGIONS)
    mask[1, -2:] = 0
    features[1, -2:] = 0.0
    boxes[1, -2:] = 0.0
    boxes[2, 1] = boxes[2, 0]  # identical boxes
    boxes[2, 2, 2] = boxes[2, 2, 0]  # zero width
    boxes[2, 3, 3] = boxes[2, 3, 1]  # zero height
    boxes[2, 4, 2:] = boxes[2, 4, :2]  # a point
    labels = torch.randint(1, cfg.vocab_size, (BATCH, LABEL_LEN), generator=gen)
    labels[:, 0] = 0
    labels[1, 4:] = 0  # 3 words, EOS, padding
    labels[2, 6:] = 0
    return {"features": features, "boxes": boxes, "mask": mask, "labels": labels}


def run_ort(model: Any, box_embedding: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    import torch

    feats, boxes, mask = batch["features"], batch["boxes"], batch["mask"]
    with torch.no_grad():
        embedding = box_embedding(boxes, trignometric_embedding=model.box_trignometric_embedding)
        logprobs = model(feats[:, 0], feats, boxes, batch["labels"], mask)
        att, box, _, att_mask, _ = model._prepare_feature(feats, mask, boxes)
        memory = model.model.encode(att, box, att_mask)
        seq, seq_logprobs = model(feats[:, 0], feats, boxes, mask, opt={"sample_max": 1}, mode="sample")
    return {"box_embedding": embedding.numpy(), "logprobs": logprobs.numpy(), "memory": memory.numpy(),
            "greedy_seq": seq.numpy(), "greedy_logprobs": seq_logprobs.numpy()}


def make_one(variant: str, model_cls: Any, box_embedding: Any, out_dir: str) -> str:
    """Builds, runs and saves the golden file of ``variant``; returns its path."""
    import torch

    from jaxvl.convert.ort import PE_NAME
    from jaxvl.models.ort.captioner import CaptionerConfig

    cfg = golden_config(variant)
    torch.manual_seed(SEED)
    model = model_cls(ort_opt(cfg)).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".a_2"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith(".b_2"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    batch = make_batch(cfg, gen)
    outputs = run_ort(model, box_embedding, batch)

    full_cfg = dataclasses.replace(CaptionerConfig(), **VARIANTS[variant])
    full = model_cls(ort_opt(full_cfg))  # 9487 words + token 0
    full_sd = full.state_dict()
    arrays: dict[str, np.ndarray] = {
        "config": np.array(json.dumps(dataclasses.asdict(cfg), sort_keys=True)),
        "full_keys": np.array(list(full_sd)),
        "full_shapes": np.array(json.dumps([list(v.shape) for v in full_sd.values()])),
        "full_params": np.array(sum(p.numel() for p in full.parameters())),
    }
    del full, full_sd
    sd = model.state_dict()
    arrays["pe_head"] = sd[PE_NAME][0, :32].numpy()
    arrays.update({f"sd/{k}": v.numpy() for k, v in sd.items() if k != PE_NAME})
    arrays.update({f"in/{k}": v.numpy() for k, v in batch.items()})
    arrays.update({f"out/{k}": v for k, v in outputs.items()})
    path = os.path.join(out_dir, f"ort_golden_{variant}.npz")
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ort-src", required=True, help="directory that holds ORT's models/ and misc/ packages")
    ap.add_argument("--out", default="tests/data", help="output directory (default tests/data)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model_cls, box_embedding = import_ort(args.ort_src)
    for variant in args.variants:
        path = make_one(variant, model_cls, box_embedding, args.out)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
