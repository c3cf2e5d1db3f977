"""Writes golden tensors from VOLTA itself for jaxvl's VOLTA converter tests.

Usage::

    git -C /path/to/volta/clone archive HEAD volta | tar -x -C /tmp/volta_run
    python scripts/make_volta_golden.py --volta-src /tmp/volta_run --out tests/data

``--volta-src`` is a directory holding VOLTA's ``volta/`` package (e-bug/volta, read at 62f78cd). It is
imported from there, never copied into jaxvl. For each of the five presets at jaxvl's tiny size
(``get_config(name, tiny=True)`` written as VOLTA JSON keys by ``to_volta_dict``) the script

1. builds VOLTA's ``BertForVLPreTraining`` under ``torch.manual_seed(SEED)``, then overwrites every
   parameter with fresh random values (LayerNorm scales near 1, everything else small noise) so that
   no tensor is a constant (VOLTA initialises several to 0 or 1) and a swapped or mis-transposed
   tensor shows up in the outputs; tied parameters stay tied (each is one ``nn.Parameter``);
2. runs one batch in eval mode (B=2, text length 7, 5 regions, ``[x1, y1, x2, y2, area]`` boxes in
   [0, 1]): row 1 has 2 padded tokens and a padded (all-zero) last region. For VL-BERT both rows are
   padded alike, because VOLTA shifts VL-BERT's text positions on a batch-shared tensor
   (reference section 7.13) and its outputs are only per-row for rows of one text length;
3. saves into ``volta_golden_<name>.npz`` (compressed, well under 1 MB):
   ``config`` (the VOLTA JSON), ``sd/<key>`` (VOLTA's state dict, every alias of a tied tensor
   included), ``in/<field>`` (jaxvl batch names: ``input_ids``, ``token_type_ids``, ``text_mask``,
   ``features``, ``locations``, ``region_mask``), ``out/t_{i}`` and ``out/v_{i}`` (VOLTA's
   ``output_all_encoded_layers=True`` states: embeddings then one per sub-layer), ``out/pooled_t``,
   ``out/pooled_v``, ``out/pooled`` (fused), ``out/mlm``, ``out/mrc_{k}``, ``out/itm``, and
   ``full_keys`` / ``full_shapes``: the key names and shapes of VOLTA's state dict for the full-size
   (ctrl) config, with ``full_params`` its parameter count.

Deviations from running VOLTA as shipped, all confined to this process:

- ``volta/utils.py`` imports ``boto3`` and ``botocore`` (only for downloading from S3); when they are
  not installed, empty stand-in modules are put in ``sys.modules``.
- VOLTA's ``VisualBertEmbeddings.forward`` calls ``.cuda()`` on its visual position ids; without a GPU,
  ``torch.Tensor.cuda`` is monkeypatched to return the tensor unchanged.
- The VOLTA config gets ``"model": "bert"`` (``UniterEmbeddings`` reads it; jaxvl only supports BERT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Any

import numpy as np

PRESETS = ("visualbert", "uniter", "vl-bert", "lxmert", "vilbert")
SEED = 1234
BATCH, TEXT_LEN, REGIONS = 2, 7, 5


def import_volta(volta_src: str) -> tuple[Any, Any]:
    """Imports ``BertConfig`` and ``BertForVLPreTraining`` from ``volta_src/volta`` with the stand-ins above."""
    import torch

    if not os.path.isdir(os.path.join(volta_src, "volta")):
        raise SystemExit(f"{volta_src}: no volta/ package there")
    for name in ("boto3", "botocore", "botocore.exceptions"):
        try:
            __import__(name)
        except ImportError:
            sys.modules[name] = types.ModuleType(name)
    if not hasattr(sys.modules["botocore.exceptions"], "ClientError"):
        sys.modules["botocore.exceptions"].ClientError = type("ClientError", (Exception,), {})
        sys.modules["botocore"].exceptions = sys.modules["botocore.exceptions"]
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *args, **kwargs: self  # VisualBERT's hard-coded .cuda()
    sys.path.insert(0, os.path.abspath(volta_src))
    from volta.config import BertConfig
    from volta.encoders import BertForVLPreTraining

    return BertConfig, BertForVLPreTraining


def volta_config_dict(name: str, tiny: bool) -> dict:
    """jaxvl's preset as VOLTA ``BertConfig`` keys."""
    from jaxvl.models import get_config, to_volta_dict

    d = to_volta_dict(get_config(name, tiny=tiny))
    d["model"] = "bert"
    return d


