"""The sub-layer plan: VOLTA's description of a V&L encoder as data.

A V&L BERT is a flat list of numbered sub-layers. Each index is either an attention sub-layer or a
feed-forward sub-layer, and lists of indices say which stream and which direction is active there:

- ``tt``: text queries attend to text keys; ``tv``: text queries attend to vision keys;
- ``vt``: vision queries attend to text keys; ``vv``: vision queries attend to vision keys;
- ``t_ff`` / ``v_ff``: the text / vision feed-forward runs;
- ``shared``: the vision stream reuses the text stream's parameters at that index (tied weights).

When both directions of a stream are active its queries take one softmax over the concatenation of
text and vision keys; both streams update simultaneously from the sub-layer's inputs; a stream with
nothing active at an index passes through unchanged.

This module turns those lists into ``Sublayer`` specs and finds the repeated segments that
``nn.scan`` can run (the 12 layers of a single-stream model, LXMERT's cross blocks, ViLBERT's
co-attention blocks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

IntMap = tuple[tuple[int, int], ...]

LIST_KEYS = (
    "tt_attn_sublayers",
    "tv_attn_sublayers",
    "vt_attn_sublayers",
    "vv_attn_sublayers",
    "t_ff_sublayers",
    "v_ff_sublayers",
    "shared_sublayers",
    "single_ln_sublayers",
)
MAP_KEYS = (
    "sublayer2attn_hidden_size",
    "sublayer2num_attention_heads",
    "sublayer2intermediate_size",
    "sublayer2v_attn_hidden_size",
    "sublayer2v_num_attention_heads",
    "sublayer2v_intermediate_size",
    "bert_layer2attn_sublayer",
    "bert_layer2ff_sublayer",
)


def _int_map(value: Mapping | Sequence) -> IntMap:
    """Normalises a JSON-style ``{"3": 7}`` dict (or pairs) to sorted ``((3, 7),)`` pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((int(k), int(v)) for k, v in items))


@dataclasses.dataclass(frozen=True)
class Sublayer:
    """What one sub-layer computes. Index-free, so equal specs can share a scanned block.

    For attention, ``t_width``/``v_width`` are the projection widths (heads x head size) and
    ``t_heads``/``v_heads`` the head counts; for feed-forward, the widths are the intermediate sizes.
    """

    kind: Literal["attn", "ff"]
    tt: bool = False
    tv: bool = False
    vt: bool = False
    vv: bool = False
    t_ff: bool = False
    v_ff: bool = False
    shared: bool = False
    t_width: int = 0
    t_heads: int = 0
    v_width: int = 0
    v_heads: int = 0

    @property
    def has_text(self) -> bool:
        return self.tt or self.tv if self.kind == "attn" else self.t_ff

    @property
    def has_vision(self) -> bool:
        return self.vv or self.vt if self.kind == "attn" else self.v_ff

    @property
    def tied(self) -> bool:
        """True when the vision stream really reuses the text stream's parameters."""
        return self.shared and self.has_text and self.has_vision


@dataclasses.dataclass(frozen=True)
class Segment:
    """``repeats`` consecutive copies of the block ``sublayers``, starting at sub-layer ``start``."""

    start: int
    sublayers: tuple[Sublayer, ...]
    repeats: int

    @property
    def stop(self) -> int:
        return self.start + len(self.sublayers) * self.repeats


