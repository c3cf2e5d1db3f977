"""The colour probe (issue 14): does a V&L BERT use colour, from the caption's words and from the region features?

Cached region features cannot be re-extracted from grayscale images without the detector, so colour is probed in two
ways that need no detector:

(a) text side, colour-word foils (as FOIL, Shekhar et al. 2017, and VALSE, Parcalabescu et al. 2022): an item is a
    caption holding a colour word with its own image. Its first WHOLE-WORD colour token (``whole_word_mask``: the id of
    a colour word that is one vocabulary token, not a ``##`` piece and not followed by one, so "reddish" = red ##dish
    is no colour token) is replaced by another colour word drawn with the seed (the foil; never the same word), or by
    ``[MASK]`` for the MLM.
(b) feature side, for worlds whose region features carry colour in a known subspace (rows of a basis B [k, D]): every
    real region row f -> f - (f B^T) B (``project_out``). The global ``[IMG]`` row is the mean of the region rows,
    linear in them, so projecting it equals recomputing it from the projected rows; padded rows are left untouched.
    CONTROL: the same projection off a random rank-k subspace drawn with the seed, orthonormal and orthogonal to B
    (``control_basis``): it removes as much of the feature space without touching colour.

Conditions per item: texts {caption, foil, masked} x features {original, colour projected out, random projection}
(one feature condition without a basis). ``ColourProgram`` evaluates all 3 x F inputs of a block of items as ONE
compiled program: the inputs are built inside it, stacked on the batch axis, and that axis is split over the mesh's
data axes (dual-stream models run each stream's unimodal prefix once per distinct text / feature variant). Per item
and feature condition it keeps the ITM match score of the caption and of the foil (``score_fn`` then
``match_score``; default the ITM logits and logit0 - max other) and, at the masked colour token, log p(true colour)
and log p(foil colour) under the MLM head (``word_logits``; natural log over the whole vocabulary).

``ColourResult`` turns these into the measures (``MEASURES``: ITM margin caption - foil and the pairwise accuracy
share(score(caption) > score(foil)); MLM -log2 p(true colour) in bits and the 2-way accuracy p(true) > p(foil)),
their means with 95% bootstrap intervals, the feature-side colour use (mean loss(colour projected) - loss(original),
beside the control's, and their difference) and the verdicts. ``run_colour`` runs it all on a model and items;
``jaxvl.probes.colour_run.probe_colour`` is the ``jaxvl probe colour`` command.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.ablation.verdicts import EFFECT_FLOOR_BITS, verdict
from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.probes.pairs import IMAGE_FIELDS, TEXT_FIELDS, MatchScore, PairItems, ScoreFn, itm_logits, itm_match_score
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, make_mesh, replicate

TEXTS = ("caption", "foil", "masked")
CONDITIONS = ("original", "colour_projected", "random_projected")
CONDITION_LABELS = {"original": "original features", "colour_projected": "colour projected out",
                    "random_projected": "random projection (control)"}
# measure -> (label, unit); the per-item values of ``ColourResult.measures``
MEASURES = {
    "itm_margin": ("ITM match score, caption - foil", "logit"),
    "itm_pairwise": ("ITM pairwise accuracy, score(caption) > score(foil)", "%"),
    "mlm_bits": ("MLM -log2 p(true colour) at the masked colour token", "bits"),
    "mlm_2way": ("MLM 2-way accuracy, p(true colour) > p(foil colour)", "%"),
}
WordLogits = Callable[[VLOutput], jax.Array]


def mlm_word_logits(out: VLOutput) -> jax.Array:
    """The default word scores: the MLM head's logits at the requested text positions [B, P, vocab]."""
    return out.mlm_logits


# ------------------------------------------------------------------------------------------- words and items


def parse_words(words: str | Sequence[str]) -> list[str]:
    """A comma list (or a sequence) of words -> distinct lower-case words in order; empty entries dropped."""
    items = words.split(",") if isinstance(words, str) else list(words)
    return list(dict.fromkeys(w.strip().lower() for w in items if w.strip()))


def caption_has_word(words: Sequence[str]) -> Callable[[str], bool]:
    """``keep(caption)``: whether the caption holds one of ``words`` as a whole word (split on what is not a letter
    or digit, as BERT's pre-tokenizer splits on whitespace and punctuation; case ignored)."""
    wanted = frozenset(parse_words(words))
    return lambda caption: not wanted.isdisjoint(re.findall(r"[^\W_]+", caption.lower()))