def randomize(model: Any, gen: Any) -> None:
    """Overwrites every parameter (once per tied tensor) with random values drawn from ``gen``."""
    import torch

    with torch.no_grad():
        for pname, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            is_norm_scale = p.ndim == 1 and pname.endswith(".weight")
            p.copy_(1.0 + 0.1 * noise if is_norm_scale else 0.1 * noise)


def make_batch(name: str, cfg: dict, gen: Any) -> dict[str, Any]:
    """The test batch (torch tensors, jaxvl field names); see the module docstring."""
    import torch

    ids = torch.randint(1, cfg["vocab_size"], (BATCH, TEXT_LEN), generator=gen)
    text_mask = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    rows = range(BATCH) if name == "vl-bert" else [1]
    for r in rows:
        ids[r, -2:] = 0
        text_mask[r, -2:] = 0
    types_ = torch.zeros(BATCH, TEXT_LEN, dtype=torch.long)
    types_[:, 4:] = 1
    types_ = types_ * text_mask
    features = torch.randn(BATCH, REGIONS, cfg["v_feature_size"], generator=gen)
    xy1 = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.5
    wh = torch.rand(BATCH, REGIONS, 2, generator=gen) * 0.5
    xy2 = xy1 + wh
    area = (wh[..., :1] * wh[..., 1:])
    locations = torch.cat([xy1, xy2, area], dim=-1)[..., :cfg["num_locs"]]
    region_mask = torch.ones(BATCH, REGIONS, dtype=torch.long)
    region_mask[1, -1] = 0
    features[1, -1] = 0.0
    locations[1, -1] = 0.0
    return {"input_ids": ids, "token_type_ids": types_, "text_mask": text_mask, "features": features,
            "locations": locations, "region_mask": region_mask}


def run_volta(model: Any, batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """One eval forward through ``model.bert`` (poolers) and ``model`` (heads); inputs are cloned because
    VOLTA's VL-BERT writes its mask vector into the feature tensor in place."""
    import torch

    def args():
        return (batch["input_ids"].clone(), batch["features"].clone(), batch["locations"].clone(),
                batch["token_type_ids"].clone(), batch["text_mask"].clone(), batch["region_mask"].clone())

    out: dict[str, np.ndarray] = {}
    with torch.no_grad():
        _, _, pooled_t, pooled_v, _ = model.bert(*args(), output_all_encoded_layers=False)
        mlm, mrc, itm, _, pooled, layers_t, layers_v = model(*args(), output_all_encoded_layers=True)
    for i, (t, v) in enumerate(zip(layers_t, layers_v, strict=True)):
        out[f"t_{i}"], out[f"v_{i}"] = t.numpy(), v.numpy()
    out.update(pooled_t=pooled_t.numpy(), pooled_v=pooled_v.numpy(), pooled=pooled.numpy(), mlm=mlm.numpy(),
               itm=itm.numpy())
    out.update({f"mrc_{k}": v.numpy() for k, v in mrc.items()})
    return out


def make_one(name: str, bert_config: Any, model_cls: Any, out_dir: str) -> str:
    """Builds, runs and saves the golden file of preset ``name``; returns its path."""
    import torch

    cfg = volta_config_dict(name, tiny=True)
    torch.manual_seed(SEED)
    model = model_cls(bert_config.from_dict(cfg)).eval()
    gen = torch.Generator().manual_seed(SEED)
    randomize(model, gen)
    batch = make_batch(name, cfg, gen)
    outputs = run_volta(model, batch)

    full = model_cls(bert_config.from_dict(volta_config_dict(name, tiny=False)))
    full_sd = full.state_dict()
    arrays: dict[str, np.ndarray] = {
        "config": np.array(json.dumps(cfg, sort_keys=True)),
        "full_keys": np.array(list(full_sd)),
        "full_shapes": np.array(json.dumps([list(v.shape) for v in full_sd.values()])),
        "full_params": np.array(sum(p.numel() for p in full.parameters())),
    }
    del full, full_sd
    arrays.update({f"sd/{k}": v.detach().numpy() for k, v in model.state_dict().items()})
    arrays.update({f"in/{k}": v.numpy() for k, v in batch.items()})
    arrays.update({f"out/{k}": v for k, v in outputs.items()})
    path = os.path.join(out_dir, f"volta_golden_{name}.npz")
    np.savez_compressed(path, **arrays)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--volta-src", required=True, help="directory that holds VOLTA's volta/ package")
    ap.add_argument("--out", default="tests/data", help="output directory (default tests/data)")
    ap.add_argument("--models", nargs="*", default=list(PRESETS), choices=PRESETS)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    bert_config, model_cls = import_volta(args.volta_src)
    for name in args.models:
        path = make_one(name, bert_config, model_cls, args.out)
        print(f"{path}: {os.path.getsize(path) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
