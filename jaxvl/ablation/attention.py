"""Attention analyses of the V&L BERTs from their sown attention weights (``sow_weights=True``).

For every attention sub-layer of the plan and every head, over the un-ablated inputs of the ablation
examples:

- normalised attention entropy, per stream of queries: ``-sum_k p log p / log(n)`` with ``n`` the
  number of unmasked keys of that query (1 = uniform over the keys, 0 = all mass on one key), averaged
  over real queries (text tokens, detector regions and ``[IMG]``) that have at least two keys;
- where text queries see vision keys (``tv``): for the phrase's tokens, the share of their attention to
  vision that lands on the regions aligned with the phrase (IoT > ``threshold``), beside the share a
  uniform attention would give (aligned regions / all regions: ``chance_share``) and the fraction of
  the token's attention that goes to vision at all (``vision_mass``; 1 in dual-stream cross-attention).
  Only examples with at least one aligned region count.

``attention_rows`` runs one compiled program per model config and batch shape (checkpoints stacked
and vmapped, batch sharded over the mesh's data axes, as ``jaxvl.ablation.sweep``) and returns tidy
rows (model, sublayer, stream, kind, head, entropy, aligned_share, chance_share, vision_mass, queries);
``plot_attention`` draws them. Works on unscanned and scanned (``scan_layers``) encoders.

``sublayer`` is the plan's index (VOLTA's, from 0); ``kind`` (``KINDS``) says what the stream's queries
attend to there; heads are numbered from 1, in the rows and the plots (as ``jaxvl.caption.attention``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.ablation.conditions import alignment
from jaxvl.ablation.sweep import SWEEP_FIELDS, check_model_batch, gather_to_host, num_models
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.models.volta.plan import Sublayer, find_segments
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, to_global

MODEL_INPUTS = ("input_ids", "features", "locations", "token_type_ids", "text_mask", "region_mask")
# What a stream's queries attend to at an attention sub-layer: their own stream only ("text" / "vision"), the
# other stream only ("cross": LXMERT's cross layers, ViLBERT's co-attention), or one softmax over both ("joint":
# single-stream models).
KINDS = {"text": "text queries -> text keys", "vision": "vision queries -> vision keys",
         "cross": "queries -> the other stream's keys only", "joint": "one softmax over text and vision keys"}


def query_kind(spec: Sublayer, stream: str) -> str:
    """The ``KINDS`` key of ``stream``'s ("text" / "vision") queries at the attention sub-layer ``spec``."""
    own, other = (spec.tt, spec.tv) if stream == "text" else (spec.vv, spec.vt)
    if own and other:
        return "joint"
    return "cross" if other else stream


def sown_attention(cfg: VLConfig, intermediates: Mapping[str, Any]
                   ) -> list[tuple[int, Sublayer, jax.Array | None, jax.Array | None]]:
    """(sub-layer index, spec, text-query weights [B, H, Lt, Lk] or None, vision-query weights [B, H, Lv, Lk]
    or None) for every attention sub-layer, from ``apply(..., mutable=["intermediates"])``'s collection."""
    enc = intermediates["intermediates"]["bert"]["encoder"] if "intermediates" in intermediates else \
        intermediates["bert"]["encoder"]

    def get(node: Mapping[str, Any] | None, stream: str, rep: int | None):
        if node is None or stream not in node:
            return None
        w = node[stream]["weights"][0]
        return w if rep is None else w[rep]

    out = []
    if not cfg.scan_layers:
        for n, spec in enumerate(cfg.sublayers):
            if spec.kind == "attn":
                node = enc.get(f"layer_{n}")
                out.append((n, spec, get(node, "t_attend", None), get(node, "v_attend", None)))
        return out
    for k, seg in enumerate(find_segments(cfg.sublayers)):
        for rep in range(seg.repeats):
            for j, spec in enumerate(seg.sublayers):
                if spec.kind != "attn":
                    continue
                node = enc.get(f"segment_{k}", {}).get(f"sub_{j}")
                r = rep if seg.repeats > 1 else None
                n = seg.start + rep * len(seg.sublayers) + j
                out.append((n, spec, get(node, "t_attend", r), get(node, "v_attend", r)))
    return out