def colour_ids(tokenizer: Any, words: Sequence[str]) -> dict[str, int]:
    """word -> id of each of ``words`` that is one whole token of the tokenizer's vocabulary (others are skipped)."""
    return {w: tokenizer.token_to_id(w) for w in parse_words(words) if tokenizer.tokenize(w) == [w]}


def whole_word_mask(input_ids: np.ndarray, text_mask: np.ndarray, ids: Sequence[int],
                    continuation: np.ndarray) -> np.ndarray:
    """bool [N, L]: real tokens whose id is in ``ids`` and that are not followed by a ``##`` piece.

    ``input_ids`` / ``text_mask`` [N, L]; ``continuation`` bool [vocab]: which ids are ``##`` pieces."""
    input_ids, real = np.asarray(input_ids), np.asarray(text_mask) > 0
    hit = np.isin(input_ids, np.asarray(list(ids), np.int64)) & real
    next_piece = np.zeros_like(hit)
    next_piece[:, :-1] = continuation[input_ids[:, 1:]] & real[:, 1:]
    return hit & ~next_piece


@dataclasses.dataclass(frozen=True)
class ColourItems:
    """Items with a colour token: ``items`` (``PairItems``), per item ``position`` [N] of its first whole-word colour
    token, ``true_id`` / ``foil_id`` [N] the colour word there and the one swapped in, ``kept`` [N] the indices of
    these items among the ones given; ``words``: the colour words of the vocabulary (word -> id)."""

    items: PairItems
    position: np.ndarray
    true_id: np.ndarray
    foil_id: np.ndarray
    kept: np.ndarray
    words: dict[str, int]

    @property
    def n(self) -> int:
        return self.items.n

    def word(self, token_id: int) -> str:
        return {i: w for w, i in self.words.items()}[int(token_id)]


def colour_items(items: PairItems, tokenizer: Any, words: str | Sequence[str], seed: int = 0) -> ColourItems:
    """The items of ``items`` whose text holds a whole-word colour token, each with a foil colour drawn with
    ``seed`` (uniform over the other colour words of the vocabulary). Raises ValueError naming ``colour.words`` when
    fewer than two of ``words`` are whole tokens of the vocabulary, or no item holds one."""
    ids = colour_ids(tokenizer, words)
    listed = ", ".join(parse_words(words)) or "(none)"
    if len(ids) < 2:
        raise ValueError(f"config colour.words: {len(ids)} of the words {listed} are whole tokens of the vocabulary "
                         f"({tokenizer.source}); a colour foil needs two or more")
    continuation = np.array([t.startswith("##") and len(t) > 2 for t in tokenizer.tokens])
    whole = whole_word_mask(items.input_ids, items.text_mask, list(ids.values()), continuation)
    kept = np.flatnonzero(whole.any(1))
    if not kept.size:
        raise ValueError(f"config colour.words: none of the {items.n} items holds one of {', '.join(ids)} as a whole "
                         "token (after truncation to the text length)")
    position = whole[kept].argmax(1).astype(np.int32)
    true_id = items.input_ids[kept, position].astype(np.int32)
    palette = np.array(sorted(ids.values()), np.int32)
    rng = np.random.default_rng(seed)
    foil_id = np.array([rng.choice(palette[palette != t]) for t in true_id], np.int32)
    sub = PairItems(**{f.name: getattr(items, f.name)[kept] for f in dataclasses.fields(PairItems)})
    return ColourItems(sub, position, true_id, foil_id, kept, ids)


# ------------------------------------------------------------------------------------------- subspaces


def orthonormal_rows(basis: np.ndarray, atol: float = 1e-5) -> tuple[np.ndarray, bool]:
    """(rows spanning the same subspace as ``basis`` [k, D], orthonormal; whether they had to be orthonormalised
    by QR). Raises ValueError for rows that are linearly dependent."""
    basis = np.asarray(basis, np.float64)
    if np.allclose(basis @ basis.T, np.eye(len(basis)), atol=atol):
        return basis.astype(np.float32), False
    q, r = np.linalg.qr(basis.T)
    if np.abs(np.diag(r)).min() <= 1e-6 * max(np.abs(np.diag(r)).max(), 1e-30):
        raise ValueError(f"the {len(basis)} basis rows are linearly dependent")
    return q.T.astype(np.float32), True


