"""Which encoder plans the HuggingFace converters (``jaxvl.convert.hf``) map onto, read off a ``VLConfig``.

- ``lxmert_layout``: ``(l_layers, r_layers, x_layers)`` of an LXMERT-layout plan (``presets.lxmert_plan``).
- ``single_stream_layers``: the BERT depth of a single-stream plan (VisualBERT, UNITER, VL-BERT).

Both raise ``ValueError`` naming the first sub-layer that does not fit.
"""

from __future__ import annotations

from jaxvl.models.volta.config import VLConfig


def lxmert_layout(cfg: VLConfig) -> tuple[int, int, int]:
    """``(l_layers, r_layers, x_layers)`` of an LXMERT-layout plan; ValueError naming the first misfit.

    Layout: text layers [tt attn, t_ff] at 0..2l-1; vision layers [vv attn, v_ff] beside them at
    0..2r-1 (r <= l); then x blocks at c = 2l + 3j of [tied tv+vt cross-attention, tt+vv self-attention,
    t_ff+v_ff], nothing else shared.
    """
    subs = cfg.sublayers
    cross = [i for i, s in enumerate(subs) if s.kind == "attn" and (s.tv or s.vt)]
    start = cross[0] if cross else len(subs)
    if start % 2:
        raise ValueError(f"not an LXMERT layout: the first cross-attention sub-layer {start} is odd")
    n_text = start // 2
    r_layers = sum(1 for s in subs[:start] if s.kind == "attn" and s.vv)

    def bad(i: int, want: str) -> ValueError:
        return ValueError(f"not an LXMERT layout (l={n_text}, r={r_layers}): sub-layer {i} should be {want}, "
                          f"got {subs[i]}")

    for i in range(n_text):
        has_v = i < r_layers
        a, f = subs[2 * i], subs[2 * i + 1]
        if not (a.kind == "attn" and a.tt and not a.tv and not a.vt and a.vv == has_v and not a.tied):
            raise bad(2 * i, "a text self-attention" + (" beside a vision self-attention" if has_v else ""))
        if not (f.kind == "ff" and f.t_ff and f.v_ff == has_v and not f.tied):
            raise bad(2 * i + 1, "a text feed-forward" + (" beside a vision feed-forward" if has_v else ""))
    if (len(subs) - start) % 3:
        raise ValueError(f"not an LXMERT layout: {len(subs) - start} sub-layers after {start} are not blocks of 3")
    x_layers = (len(subs) - start) // 3
    for j in range(x_layers):
        c = start + 3 * j
        x, s, f = subs[c], subs[c + 1], subs[c + 2]
        if not (x.kind == "attn" and x.tv and x.vt and not x.tt and not x.vv and x.tied):
            raise bad(c, "a shared (tied) tv+vt cross-attention")
        if not (s.kind == "attn" and s.tt and s.vv and not s.tv and not s.vt and not s.tied):
            raise bad(c + 1, "untied tt+vv self-attention")
        if not (f.kind == "ff" and f.t_ff and f.v_ff and not f.tied):
            raise bad(c + 2, "untied text+vision feed-forward")
    return n_text, r_layers, x_layers


def single_stream_layers(cfg: VLConfig) -> int:
    """Number of BERT layers of a single-stream plan (all sub-layers joint and tied); ValueError otherwise."""
    subs = cfg.sublayers
    for i, s in enumerate(subs):
        joint = (s.kind == "attn" and s.tt and s.tv and s.vt and s.vv) if i % 2 == 0 else (s.kind == "ff"
                                                                                               and s.t_ff and s.v_ff)
        if not (joint and s.tied):
            want = "a joint tied attention" if i % 2 == 0 else "a joint tied feed-forward"
            raise ValueError(f"not a single-stream layout: sub-layer {i} should be {want}, got {s}")
    if len(subs) % 2:
        raise ValueError(f"not a single-stream layout: odd depth {len(subs)}")
    return len(subs) // 2


__all__ = ["lxmert_layout", "single_stream_layers"]