def _entropy_sums(weights: jax.Array, key_mask: jax.Array, query_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sum over real queries (with >= 2 keys) of normalised entropy per head [H], and their count []."""
    p = weights.astype(jnp.float32)
    h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)  # [B, H, Lq]
    n = key_mask.sum(-1).astype(jnp.float32)  # [B]
    ok = query_mask.astype(bool) & (n[:, None] > 1)  # [B, Lq]
    norm = h / jnp.log(jnp.maximum(n, 2.0))[:, None, None]
    return jnp.sum(jnp.where(ok[:, None, :], norm, 0.0), axis=(0, 2)), ok.sum().astype(jnp.float32)


def attention_statistics(cfg: VLConfig, intermediates: Mapping[str, Any], batch: Mapping[str, jax.Array],
                         aligned: jax.Array, valid: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """Per attention sub-layer (key ``str(n)``): sums over the batch of the module doc's statistics.

    ``t_entropy`` / ``v_entropy`` [H] with counts ``t_queries`` / ``v_queries`` []; with ``tv``:
    ``aligned_share``, ``chance_share``, ``vision_mass`` [H] summed over ``phrase_queries`` [].
    ``aligned`` [B, Lv] bool: the regions aligned with each example's phrase; ``valid`` [B]: 0 on padding
    rows, whose queries do not count.
    """
    t_mask, v_mask = batch["text_mask"], batch["region_mask"]
    t_query, v_query = t_mask * valid[:, None], v_mask * valid[:, None]
    out: dict[str, dict[str, jax.Array]] = {}
    for n, spec, tw, vw in sown_attention(cfg, intermediates):
        stats: dict[str, jax.Array] = {}
        if tw is not None:
            keys = jnp.concatenate([m for m, use in ((t_mask, spec.tt), (v_mask, spec.tv)) if use], axis=-1)
            stats["t_entropy"], stats["t_queries"] = _entropy_sums(tw, keys, t_query)
            if spec.tv:
                p_vis = tw[..., -v_mask.shape[-1]:].astype(jnp.float32)  # [B, H, Lt, Lv]
                real = v_mask.astype(jnp.float32)[:, None, None, :]
                on = aligned.astype(jnp.float32)[:, None, None, :]
                mass = jnp.sum(p_vis * real, -1)
                share = jnp.sum(p_vis * on, -1) / jnp.maximum(mass, 1e-30)
                chance = (aligned.sum(-1) / jnp.maximum(v_mask.sum(-1), 1)).astype(jnp.float32)  # [B]
                q = (batch["phrase_mask"] * t_query).astype(bool) & jnp.any(aligned, -1, keepdims=True)  # [B, Lt]
                qf = q.astype(jnp.float32)[:, None, :]
                stats["aligned_share"] = jnp.sum(share * qf, axis=(0, 2))
                stats["vision_mass"] = jnp.sum(mass * qf, axis=(0, 2))
                stats["chance_share"] = jnp.broadcast_to(jnp.sum(chance[:, None] * q), (tw.shape[1],))
                stats["phrase_queries"] = q.sum().astype(jnp.float32)
        if vw is not None:
            keys = jnp.concatenate([m for m, use in ((t_mask, spec.vt), (v_mask, spec.vv)) if use], axis=-1)
            stats["v_entropy"], stats["v_queries"] = _entropy_sums(vw, keys, v_query)
        out[str(n)] = stats
    return out


class AttentionSweep:
    """``sweep(stacked_params, batch)`` -> ``attention_statistics`` with a leading K axis, compiled once.
    ``batch``: ``SWEEP_FIELDS`` and ``valid``, sharded over the data axes."""

    def __init__(self, model: VLBertForPreTraining, mesh: Mesh, threshold: float = 0.5,
                 param_sharding: Any | None = None, compiler_options: dict[str, Any] | None = None):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"IoT threshold {threshold} outside [0, 1]")
        self.model = VLBertForPreTraining(model.cfg, sow_weights=True)
        self.mesh, self.threshold = mesh, threshold
        axes = tuple(a for a in DEFAULT_DATA_AXES if a in mesh.axis_names)
        replicated = NamedSharding(mesh, PartitionSpec())
        self.param_sharding = replicated if param_sharding is None else param_sharding
        batch = NamedSharding(mesh, PartitionSpec(axes or None))
        self._jitted = jax.jit(self._sweep, in_shardings=(self.param_sharding, batch), out_shardings=replicated,
                               compiler_options=compiler_options)

    def _sweep(self, stacked_params: Any, batch: dict[str, jax.Array]) -> dict[str, Any]:
        aligned = alignment(batch, self.threshold)
        inputs = {k: batch[k] for k in MODEL_INPUTS}

        def per_model(params):
            _, state = self.model.apply({"params": params}, **inputs, deterministic=True, mutable=["intermediates"])
            return attention_statistics(self.model.cfg, state, batch, aligned, batch["valid"])

        return jax.vmap(per_model)(stacked_params)

    def __call__(self, stacked_params: Any, batch: Mapping[str, Any]) -> dict[str, Any]:
        with jax.set_mesh(self.mesh):
            return self._jitted(stacked_params, batch)


def attention_rows(model: VLBertForPreTraining, stacked_params: Any, batches: Iterable[Mapping[str, Any]],
                   mesh: Mesh, threshold: float = 0.5, model_names: Sequence[str] | None = None,
                   param_sharding: Any | None = None,
                   compiler_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Runs ``AttentionSweep`` over ``batches`` (ablation batches; rows with ``valid`` 0 do not count) and
    returns one row per (model, sub-layer, stream, head). ``compiler_options``: XLA options of the sweep.

    Checks the first batch and the parameters against the model config before compiling.
    """
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise ValueError("empty evaluation set: no batch for the attention analyses")
    check_model_batch(model, stacked_params, first, mesh, "attention batch")
    k = num_models(stacked_params)
    names = tuple(model_names) if model_names is not None else tuple(f"model_{i}" for i in range(k))
    sweep = AttentionSweep(model, mesh, threshold, param_sharding, compiler_options)
    params = jax.device_put(stacked_params, sweep.param_sharding)
    totals: Any = None
    for batch in (first, *it):
        fields = {key: np.asarray(batch[key]) for key in (*SWEEP_FIELDS, "valid")}
        out = gather_to_host(sweep(params, to_global(fields, mesh)))
        totals = out if totals is None else jax.tree.map(np.add, totals, out)
    return _rows(names, totals, threshold, model.cfg.sublayers)


def _rows(names: Sequence[str], totals: Mapping[str, Mapping[str, np.ndarray]], threshold: float,
          sublayers: Sequence[Sublayer]) -> list[dict]:
    """One row per (model, sub-layer, stream, head) of the summed statistics; heads numbered from 1."""
    rows = []
    for n in sorted(totals, key=int):
        stats = totals[n]
        for stream, prefix in (("text", "t"), ("vision", "v")):
            if f"{prefix}_entropy" not in stats:
                continue
            ent, queries = stats[f"{prefix}_entropy"], stats[f"{prefix}_queries"]
            kind = query_kind(sublayers[int(n)], stream)
            for k, model in enumerate(names):
                for h in range(ent.shape[-1]):
                    row = dict(model=model, sublayer=int(n), stream=stream, kind=kind, head=h + 1, threshold=threshold,
                               entropy=_ratio(ent[k, h], queries[k]), queries=int(queries[k]),
                               aligned_share=None, chance_share=None, vision_mass=None, phrase_queries=None)
                    if stream == "text" and "aligned_share" in stats:
                        q = stats["phrase_queries"][k]
                        row.update(aligned_share=_ratio(stats["aligned_share"][k, h], q),
                                   chance_share=_ratio(stats["chance_share"][k, h], q),
                                   vision_mass=_ratio(stats["vision_mass"][k, h], q), phrase_queries=int(q))
                    rows.append(row)
    return rows


def _ratio(total: float, count: float) -> float | None:
    return float(total / count) if count > 0 else None


ENTROPY_LABEL = "normalised entropy\n(0 = one key, 1 = uniform)"
SHARE_LABEL = "share of the phrase's attention to vision\non its aligned regions (0-1)"


def _layer_label(rows: Sequence[dict[str, Any]], n: int, sep: str = " ") -> str:
    """Sub-layer ``n``'s tick: its index and, where the rows carry it, its kind ("3 cross")."""
    kind = next((r.get("kind") for r in rows if r["sublayer"] == n and r.get("kind")), None)
    return str(n) if kind is None else f"{n}{sep}{kind}"


def _entropy_panel(fig: Any, ax: Any, rows: Sequence[dict[str, Any]], title: str) -> bool:
    """Heat map of one stream's entropy, sub-layer (with its kind) x head; False (panel off) without rows."""
    sel = [r for r in rows if r["entropy"] is not None]
    if not sel:
        ax.set_axis_off()
        return False
    layers = sorted({r["sublayer"] for r in sel})
    heads = sorted({r["head"] for r in sel})
    grid = np.full((len(layers), len(heads)), math.nan)
    for r in sel:
        grid[layers.index(r["sublayer"]), heads.index(r["head"])] = r["entropy"]
    im = ax.imshow(grid, vmin=0, vmax=1, aspect="auto", cmap="viridis")
    small = 7 if len(layers) > 12 else 8
    ax.set_yticks(range(len(layers)), [_layer_label(sel, n) for n in layers], fontsize=small)
    ax.set_xticks(range(len(heads)), [str(h) for h in heads], fontsize=small)
    ax.set_xlabel("head")
    ax.set_ylabel("sub-layer and kind")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax).set_label(ENTROPY_LABEL, fontsize=8)
    return True


