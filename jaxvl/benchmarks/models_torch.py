"""The PyTorch side of ``jaxvl bench models``: the ``transformers`` originals of lxmert (``LxmertModel``) and
visualbert (``VisualBertModel``) at a jaxvl config's sizes, random init, with heads and loss built to match
jaxvl's (tied MLM decoder, visual-target decoders, two poolers fused into ITM), timed eagerly.

Torch runs on CUDA when JAX runs on a GPU and CUDA is there, else on CPU with as many threads as the cores
JAX sees (``torch_device``); bfloat16 runs under CUDA autocast. torch and transformers are imported only
when a function here runs.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

import jax
import numpy as np

from jaxvl.benchmarks.common import cpu_cores, put_times, time_calls
from jaxvl.models.volta.config import VLConfig

TORCH_ORIGINALS = {"lxmert": "transformers.LxmertModel", "visualbert": "transformers.VisualBertModel"}


def torch_device(jax_device: jax.Device) -> str | None:
    """'cuda' when JAX is on a GPU and torch sees CUDA, 'cpu' when JAX is on CPU, None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if jax_device.platform == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_device_name(device: str) -> str:
    """'cuda: <GPU name> (tf32 matmul on|off)' or 'cpu (N threads)'."""
    import torch

    if device == "cuda":
        tf32 = "on" if torch.backends.cuda.matmul.allow_tf32 else "off"
        return f"cuda: {torch.cuda.get_device_name()} (tf32 matmul {tf32})"
    return f"cpu ({cpu_cores()} threads)"


def _torch_layer_counts(name: str, cfg: VLConfig) -> dict[str, int]:
    """The original's layer counts, read off the jaxvl plan so tiny and ctrl stay in step with presets.py."""
    plan = cfg.plan
    if name == "lxmert":
        x = len(plan.tv_attn_sublayers)
        return {"l_layers": len(plan.tt_attn_sublayers) - x, "x_layers": x, "r_layers": len(plan.vv_attn_sublayers) - x}
    return {"num_hidden_layers": len(plan.tt_attn_sublayers)}