def check_basis(basis: Any, feature_size: int, what: str = "colour.basis") -> tuple[np.ndarray, bool]:
    """``orthonormal_rows`` of ``basis`` after checking it is a finite [k, D] array with D = ``feature_size`` and
    1 <= k <= D / 2 (the control needs a subspace of the same rank orthogonal to it); errors name ``what``."""
    basis = np.asarray(basis)
    if basis.ndim != 2 or basis.shape[1] != feature_size or basis.shape[0] < 1:
        raise ValueError(f"{what}: shape {basis.shape}, expected [k, {feature_size}] (k >= 1 rows, each a direction "
                         f"of the model's {feature_size}-dim region features)")
    if not np.issubdtype(basis.dtype, np.number) or not np.isfinite(basis).all():
        raise ValueError(f"{what}: holds values that are not finite numbers")
    k = basis.shape[0]
    if 2 * k > feature_size:
        raise ValueError(f"{what}: rank k = {k} of D = {feature_size}: the control projects off a random subspace of "
                         f"the same rank orthogonal to it, so k must be <= D / 2 = {feature_size // 2}")
    try:
        return orthonormal_rows(basis)
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def control_basis(basis: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 [k, D]: a random rank-k subspace drawn with ``seed`` (Gaussian rows), made orthogonal to the rows of
    ``basis`` [k, D] (orthonormal) and orthonormalised. Needs 2k <= D."""
    basis = np.asarray(basis, np.float64)
    k, d = basis.shape
    if 2 * k > d:
        raise ValueError(f"control_basis: rank {k} in {d} dims leaves no room for an orthogonal subspace of that rank")
    g = np.random.default_rng(seed).normal(size=(k, d))
    g -= (g @ basis.T) @ basis
    q, _ = np.linalg.qr(g.T)
    q = q.T
    q -= (q @ basis.T) @ basis  # once more: QR's round-off back out of the basis span
    return orthonormal_rows(q)[0]


def project_out(features: jax.Array, region_mask: jax.Array, basis: jax.Array) -> jax.Array:
    """``features`` [..., Lv, D] with every real row (``region_mask`` [..., Lv] > 0) projected onto the orthogonal
    complement of the rows of ``basis`` [k, D] (orthonormal): f - (f B^T) B. Padded rows are returned unchanged."""
    hi = jax.lax.Precision.HIGHEST
    f = features.astype(jnp.float32)
    removed = f - jnp.einsum("...k,kd->...d", jnp.einsum("...d,kd->...k", f, basis, precision=hi), basis, precision=hi)
    return jnp.where(region_mask[..., None] > 0, removed.astype(features.dtype), features)


# ------------------------------------------------------------------------------------------- the program


class ColourProgram:
    """The compiled colour probe of ``model``: ``program(variables, items, projections) -> (itm, mlm)``.

    ``mask_id``: the tokenizer's ``[MASK]`` id; ``block`` items per compiled call (each with its 3 x F inputs; a
    multiple of the mesh's ``data_axes`` devices); ``score_fn(VLOutput) -> [B, C]`` and ``match_score([..., C])
    -> [...]`` the ITM score (defaults: ITM logits, logit0 - max other); ``word_logits(VLOutput) -> [B, 1, vocab]``
    the word scores at the colour token (default the MLM head). ``cache_prefix`` (default: whether the model has a
    unimodal prefix) runs a dual-stream model's prefix once per text and feature variant; False runs the whole model
    per input. One compile per (item shape, number of projections).
    """

    def __init__(self, model: VLBertForPreTraining, mask_id: int, mesh: Mesh | None = None, block: int = 8,
                 score_fn: ScoreFn = itm_logits, match_score: MatchScore = itm_match_score,
                 word_logits: WordLogits = mlm_word_logits, cache_prefix: bool | None = None,
                 data_axes: tuple[str, ...] = DEFAULT_DATA_AXES, compiler_options: dict[str, Any] | None = None):
        self.model, self.mask_id, self.block = model, int(mask_id), int(block)
        self.mesh = make_mesh() if mesh is None else mesh
        self.score_fn, self.match_score, self.word_logits = score_fn, match_score, word_logits
        has_prefix = model.cfg.unimodal_prefix > 0
        self.cache_prefix = has_prefix if cache_prefix is None else bool(cache_prefix)
        if self.cache_prefix and not has_prefix:
            raise ValueError("cache_prefix needs a dual-stream model with a unimodal prefix (cfg.unimodal_prefix > 0)")
        axes = tuple(a for a in data_axes if a in self.mesh.axis_names)
        self.shards = math.prod(self.mesh.shape[a] for a in axes)
        if self.block < 1 or self.block % self.shards:
            raise ValueError(f"block={self.block} items per call must be a positive multiple of the {self.shards} "
                             f"devices of mesh axes {axes}")
        self.rows = NamedSharding(self.mesh, PartitionSpec(axes or None))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._block = jax.jit(self._program, out_shardings=self.replicated, compiler_options=compiler_options)

    def _split(self, x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, self.rows)

    def _program(self, variables: Any, fields: dict[str, jax.Array], start: jax.Array,
                 projections: jax.Array) -> dict[str, jax.Array]:
        """Item fields [Npad, ...] and ``projections`` [P, k, D] -> for items start .. start + block: ``itm`` [2, F,
        block] (caption, foil) and ``mlm`` [F, block, 2] (log p of the true and the foil colour, masked text)."""
        b = {k: jax.lax.dynamic_slice_in_dim(v, start, self.block) for k, v in fields.items()}
        at = jnp.arange(b["input_ids"].shape[1])[None] == b["position"][:, None]
        texts = jnp.stack([b["input_ids"], jnp.where(at, b["foil_id"][:, None], b["input_ids"]),
                           jnp.where(at, self.mask_id, b["input_ids"])])  # [3, B, Lt]
        feats = jnp.stack([b["features"], *(project_out(b["features"], b["region_mask"], p) for p in projections)])
        t, f, n = texts.shape[0], feats.shape[0], self.block
        tile = lambda x, r: jnp.tile(x, (r,) + (1,) * (x.ndim - 1))  # noqa: E731  [B, ...] -> [r B, ...]
        grid_t = lambda x: x[:, None].repeat(f, 1).reshape(t * f * n, *x.shape[2:])  # noqa: E731  [T, B] -> [T F B]
        grid_f = lambda x: x[None].repeat(t, 0).reshape(t * f * n, *x.shape[2:])  # noqa: E731  [F, B] -> [T F B]
        tm, rm = self._split(tile(b["text_mask"], t * f)), self._split(tile(b["region_mask"], t * f))
        pos = tile(b["position"], t * f)[:, None]
        first = jnp.zeros_like(pos)  # the visual heads at one row only
        m = self.model
        if self.cache_prefix:
            tp = m.apply(variables, self._split(texts.reshape(t * n, -1)), tile(b["token_type_ids"], t),
                         tile(b["text_mask"], t), method=m.text_prefix)
            vp = m.apply(variables, self._split(feats.reshape(f * n, *feats.shape[2:])), tile(b["locations"], f),
                         tile(b["region_mask"], f), method=m.vision_prefix)
            tp, vp = tp.reshape(t, n, *tp.shape[1:]), vp.reshape(f, n, *vp.shape[1:])
            out = m.apply(variables, self._split(grid_t(tp)), self._split(grid_f(vp)), tm, rm, text_positions=pos,
                          region_positions=first, method=m.from_prefix)
        else:
            out = m.apply(variables, self._split(grid_t(texts)), self._split(grid_f(feats)),
                          tile(b["locations"], t * f), tile(b["token_type_ids"], t * f), tm, rm,
                          text_positions=pos, region_positions=first)
        itm = self.match_score(self.score_fn(out).astype(jnp.float32)).reshape(t, f, n)
        logp = jax.nn.log_softmax(self.word_logits(out)[:, 0].astype(jnp.float32), -1).reshape(t, f, n, -1)
        ids = jnp.stack([b["true_id"], b["foil_id"]], -1)  # [B, 2]
        mlm = jnp.take_along_axis(logp[TEXTS.index("masked")], jnp.broadcast_to(ids, (f, n, 2)), -1)
        return dict(itm=itm[:2], mlm=mlm)

    def __call__(self, variables: Any, items: ColourItems, projections: np.ndarray | None = None,
                 progress: Callable[[int], Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """All items under all conditions: (``itm`` [N, F, 2] match scores of the caption and the foil, ``mlm``
        [N, F, 2] natural-log p of the true and the foil colour at the masked colour token). ``projections``
        [P, k, D] (orthonormal rows each; None: none): feature condition 0 is the original features, 1 + p the
        features projected off ``projections[p]``. ``progress(items)`` after each block."""
        d = self.model.cfg.v_feature_size
        projections = np.zeros((0, 1, d), np.float32) if projections is None else np.asarray(projections, np.float32)
        if projections.ndim != 3 or projections.shape[2] != d:
            raise ValueError(f"projections: shape {projections.shape}, expected [P, k, {d}]")
        pi = items.items
        pi.check()
        rows = -(-pi.n // self.block) * self.block
        fields = {k: v for k, v in pi.padded(rows).items() if k in (*TEXT_FIELDS, *IMAGE_FIELDS)}
        for key in ("position", "true_id", "foil_id"):
            x = getattr(items, key)
            fields[key] = np.concatenate([x, np.repeat(x[:1], rows - pi.n)])
        variables = nn.meta.unbox(variables)
        variables = jax.device_put(variables if "params" in variables else {"params": variables}, self.replicated)
        fields, proj = replicate((fields, projections), self.replicated)
        itm, mlm = [], []
        with jax.set_mesh(self.mesh):
            for start in range(0, pi.n, self.block):
                out = self._block(variables, fields, jnp.int32(start), proj)
                itm.append(np.asarray(out["itm"].addressable_data(0)).transpose(2, 1, 0))
                mlm.append(np.asarray(out["mlm"].addressable_data(0)).transpose(1, 0, 2))
                if progress is not None:
                    progress(min(self.block, pi.n - start))
        return np.concatenate(itm)[:pi.n], np.concatenate(mlm)[:pi.n]


# ------------------------------------------------------------------------------------------- results


def _share_above(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 where a > b, 0 where a < b, 0.5 on ties (elementwise, float64)."""
    return (a > b) + 0.5 * (a == b)


@dataclasses.dataclass
class ColourResult:
    """Per item ``itm`` [N, F, 2] (ITM match score of caption, foil) and ``mlm`` [N, F, 2] (natural-log p of the
    true and the foil colour at the masked colour token) under the feature ``conditions`` (F of ``CONDITIONS``);
    ``true_words`` / ``foil_words`` [N]; ``basis_rank`` k of the projections (0 without)."""

    itm: np.ndarray
    mlm: np.ndarray
    conditions: tuple[str, ...]
    true_words: list[str]
    foil_words: list[str]
    basis_rank: int = 0

    @property
    def n(self) -> int:
        return int(self.itm.shape[0])

    def measures(self) -> dict[str, np.ndarray]:
        """measure (``MEASURES``) -> per-item values [N, F]: accuracies in % (100 / 0, 50 on a tie)."""
        itm, mlm = self.itm.astype(np.float64), self.mlm.astype(np.float64)
        return dict(itm_margin=itm[..., 0] - itm[..., 1], itm_pairwise=100 * _share_above(itm[..., 0], itm[..., 1]),
                    mlm_bits=-mlm[..., 0] / math.log(2), mlm_2way=100 * _share_above(mlm[..., 0], mlm[..., 1]))

    def effects(self) -> dict[str, np.ndarray]:
        """The feature side, per item [N] in bits (empty without projections): ``colour`` loss(colour projected) -
        loss(original), ``control`` loss(random projected) - loss(original), ``effect`` colour - control."""
        if "colour_projected" not in self.conditions:
            return {}
        bits = self.measures()["mlm_bits"]
        o, c, r = (bits[:, self.conditions.index(k)] for k in CONDITIONS)
        return dict(colour=c - o, control=r - o, effect=c - r)

    def summary(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict[str, dict]]:
        """{"measures": {measure: {condition: stats}}, "effects": {name: stats}}; stats = mean, low, high (the
        ``level`` bootstrap percentile interval over items, ``n_boot`` resamples drawn with ``seed``), n."""
        from jaxvl.metrics.bootstrap import bootstrap_means, bootstrap_weights

        w = bootstrap_weights(self.n, n_boot, seed)

        def stats(values: np.ndarray) -> list[dict[str, float]]:  # [N, S] -> S stats
            mean, low, high = bootstrap_means(values, np.ones(values.shape, bool), w, level)
            return [dict(mean=float(m), low=float(lo), high=float(h), n=self.n) for m, lo, h in zip(mean, low, high,
                                                                                                  strict=True)]

        out = {"measures": {k: dict(zip(self.conditions, stats(v), strict=True)) for k, v in self.measures().items()}}
        eff = self.effects()
        out["effects"] = dict(zip(eff, stats(np.stack(list(eff.values()), 1)), strict=True)) if eff else {}
        return out

    def verdicts(self, summary: dict[str, dict[str, dict]] | None = None, itm_trained: bool = True,
                 floor: float = EFFECT_FLOOR_BITS) -> dict[str, str]:
        """One line per side: ``features`` (found when the colour projection's interval lies above 0 and the effect
        colour - control lies above ``floor`` bits), ``mlm`` and ``itm`` (the 2-way / pairwise accuracy's interval
        on original features above 50%; no ITM verdict from an untrained head)."""
        s = self.summary() if summary is None else summary
        out = {}
        eff = s["effects"]
        if not eff:
            out["features"] = "not measured (no colour basis)"
        else:
            c, e = eff["colour"], eff["effect"]
            found = verdict(e["low"], e["high"], floor)
            nums = (f"colour projection {c['mean']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] bits, control "
                    f"{eff['control']['mean']:+.3f}, effect {e['mean']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}], "
                    f"floor {floor} bits")
            if c["low"] > 0 and found == "found":
                out["features"] = f"uses colour from the features ({nums})"
            elif found == "opposite":
                out["features"] = f"opposite: the colour projection helps more than the control ({nums})"
            else:
                out["features"] = f"no evidence it uses colour from the features ({nums})"

        def pairwise(key: str, yes: str, no: str) -> str:
            a = s["measures"][key]["original"]
            nums = f"{a['mean']:.1f}% [{a['low']:.1f}, {a['high']:.1f}] on original features, chance 50%"
            return f"{yes if a['low'] > 50 else no} ({nums})"

        out["mlm"] = pairwise("mlm_2way", "prefers the true colour word at the masked colour token",
                              "no preference for the true colour word over the foil")
        out["itm"] = (pairwise("itm_pairwise", "tells captions from their colour foils",
                               "does not tell captions from their colour foils") if itm_trained else
                      "no verdict: the ITM head was never trained (its numbers are a random head's)")
        return out


def evaluate(program: ColourProgram, variables: Any, items: ColourItems, basis: np.ndarray | None = None,
             control: np.ndarray | None = None, progress: Callable[[int], Any] | None = None) -> ColourResult:
    """``program`` on ``items`` (``colour_items``): original features only, or with ``basis`` and ``control`` [k, D]
    (orthonormal rows: ``check_basis``, ``control_basis``) also the colour projection and its control."""
    if (basis is None) != (control is None):
        raise ValueError("evaluate: give both the colour basis and its control, or neither")
    projections = None if basis is None else np.stack([basis, control])
    itm, mlm = program(variables, items, projections, progress)
    return ColourResult(itm, mlm, CONDITIONS if basis is not None else CONDITIONS[:1],
                        [items.word(i) for i in items.true_id], [items.word(i) for i in items.foil_id],
                        0 if basis is None else len(basis))


def run_colour(model: VLBertForPreTraining, variables: Any, items: PairItems, tokenizer: Any,
               words: str | Sequence[str], basis: np.ndarray | None = None, seed: int = 0,
               program: ColourProgram | None = None, **program_kwargs: Any) -> tuple[ColourResult, ColourItems]:
    """The colour probe of ``model`` on the ``items`` holding a colour word of ``words`` (``colour_items``, foils
    drawn with ``seed``): with ``basis`` [k, D] (checked and orthonormalised, ``check_basis``) also the colour
    projection and its random control (``control_basis`` with ``seed``). ``program``: a ``ColourProgram`` to reuse,
    else one is built with ``program_kwargs``. Returns the result and the items it ran on."""
    citems = colour_items(items, tokenizer, words, seed)
    program = program or ColourProgram(model, tokenizer.mask_id, **program_kwargs)
    rows = None if basis is None else check_basis(basis, model.cfg.v_feature_size, "basis")[0]
    control = None if rows is None else control_basis(rows, seed)
    return evaluate(program, variables, citems, rows, control), citems


__all__ = ["CONDITIONS", "CONDITION_LABELS", "MEASURES", "TEXTS", "ColourItems", "ColourProgram", "ColourResult",
           "caption_has_word", "check_basis", "colour_ids", "colour_items", "control_basis", "evaluate",
           "mlm_word_logits", "orthonormal_rows", "parse_words", "project_out", "run_colour",
           "whole_word_mask"]