@dataclasses.dataclass(frozen=True)
class SublayerPlan:
    """VOLTA's sub-layer lists (same key names), hashable so modules can hold it as a field."""

    tt_attn_sublayers: tuple[int, ...] = ()
    tv_attn_sublayers: tuple[int, ...] = ()
    vt_attn_sublayers: tuple[int, ...] = ()
    vv_attn_sublayers: tuple[int, ...] = ()
    t_ff_sublayers: tuple[int, ...] = ()
    v_ff_sublayers: tuple[int, ...] = ()
    shared_sublayers: tuple[int, ...] = ()
    # A numerical no-op next to a shared per-stream LayerNorm (LN is per token); kept for round trips.
    single_ln_sublayers: tuple[int, ...] = ()
    sublayer2attn_hidden_size: IntMap = ()
    sublayer2num_attention_heads: IntMap = ()
    sublayer2intermediate_size: IntMap = ()
    sublayer2v_attn_hidden_size: IntMap = ()
    sublayer2v_num_attention_heads: IntMap = ()
    sublayer2v_intermediate_size: IntMap = ()
    bert_layer2attn_sublayer: IntMap = ()
    bert_layer2ff_sublayer: IntMap = ()

    @classmethod
    def from_dict(cls, d: Mapping) -> SublayerPlan:
        """Builds a plan from VOLTA-style keys (lists of ints, dicts with string keys)."""
        kwargs = {k: tuple(sorted(int(i) for i in d[k])) for k in LIST_KEYS if k in d}
        kwargs.update({k: _int_map(d[k]) for k in MAP_KEYS if k in d})
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The plan in VOLTA's JSON form (lists, dicts keyed by strings)."""
        out: dict = {k: list(getattr(self, k)) for k in LIST_KEYS}
        out.update({k: {str(a): b for a, b in getattr(self, k)} for k in MAP_KEYS})
        return out

    @property
    def attn_indices(self) -> frozenset[int]:
        return frozenset(
            self.tt_attn_sublayers + self.tv_attn_sublayers + self.vt_attn_sublayers + self.vv_attn_sublayers
        )

    @property
    def ff_indices(self) -> frozenset[int]:
        return frozenset(self.t_ff_sublayers + self.v_ff_sublayers)

    @property
    def depth(self) -> int:
        return len(self.attn_indices) + len(self.ff_indices)

    def validate(self) -> None:
        """Raises ValueError with VOLTA's construction rules spelled out."""
        overlap = self.attn_indices & self.ff_indices
        if overlap:
            raise ValueError(f"sub-layers {sorted(overlap)} are both attention and feed-forward")
        used = self.attn_indices | self.ff_indices
        if used != frozenset(range(len(used))):
            missing = sorted(set(range(max(used, default=-1) + 1)) - used)
            raise ValueError(f"sub-layer numbers must be contiguous from 0; missing {missing}")
        for name in ("shared_sublayers", "single_ln_sublayers"):
            extra = set(getattr(self, name)) - used
            if extra:
                raise ValueError(f"{name} names sub-layers {sorted(extra)} that do not exist")
        for i in self.single_ln_sublayers:
            sub_tt, sub_t = i in self.tt_attn_sublayers + self.tv_attn_sublayers, i in self.t_ff_sublayers
            sub_vv, sub_v = i in self.vv_attn_sublayers + self.vt_attn_sublayers, i in self.v_ff_sublayers
            if not ((sub_tt or sub_t) and (sub_vv or sub_v) and i in self.shared_sublayers):
                raise ValueError(f"single_ln sub-layer {i} needs both streams active and shared")
        for name, index_set in (("bert_layer2attn_sublayer", self.attn_indices),
                                ("bert_layer2ff_sublayer", self.ff_indices)):
            bad = [s for _, s in getattr(self, name) if s not in index_set]
            if bad:
                raise ValueError(f"{name} points at sub-layers {bad} of the wrong kind")

    def sublayers(self, hidden_size: int, num_heads: int, intermediate_size: int,
                  v_hidden_size: int, v_num_heads: int, v_intermediate_size: int) -> tuple[Sublayer, ...]:
        """Resolves every index to a ``Sublayer`` spec (per-index size overrides applied)."""
        self.validate()
        def get(pairs: IntMap, i: int, default: int) -> int:
            return dict(pairs).get(i, default)

        out = []
        for i in range(self.depth):
            shared = i in self.shared_sublayers
            if i in self.attn_indices:
                tt, tv = i in self.tt_attn_sublayers, i in self.tv_attn_sublayers
                vt, vv = i in self.vt_attn_sublayers, i in self.vv_attn_sublayers
                t_width = get(self.sublayer2attn_hidden_size, i, hidden_size)
                t_heads = get(self.sublayer2num_attention_heads, i, num_heads)
                v_width = get(self.sublayer2v_attn_hidden_size, i, v_hidden_size)
                v_heads = get(self.sublayer2v_num_attention_heads, i, v_num_heads)
                if t_width % t_heads or v_width % v_heads:
                    raise ValueError(f"sub-layer {i}: attention width is not a multiple of its head count")
                if (tv or vt) and (t_width != v_width or t_heads != v_heads):
                    raise ValueError(f"sub-layer {i}: cross-modal attention needs equal text/vision widths and heads")
                sub = Sublayer("attn", tt=tt, tv=tv, vt=vt, vv=vv, shared=shared,
                               t_width=t_width, t_heads=t_heads, v_width=v_width, v_heads=v_heads)
                if sub.tied and (hidden_size != v_hidden_size or t_width != v_width or t_heads != v_heads):
                    raise ValueError(f"sub-layer {i}: shared attention needs equal text/vision sizes")
            else:
                sub = Sublayer("ff", t_ff=i in self.t_ff_sublayers, v_ff=i in self.v_ff_sublayers, shared=shared,
                               t_width=get(self.sublayer2intermediate_size, i, intermediate_size),
                               v_width=get(self.sublayer2v_intermediate_size, i, v_intermediate_size))
                if sub.tied and (hidden_size != v_hidden_size or sub.t_width != sub.v_width):
                    raise ValueError(f"sub-layer {i}: shared feed-forward needs equal text/vision sizes")
            out.append(sub)
        return tuple(out)


def find_segments(sublayers: Sequence[Sublayer]) -> tuple[Segment, ...]:
    """Splits a sub-layer list into runs of a repeated block, greedily covering the most sub-layers.

    Single-stream: one segment of 12 x [attn, ff]. LXMERT: 5 x [attn, ff] (text + vision layers),
    4 x [attn, ff] (text only), 5 x [cross-attn, self-attn, ff]. ViLBERT: 6 x [attn, ff], then
    6 x [co-attn, ff, self-attn, ff]. A block that does not repeat becomes a segment with repeats=1.
    """
    segments, i, n = [], 0, len(sublayers)
    while i < n:
        best = (1, 1)  # (period, repeats)
        for period in range(1, (n - i) // 2 + 1):
            block = tuple(sublayers[i:i + period])
            reps = 1
            while tuple(sublayers[i + reps * period:i + (reps + 1) * period]) == block:
                reps += 1
            if reps >= 2 and period * reps > best[0] * best[1]:
                best = (period, reps)
        period, reps = best
        segments.append(Segment(i, tuple(sublayers[i:i + period]), reps))
        i += period * reps
    return tuple(segments)


def unimodal_prefix(sublayers: Sequence[Sublayer], segment_aligned: bool = False) -> int:
    """How many leading sub-layers have no cross-modal attention (no ``tv`` / ``vt``): there the text stream
    depends on the text input only and the vision stream on the vision input only, so a caller can compute
    each stream's prefix once per distinct input (LXMERT: 18, its text and vision layers; ViLBERT: 12, its
    text-only layers; single-stream models: 0). ``segment_aligned``: rounded down to a ``find_segments``
    boundary (a scanned encoder runs whole segments)."""
    n = next((i for i, s in enumerate(sublayers) if s.kind == "attn" and (s.tv or s.vt)), len(sublayers))
    if not segment_aligned:
        return n
    return max((seg.stop for seg in find_segments(sublayers) if seg.stop <= n), default=0)