def build_torch_model(name: str, cfg: VLConfig):
    """The PyTorch original of ``name`` at ``cfg``'s sizes, random init, with heads matching jaxvl's.

    Returns a ``torch.nn.Module`` whose forward takes the ``make_inputs`` tensors and returns
    (MLM logits, {target: visual logits}, ITM logits).
    """
    import torch
    from torch import nn as tnn
    from transformers import LxmertConfig, LxmertModel, VisualBertConfig, VisualBertModel

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                  intermediate_size=cfg.intermediate_size, hidden_act=cfg.hidden_act,
                  hidden_dropout_prob=cfg.hidden_dropout_prob,
                  attention_probs_dropout_prob=cfg.attention_probs_dropout_prob,
                  max_position_embeddings=cfg.max_position_embeddings, type_vocab_size=cfg.type_vocab_size,
                  initializer_range=cfg.initializer_range, **_torch_layer_counts(name, cfg))
    act = {"relu": torch.relu, "tanh": torch.tanh}[cfg.fusion_act]

    class Heads(tnn.Module):
        """jaxvl's heads: tied MLM decoder, visual-target decoders, two poolers fused into ITM."""

        def __init__(self, word_embeddings: tnn.Embedding):
            super().__init__()
            self.word_embeddings = word_embeddings
            self.mlm_transform = tnn.Linear(cfg.hidden_size, cfg.hidden_size)
            self.mlm_norm = tnn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
            self.mlm_bias = tnn.Parameter(torch.zeros(cfg.vocab_size))
            self.v_transform = tnn.Linear(cfg.v_hidden_size, cfg.v_hidden_size)
            self.v_norm = tnn.LayerNorm(cfg.v_hidden_size, eps=cfg.layer_norm_eps) if cfg.image_head_ln else None
            self.decoders = tnn.ModuleDict({f"t{k}": tnn.Linear(cfg.v_hidden_size, n)
                                            for k, n in cfg.visual_targets.items()})
            self.t_pooler = tnn.Linear(cfg.hidden_size, cfg.pooler_size)
            self.v_pooler = tnn.Linear(cfg.v_hidden_size, cfg.v_pooler_size)
            self.itm = tnn.Linear(cfg.pooler_size, cfg.itm_dim)

        def forward(self, t, v):
            h = self.mlm_norm(tnn.functional.gelu(self.mlm_transform(t)))
            mlm = tnn.functional.linear(h, self.word_embeddings.weight, self.mlm_bias)
            h = tnn.functional.gelu(self.v_transform(v))
            h = self.v_norm(h) if self.v_norm is not None else h
            visual = {k[1:]: dec(h) for k, dec in self.decoders.items()}
            pooled_t, pooled_v = act(self.t_pooler(t[:, 0])), act(self.v_pooler(v[:, 0]))
            fused = {"mul": lambda: pooled_t * pooled_v, "sum": lambda: pooled_t + pooled_v}.get(
                cfg.fusion_method, lambda: pooled_t)()
            return mlm, visual, self.itm(fused)

    class Original(tnn.Module):
        """``LxmertModel`` or ``VisualBertModel`` plus ``Heads``."""

        def __init__(self):
            super().__init__()
            if name == "lxmert":
                self.body = LxmertModel(LxmertConfig(visual_feat_dim=cfg.v_feature_size, visual_pos_dim=cfg.num_locs,
                                                     **common))
            else:
                self.body = VisualBertModel(VisualBertConfig(visual_embedding_dim=cfg.v_feature_size,
                                                             layer_norm_eps=cfg.layer_norm_eps, **common),
                                            add_pooling_layer=False)
            self.heads = Heads(self.body.embeddings.word_embeddings)

        def forward(self, input_ids, features, locations, token_type_ids, text_mask, region_mask):
            if name == "lxmert":
                out = self.body(input_ids=input_ids, visual_feats=features, visual_pos=locations,
                                attention_mask=text_mask, visual_attention_mask=region_mask,
                                token_type_ids=token_type_ids)
                t, v = out.language_output, out.vision_output
            else:
                out = self.body(input_ids=input_ids, attention_mask=text_mask, token_type_ids=token_type_ids,
                                visual_embeds=features, visual_attention_mask=region_mask)
                t, v = out.last_hidden_state[:, : input_ids.shape[1]], out.last_hidden_state[:, input_ids.shape[1]:]
            return self.heads(t, v)

    return Original()


def bench_torch(name: str, cfg: VLConfig, inputs: dict[str, np.ndarray], args: argparse.Namespace, device: str,
                warmup: int, iters: int) -> dict[str, Any]:
    """Forward and forward+backward time per example and parameter count of the PyTorch original on ``inputs``
    (``jaxvl.benchmarks.models.make_inputs``: [B, T] ids and masks, [B, R, F] features, [B, R, L] locations)."""
    import torch

    torch.manual_seed(args.seed)
    if device == "cpu":
        torch.set_num_threads(cpu_cores())
    model = build_torch_model(name, cfg).to(device)
    model.train(args.dropout)
    batch = len(inputs["input_ids"])
    inputs = {k: torch.from_numpy(v).to(device) for k, v in inputs.items()}
    inputs["input_ids"] = inputs["input_ids"].long()
    inputs["token_type_ids"] = inputs["token_type_ids"].long()
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bfloat16"
                else contextlib.nullcontext())

    def sync(_: Any) -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.inference_mode(), autocast:
            return model(**inputs)

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with autocast:
            mlm, visual, itm = model(**inputs)
            loss = sum([torch.logsumexp(mlm.float(), -1).mean()]
                       + [torch.logsumexp(x.float(), -1).mean() for x in visual.values()]
                       + [torch.logsumexp(itm.float(), -1).mean()])
        loss.backward()
        return loss

    row: dict[str, Any] = {"torch_params": sum(p.numel() for p in model.parameters()),
                           "torch_threads": torch.get_num_threads() if device == "cpu" else None}
    put_times(row, "torch_fwd", time_calls(forward, sync, warmup, iters), batch)
    put_times(row, "torch_fwdbwd", time_calls(forward_backward, sync, warmup, iters), batch)
    return row