def _share_panel(ax: Any, rows: Sequence[dict[str, Any]], title: str) -> None:
    """Aligned share (mean over heads, with the heads' range) per sub-layer where text sees vision, beside the
    share a uniform attention gives; the legend below the panel."""
    share = [r for r in rows if r["aligned_share"] is not None]
    layers = sorted({r["sublayer"] for r in share})
    ax.set_title(title, fontsize=9)
    if not layers:
        ax.text(0.5, 0.5, "no sub-layer where text sees vision", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    per = [[r["aligned_share"] for r in share if r["sublayer"] == n] for n in layers]
    chance = [np.mean([r["chance_share"] for r in share if r["sublayer"] == n]) for n in layers]
    x = np.arange(len(layers))
    ax.fill_between(x, [min(v) for v in per], [max(v) for v in per], alpha=0.2, label="range over heads")
    ax.plot(x, [np.mean(v) for v in per], marker="o", label="aligned share (mean over heads)")
    ax.plot(x, chance, ls="--", color="grey", label="uniform attention")
    ax.set_xticks(x, [_layer_label(share, n, "\n") for n in layers], fontsize=7 if len(layers) > 8 else 8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("sub-layer and kind")
    ax.set_ylabel(SHARE_LABEL, fontsize=8)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=2, frameon=False)


def plot_attention(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Any:
    """Per model: heat maps of the text- and vision-query entropy (sub-layer x head; each sub-layer labelled
    with its index and kind, ``KINDS``) and the aligned share of text->vision attention per sub-layer (mean
    and range over heads) against the uniform-attention share. Returns the (closed) figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    depth = max((len({r["sublayer"] for r in rows if r["stream"] == s}) for s in ("text", "vision")), default=1)
    height = max(3.6, 1.6 + 0.2 * depth)
    fig, axes = plt.subplots(len(models), 3, figsize=(15, height * len(models)), squeeze=False)
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        for j, stream in enumerate(("text", "vision")):
            _entropy_panel(fig, axes[i, j], [r for r in mine if r["stream"] == stream],
                           f"{model}: {stream}-query attention entropy")
        _share_panel(axes[i, 2], mine, f"{model}: phrase tokens -> aligned regions")
    kinds = "; ".join(f"{k} = {v}" for k, v in KINDS.items())
    fig.text(0.5, 0.0, f"sub-layer: index in the model's plan (from 0). Kinds: {kinds}. Heads numbered from 1.",
             ha="center", va="top", fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return fig
