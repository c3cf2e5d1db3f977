"""The mirror probe (positional skew): does a V&L model read ``left`` / ``right`` from the boxes?

Four conditions of every item (a caption with its own image), all evaluated in ONE compiled call per block of
items (``MirrorProgram``; the conditions stacked on the batch axis, which is split over the mesh's data axes):

- ``orig``: the item as it is;
- ``flip``: the boxes mirrored left-right (x -> 1 - x: ``x1' = 1 - x2``, ``x2' = 1 - x1``; y and the area kept) on
  every real detector row; the global ``[IMG]`` row (the whole image, which the flip maps onto itself) and padded
  rows are left alone (``flip_locations``);
- ``swap``: every mirror word of the caption replaced by its partner (``left`` <-> ``right``; pairs from config
  ``mirror.words``) where it is a WHOLE word token: the word's own vocabulary id, not followed by a ``##`` piece
  (``leftover`` = ``left ##over`` is not swapped; ``##right`` in ``b ##right`` is another id) (``swap_words``);
- ``flip+swap``: both: the mirrored scene with the mirrored caption.

Measures per item and condition:

- MLM: the condition's caption with every mirror-word token replaced by ``[MASK]``; the targets are the caption's
  own words in that condition (``orig`` / ``flip``: the original words, ``swap`` / ``flip+swap``: the swapped
  ones). ``mlm_nats``: the mean over the item's mirror tokens of -ln p(target) (natural log: nats); ``mlm_acc``: the
  share of them whose target beats its mirror word, p(target) > p(partner) (ties count half). With the words masked,
  ``orig`` and ``swap`` share one input (so do ``flip`` and ``flip+swap``): two masked rows per item serve the four
  conditions, and mlm(swap) - mlm(orig) = ln p(word) / p(partner) on the original image.
- ITM: ``score_fn`` of the unmasked caption of the condition with its boxes; by default the match score logit0 -
  logit1 (``jaxvl.probes.pairs.itm_match_score``); the ITM says "match" where it is >= 0.

Both measures are functions passed in (``word_fn``: the output -> log-probabilities at the masked rows; ``score_fn``:
the output -> one score per row), not a hard-wired head.

Reading (``MirrorResult.summary``, 95% bootstrap intervals over items, one resampling for every statistic):
``mlm_flip`` = mean[mlm(flip) - mlm(orig)] > 0 where the boxes decide the side (0 for a model that ignores box
locations); ``mlm_swap`` = mean[mlm(swap) - mlm(orig)], the preference for the caption's word given the image;
``mlm_consistency`` = mean|mlm(flip+swap) - mlm(orig)| (small for a model that reads geometry: the mirrored
caption fits the mirrored scene); ``mlm_interaction`` = mean[mlm(flip) + mlm(swap) - mlm(orig) - mlm(flip+swap)]
(0 where the flip and the words act apart). ITM: mean|s(flip) - s(orig)| against mean|s(flip+swap) - s(orig)|
(their difference ``itm_contrast`` > 0 for a model that reads the side from the boxes) and the share of items
whose ITM decision each condition changes. ``MirrorResult.verdict``: "uses left/right geometry" when the interval
of ``mlm_flip`` lies above 0 and its mean above ``floor`` (default ``MLM_FLOOR_NATS``), else "no evidence"; no ITM
verdict for a head that was never trained.

Locations: VOLTA's ``[x1, y1, x2, y2]`` or ``[x1, y1, x2, y2, area]`` normalised to the image (``num_locs`` 4 or 5;
other layouts are refused). ORT's captioner boxes ``[x_min, y_min, x_max, y_max]`` in [0, 1] flip the same way.

    words = MirrorWords.from_tokenizer(tokenizer, "left:right")
    result = run_mirror(model, params, items, words)        # items: PairItems; drops items without a mirror word
    s = result.summary(); s["mlm_flip"], s["mlm_flip_low"], s["mlm_flip_high"]; result.verdict("uniter")

``jaxvl probe mirror`` is ``jaxvl.probes.mirror_run.probe_mirror``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.ablation.conditions import global_layout
from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.probes.pairs import PairItems, itm_logits, itm_match_score
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, make_mesh, replicate, to_host

CONDITIONS = ("orig", "flip", "swap", "flip+swap")
FLIPPED, SWAPPED = (False, True, False, True), (False, False, True, True)  # per condition
MEASURES = ("mlm_nats", "mlm_acc", "itm")
MLM_FLOOR_NATS = 0.1  # the verdict's floor on mlm_flip: a 2-way choice at p = 0.5 moved to p = 0.45
WORDS_KEY = "mirror.words"


def itm_value(out: VLOutput) -> jax.Array:
    """The default score function: the ITM match score logit0 - logit1 [B]."""
    return itm_match_score(itm_logits(out))


def mlm_log_probs(out: VLOutput) -> jax.Array:
    """The default word function: log-probabilities [B, P, vocab] of the MLM head at the masked rows."""
    return jax.nn.log_softmax(out.mlm_logits.astype(jnp.float32), axis=-1)


# ------------------------------------------------------------------------------------------- pure functions


def flip_locations(locations: Any, rows: Any) -> Any:
    """Boxes mirrored left-right on ``rows``: ``x1' = 1 - x2``, ``x2' = 1 - x1``, the rest (y, area) kept.

    ``locations`` [..., L, num_locs] (``[x1, y1, x2, y2]`` or ``[x1, y1, x2, y2, area]``, normalised; ORT's relative
    boxes likewise), ``rows`` [..., L] bool (``flip_rows``). numpy in, numpy out; jax in, jax out. An involution up to
    float32 rounding of 1 - x (<= 2^-24 absolute), and exactly one on boxes it has flipped once."""
    num_locs = locations.shape[-1]
    if num_locs not in (4, 5):
        raise ValueError(f"box locations with {num_locs} values: the mirror flip knows [x1, y1, x2, y2] (4) and "
                         "[x1, y1, x2, y2, area] (5), VOLTA's normalised layouts")
    xp = jnp if isinstance(locations, jax.Array) or isinstance(rows, jax.Array) else np
    flipped = xp.concatenate([1 - locations[..., 2:3], locations[..., 1:2], 1 - locations[..., 0:1],
                              locations[..., 3:]], axis=-1).astype(locations.dtype)
    return xp.where(rows[..., None], flipped, locations)


def flip_rows(region_mask: np.ndarray, add_global: str | None) -> np.ndarray:
    """bool [..., L]: the rows the flip moves: real rows (``region_mask`` 1) other than the global ``[IMG]`` row."""
    rows = np.asarray(region_mask) > 0
    layout = global_layout(add_global)
    if layout is not None:
        rows = rows.copy()
        rows[..., layout[0]] = False
    return rows


def parse_mirror_words(spec: str) -> tuple[tuple[str, str], ...]:
    """``"left:right[,a:b]"`` -> ((left, right), (a, b)), lower-cased; malformed specs raise naming ``mirror.words``."""
    pairs, seen = [], set()
    for part in (p.strip() for p in str(spec).split(",")):
        if not part:
            continue
        words = [w.strip().lower() for w in part.split(":")]
        if len(words) != 2 or not all(words) or words[0] == words[1]:
            raise ValueError(f"config {WORDS_KEY}={spec!r}: {part!r} is not a pair of two different words 'a:b'")
        if seen & set(words):
            raise ValueError(f"config {WORDS_KEY}={spec!r}: {sorted(seen & set(words))[0]!r} is in two pairs")
        seen |= set(words)
        pairs.append(tuple(words))
    if not pairs:
        raise ValueError(f"config {WORDS_KEY}={spec!r}: no word pair (expected 'left:right[,a:b]')")
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class MirrorWords:
    """The mirror word pairs as vocabulary ids: ``pairs`` ((word, partner), ...), ``ids`` ((id, partner id), ...),
    ``continuation`` bool [V] (the vocabulary's ``##`` pieces)."""

    pairs: tuple[tuple[str, str], ...]
    ids: tuple[tuple[int, int], ...]
    continuation: np.ndarray

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, spec: str | Sequence[tuple[str, str]]) -> MirrorWords:
        """From a ``jaxvl.data.tokenizer.Tokenizer`` and ``"left:right[,a:b]"`` (or pairs). Words that are not a
        whole-word token of the vocabulary raise ONE ValueError naming them and the key ``mirror.words``."""
        pairs = parse_mirror_words(spec) if isinstance(spec, str) else tuple(tuple(p) for p in spec)
        tokens = tokenizer.tokens
        vocab = {t: i for i, t in enumerate(tokens)}
        special = {tokens[i] for i in tokenizer.special_ids}
        missing = [w for p in pairs for w in p if w not in vocab or w.startswith("##") or w in special]
        if missing:
            raise ValueError(f"config {WORDS_KEY}: {', '.join(repr(w) for w in missing)} "
                             f"{'is not a word token' if len(missing) == 1 else 'are not word tokens'} of the "
                             f"vocabulary ({getattr(tokenizer, 'source', '')}, {len(tokens)} tokens)")
        ids = tuple((vocab[a], vocab[b]) for a, b in pairs)
        return cls(pairs, ids, np.array([t.startswith("##") for t in tokens], bool))

    @property
    def label(self) -> str:
        return ", ".join(f"{a}/{b}" for a, b in self.pairs)

    def table(self, size: int) -> np.ndarray:
        """int32 [size]: id -> its partner's id (itself for every other id)."""
        if max(max(p) for p in self.ids) >= size:
            raise ValueError(f"config {WORDS_KEY}: a mirror word's id lies outside the model's {size} ids")
        table = np.arange(size, dtype=np.int32)
        for a, b in self.ids:
            table[a], table[b] = b, a
        return table

    def positions(self, input_ids: np.ndarray, text_mask: np.ndarray) -> np.ndarray:
        """bool [..., Lt]: the whole-word mirror tokens of ``[CLS] sub-words [SEP] pad`` rows: a caption position
        (1 <= p < length - 1) holding a mirror word's id, the next token not a ``##`` piece."""
        ids, mask = np.asarray(input_ids), np.asarray(text_mask)
        word = np.isin(ids, [i for p in self.ids for i in p])
        nxt = np.concatenate([ids[..., 1:], np.zeros_like(ids[..., :1])], -1)
        cont = np.zeros(max(len(self.continuation), int(ids.max(initial=0)) + 1), bool)
        cont[:len(self.continuation)] = self.continuation
        pos = np.arange(ids.shape[-1])
        caption = (pos >= 1) & (pos < mask.sum(-1, keepdims=True) - 1)
        return word & caption & ~cont[nxt]


def swap_words(input_ids: Any, where: Any, table: Any) -> Any:
    """``input_ids`` with the tokens at ``where`` (``MirrorWords.positions``) replaced by their partners
    (``MirrorWords.table``); numpy or jax."""
    xp = jnp if isinstance(input_ids, jax.Array) else np
    return xp.where(where, table[input_ids], input_ids)


def position_table(where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool [N, Lt] -> (int32 positions [N, P], bool valid [N, P]), P = the most mirror tokens of an item (>= 1);
    unused slots point at position 0 and are not valid."""
    counts = where.sum(1)
    p = max(int(counts.max(initial=0)), 1)
    positions, valid = np.zeros((len(where), p), np.int32), np.zeros((len(where), p), bool)
    for i, row in enumerate(where):
        idx = np.flatnonzero(row)
        positions[i, :len(idx)], valid[i, :len(idx)] = idx, True
    return positions, valid


def select_mirror_items(items: PairItems, words: MirrorWords) -> tuple[PairItems, np.ndarray]:
    """The items whose caption holds at least one whole-word mirror token (after truncation), and their indices."""
    keep = np.flatnonzero(words.positions(items.input_ids, items.text_mask).any(1))
    if keep.size == 0:
        raise ValueError(f"none of the {items.n} items' captions holds a mirror word as a whole word token "
                         f"({words.label}; config {WORDS_KEY})")
    fields = {f.name: getattr(items, f.name)[keep] for f in dataclasses.fields(items)}
    return PairItems(**fields), keep


# ------------------------------------------------------------------------------------------- the program


def _condition_stats(lp_word: jax.Array, lp_partner: jax.Array, valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[.., B, P] log-probs of the target and its partner -> (mean -ln p(target), 2-way accuracy) [.., B]."""
    count = jnp.maximum(valid.sum(-1), 1)
    nats = -jnp.where(valid, lp_word, 0.0).sum(-1) / count
    wins = jnp.where(lp_word > lp_partner, 1.0, jnp.where(lp_word == lp_partner, 0.5, 0.0))
    return nats, jnp.where(valid, wins, 0.0).sum(-1) / count


class MirrorProgram:
    """The compiled four-condition evaluation of ``model``: ``program(variables, items, words) -> MirrorResult``.

    ``mask_id``: the tokenizer's ``[MASK]``; ``block`` items per compiled call (2 masked + 4 plain model rows each;
    2 x ``block`` must divide over the mesh's ``data_axes`` devices); ``score_fn`` (default ``itm_value``) and
    ``word_fn`` (default ``mlm_log_probs``): the module doc; ``score_fn`` sees the plain rows' output with the MLM
    head run at position 0 only, ``word_fn`` the masked rows' with it at the mirror tokens ([rows, P, vocab]).
    One compile per (item shape, mirror tokens per item).
    """

    def __init__(self, model: VLBertForPreTraining, mask_id: int, mesh: Mesh | None = None, block: int = 8,
                 score_fn: Callable[[VLOutput], jax.Array] = itm_value,
                 word_fn: Callable[[VLOutput], jax.Array] = mlm_log_probs,
                 data_axes: tuple[str, ...] = DEFAULT_DATA_AXES, compiler_options: dict[str, Any] | None = None):
        self.model, self.mask_id, self.block = model, int(mask_id), int(block)
        self.mesh = make_mesh() if mesh is None else mesh
        self.score_fn, self.word_fn = score_fn, word_fn
        if self.mask_id >= model.cfg.vocab_size:
            raise ValueError(f"mask_id={mask_id} is outside the model's vocabulary ({model.cfg.vocab_size} ids)")
        axes = tuple(a for a in data_axes if a in self.mesh.axis_names)
        shards = math.prod(self.mesh.shape[a] for a in axes)
        if self.block < 1 or (2 * self.block) % shards:
            raise ValueError(f"{self.block} items per block (2 x {self.block} masked rows, 4 x {self.block} plain "
                             f"rows) must be positive and 2 x block a multiple of the {shards} devices of mesh axes "
                             f"{axes} (config text_block)")
        self.rows = NamedSharding(self.mesh, PartitionSpec(axes or None))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._block = jax.jit(self._program, out_shardings=self.replicated, compiler_options=compiler_options)

    def _apply(self, variables: Any, ids: jax.Array, b: dict[str, jax.Array], locations: jax.Array, copies: int,
               positions: jax.Array) -> VLOutput:
        rows = lambda x: jax.lax.with_sharding_constraint(x, self.rows)  # noqa: E731
        rep = lambda k: rows(jnp.concatenate([b[k]] * copies))  # noqa: E731
        return self.model.apply(variables, rows(ids), rep("features"), rows(locations), rep("token_type_ids"),
                                rep("text_mask"), rep("region_mask"), text_positions=rows(positions))

    def _program(self, variables: Any, b: dict[str, jax.Array], table: jax.Array) -> dict[str, jax.Array]:
        """One block's fields [B, ...] (+ ``mirror`` [B, Lt], ``positions`` / ``valid`` [B, P], ``flip_rows``
        [B, Lv]) -> ``mlm_nats``, ``mlm_acc``, ``itm`` [4, B] (conditions in ``CONDITIONS`` order)."""
        ids, where, pos = b["input_ids"], b["mirror"], b["positions"]
        n = ids.shape[0]
        swapped = swap_words(ids, where, table)
        masked = jnp.where(where, self.mask_id, ids)
        locs = b["locations"]
        flipped = flip_locations(locs, b["flip_rows"])
        loc_of = lambda f: flipped if f else locs  # noqa: E731
        # plain rows, condition-major: ITM (or any score) of each condition's caption with its boxes
        plain_ids = jnp.concatenate([swapped if s else ids for s in SWAPPED])
        plain_locs = jnp.concatenate([loc_of(f) for f in FLIPPED])
        first = jnp.zeros((4 * n, 1), jnp.int32)  # the MLM head at one row only: cheap
        score = self.score_fn(self._apply(variables, plain_ids, b, plain_locs, 4, first)).astype(jnp.float32)
        # masked rows, one per box geometry (original, flipped): the mirror words' log-probs
        out = self._apply(variables, jnp.concatenate([masked, masked]), b, jnp.concatenate([locs, flipped]), 2,
                          jnp.concatenate([pos, pos]))
        lp = self.word_fn(out).astype(jnp.float32).reshape(2, n, pos.shape[1], -1)  # [geometry, B, P, V]
        word = jnp.take_along_axis(ids, pos, 1)  # the caption's own words [B, P]

        def at(w: jax.Array) -> jax.Array:  # [geometry, B, P]: log p(w) at each masked token
            return jnp.take_along_axis(lp, jnp.broadcast_to(w[None, :, :, None], (2, *w.shape, 1)), -1)[..., 0]

        lp_word, lp_partner = at(word), at(table[word])
        conds = list(zip(FLIPPED, SWAPPED, strict=True))
        target = jnp.stack([lp_partner[int(f)] if s else lp_word[int(f)] for f, s in conds])
        partner = jnp.stack([lp_word[int(f)] if s else lp_partner[int(f)] for f, s in conds])
        nats, acc = _condition_stats(target, partner, b["valid"][None])
        return dict(mlm_nats=nats, mlm_acc=acc, itm=score.reshape(4, n))

    def __call__(self, variables: Any, items: PairItems, words: MirrorWords,
                 progress: Callable[[int], Any] | None = None, item_ids: Sequence[Any] | None = None) -> MirrorResult:
        """The four conditions of every item; every item needs a whole-word mirror token (``select_mirror_items``).
        ``progress(items)`` after each block; ``item_ids`` label the items (default 0 .. N - 1)."""
        items = items if isinstance(items, PairItems) else PairItems.from_batch(items)
        items.check()
        where = words.positions(items.input_ids, items.text_mask)
        counts = where.sum(1)
        if (counts == 0).any():
            raise ValueError(f"{int((counts == 0).sum())} of {items.n} items hold no mirror word ({words.label}) as "
                             "a whole word token: select them with select_mirror_items")
        positions, valid = position_table(where)
        table = words.table(self.model.cfg.vocab_size)
        if items.input_ids.max() >= len(table):
            raise ValueError(f"token id {int(items.input_ids.max())} lies outside the model's {len(table)} ids")
        fields = dict(items.padded(-(-items.n // self.block) * self.block), mirror=where, positions=positions,
                      valid=valid, flip_rows=flip_rows(items.region_mask, self.model.cfg.add_global_imgfeat))
        for k in ("mirror", "positions", "valid", "flip_rows"):  # pad like PairItems.padded: copies of item 0
            x = fields[k]
            fields[k] = np.concatenate([x, np.repeat(x[:1], len(fields["input_ids"]) - len(x), 0)])
        variables = nn.meta.unbox(variables)
        variables = jax.device_put(variables if "params" in variables else {"params": variables}, self.replicated)
        table = replicate(table, self.replicated)
        outs = []
        with jax.set_mesh(self.mesh):
            for start in range(0, items.n, self.block):
                b = replicate({k: v[start:start + self.block] for k, v in fields.items()}, self.replicated)
                outs.append(to_host(self._block(variables, b, table)))
                if progress is not None:
                    progress(min(self.block, items.n - start))
        got = {k: np.concatenate([o[k] for o in outs], 1)[:, :items.n] for k in MEASURES}
        ids = list(range(items.n)) if item_ids is None else list(item_ids)
        return MirrorResult(got["mlm_nats"], got["mlm_acc"], got["itm"], counts.astype(np.int32), ids, words.pairs)


def run_mirror(model: VLBertForPreTraining, params: Any, items: PairItems, words: MirrorWords, mask_id: int,
               mesh: Mesh | None = None, block: int = 8, itm_trained: bool = True,
               compiler_options: dict[str, Any] | None = None, **kwargs: Any) -> MirrorResult:
    """The mirror probe of one model on the items that hold a whole-word mirror token (the others dropped; their
    number in ``MirrorResult.dropped``); items labelled by their index in ``items``. ``kwargs``: ``score_fn``,
    ``word_fn``, ``data_axes`` of ``MirrorProgram``."""
    kept, index = select_mirror_items(items, words)
    program = MirrorProgram(model, mask_id, mesh, block, compiler_options=compiler_options, **kwargs)
    result = program(params, kept, words, item_ids=index.tolist())
    return dataclasses.replace(result, dropped=items.n - kept.n, itm_trained=itm_trained)


# ------------------------------------------------------------------------------------------- results


def _num(x: float, digits: int, sign: str = "") -> str:
    """``digits`` decimals, or 2 significant digits where those would show a nonzero number as 0."""
    small = math.isfinite(x) and x != 0 and abs(x) < 0.5 * 10.0 ** -digits
    return f"{x:{sign}.1e}" if small else f"{x:{sign}.{digits}f}"


@dataclasses.dataclass
class MirrorResult:
    """Per condition (``CONDITIONS``) and item: ``mlm_nats``, ``mlm_acc``, ``itm`` [4, N]; ``n_targets`` [N] the
    item's mirror tokens; ``item_ids`` [N] labels; ``pairs`` the word pairs; ``dropped`` items without a mirror
    token; ``itm_trained`` False for a head that was never trained (no ITM verdict)."""

    mlm_nats: np.ndarray
    mlm_acc: np.ndarray
    itm: np.ndarray
    n_targets: np.ndarray
    item_ids: list[Any]
    pairs: tuple[tuple[str, str], ...]
    dropped: int = 0
    itm_trained: bool = True

    @property
    def n(self) -> int:
        return int(self.mlm_nats.shape[1])

    def statistics(self) -> dict[str, np.ndarray]:
        """Per item [N]: every statistic the summary averages (module doc); shares and accuracies in [0, 1]."""
        m, a, s = self.mlm_nats, self.mlm_acc, self.itm
        o, f, w, fw = range(4)
        match = s >= 0  # itm_match_score >= 0 <=> argmax is "match"
        out = {}
        for c, name in enumerate(CONDITIONS):
            out.update({f"mlm_nats/{name}": m[c], f"mlm_acc/{name}": a[c], f"itm/{name}": s[c],
                        f"itm_match/{name}": match[c].astype(float)})
        out.update(mlm_flip=m[f] - m[o], mlm_swap=m[w] - m[o], mlm_flip_swap=m[fw] - m[o],
                   mlm_consistency=np.abs(m[fw] - m[o]), mlm_interaction=m[f] + m[w] - m[o] - m[fw],
                   acc_flip=a[f] - a[o], itm_flip=s[f] - s[o], itm_swap=s[w] - s[o], itm_flip_swap=s[fw] - s[o],
                   itm_abs_flip=np.abs(s[f] - s[o]), itm_abs_swap=np.abs(s[w] - s[o]),
                   itm_abs_flip_swap=np.abs(s[fw] - s[o]), itm_contrast=np.abs(s[f] - s[o]) - np.abs(s[fw] - s[o]),
                   itm_interaction=s[o] - s[f] - s[w] + s[fw],
                   itm_changed_flip=(match[f] != match[o]).astype(float),
                   itm_changed_swap=(match[w] != match[o]).astype(float),
                   itm_changed_flip_swap=(match[fw] != match[o]).astype(float))
        return out

    def summary(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
        """Each statistic's mean over items with its bootstrap interval (``name``, ``name_low``, ``name_high``;
        all from one set of resamples of the items), plus the counts."""
        from jaxvl.metrics.bootstrap import bootstrap_means, bootstrap_weights

        stats = self.statistics()
        values = np.stack(list(stats.values()), 1)
        mean, low, high = bootstrap_means(values, np.isfinite(values), bootstrap_weights(self.n, n_boot, seed), level)
        out: dict[str, Any] = dict(n_items=self.n, n_targets=int(self.n_targets.sum()), dropped=self.dropped,
                                   n_boot=n_boot, level=level, itm_trained=self.itm_trained)
        for k, name in enumerate(stats):
            out.update({name: float(mean[k]), f"{name}_low": float(low[k]), f"{name}_high": float(high[k])})
        return out

    def verdict(self, name: str = "the model", floor: float = MLM_FLOOR_NATS, summary: dict | None = None) -> str:
        """One line per measure: geometry use from ``mlm_flip`` (its interval above 0 and its mean above ``floor``
        nats), and from the ITM contrast unless the head was never trained; the numbers said."""
        s = self.summary() if summary is None else summary
        def ci(k: str) -> str:
            return f"{_num(s[k], 3, '+')} [{_num(s[k + '_low'], 3, '+')}, {_num(s[k + '_high'], 3, '+')}]"

        uses = s["mlm_flip_low"] > 0 and s["mlm_flip"] > floor
        said = f"{name} uses left/right geometry" if uses else f"no evidence that {name} uses left/right geometry"
        lines = [f"MLM: {said}: flipping the boxes changes the loss of the caption's {self.words_label} token by "
                 f"{ci('mlm_flip')} nats (mean "
                 f"[95% interval], n = {self.n}; the verdict needs an interval above 0 and a mean above {floor} "
                 f"nats); flip+swap |change| {s['mlm_consistency']:.3f} nats."]
        if not self.itm_trained:
            lines.append("ITM: no verdict (an untrained head's scores).")
        else:
            reads = s["itm_contrast_low"] > 0
            lines.append(f"ITM: {'the match score reads the side from the boxes' if reads else 'no evidence'}: "
                         f"mean|s(flip) - s(orig)| - mean|s(flip+swap) - s(orig)| = {ci('itm_contrast')} logits "
                         f"(> 0 with its interval for geometry use).")
        return "\n".join(lines)

    @property
    def words_label(self) -> str:
        return "/".join(w for p in self.pairs for w in p)

    def table(self, name: str, summary: dict | None = None, floor: float = MLM_FLOOR_NATS) -> str:
        """A markdown table of the per-condition means and the effects, with intervals, and the verdict."""
        s = self.summary() if summary is None else summary
        def cell(k: str, scale: float = 1.0, d: int = 3) -> str:
            return f"{_num(s[k] * scale, d)} [{_num(s[k + '_low'] * scale, d)}, {_num(s[k + '_high'] * scale, d)}]"

        itm = "ITM match score (logit0 - logit1)" + ("" if self.itm_trained else ", UNTRAINED head")
        lines = [f"Mirror probe of {name}: n = {self.n} items (captions holding a whole-word {self.words_label} "
                 f"token, each with its own image; {self.dropped} without one dropped), {s['n_targets']} mirror "
                 f"tokens. MLM loss: -ln p of the caption's word at its [MASK] (nats), mean over an item's mirror "
                 f"tokens; 2-way accuracy: p(word) > p(its mirror word). {itm}. Means over items with "
                 f"{100 * s['level']:.0f}% bootstrap intervals ({s['n_boot']} resamples of the items).", "",
                 f"| condition | MLM loss (nats) | 2-way accuracy (%) | {itm} | ITM says match (%) |",
                 "|---|---|---|---|---|"]
        for c in CONDITIONS:
            lines.append(f"| {c} | {cell(f'mlm_nats/{c}')} | {cell(f'mlm_acc/{c}', 100, 1)} | {cell(f'itm/{c}')} | "
                         f"{cell(f'itm_match/{c}', 100, 1)} |")
        untrained = "" if self.itm_trained else " (untrained head)"
        rows = [("MLM flip - orig (nats)", "mlm_flip", 1, 3, "> 0: the boxes decide the side"),
                ("MLM swap - orig (nats)", "mlm_swap", 1, 3, "preference for the caption's word on the image"),
                ("abs(MLM flip+swap - orig) (nats)", "mlm_consistency", 1, 3, "~0 for a model that reads geometry"),
                ("MLM interaction (nats)", "mlm_interaction", 1, 3, "flip + swap - orig - flip+swap: 0 if additive"),
                ("2-way accuracy flip - orig (points)", "acc_flip", 100, 1, "< 0: the flip misleads it"),
                (f"abs(ITM flip - orig){untrained}", "itm_abs_flip", 1, 3, "large for a model that reads geometry"),
                (f"abs(ITM flip+swap - orig){untrained}", "itm_abs_flip_swap", 1, 3, "small for one"),
                (f"ITM contrast: the two above{untrained}", "itm_contrast", 1, 3, "> 0: geometry use"),
                (f"ITM decision changed by flip (%){untrained}", "itm_changed_flip", 100, 1, ""),
                (f"ITM decision changed by swap (%){untrained}", "itm_changed_swap", 100, 1, ""),
                (f"ITM decision changed by flip+swap (%){untrained}", "itm_changed_flip_swap", 100, 1,
                 "small for a model that reads geometry")]
        lines += ["", "| effect | mean [95% interval] | reading |", "|---|---|---|"]
        lines += [f"| {label} | {cell(k, scale, d)} | {reading} |" for label, k, scale, d, reading in rows]
        return "\n".join(lines + ["", self.verdict(name, floor, s)])

    def tidy_rows(self) -> list[dict[str, Any]]:
        """One row per (item, condition, measure): ``item`` (its label), ``condition``, ``measure``
        (``mlm_nats``: nats; ``mlm_acc``: share in [0, 1]; ``itm``: the score), ``value``."""
        rows = []
        for i, item in enumerate(self.item_ids):
            for c, cond in enumerate(CONDITIONS):
                rows += [dict(item=item, condition=cond, measure=m, value=float(getattr(self, m)[c, i]))
                         for m in MEASURES]
        return rows

    def as_dict(self, per_item: bool = True, summary: dict | None = None, floor: float = MLM_FLOOR_NATS
                ) -> dict[str, Any]:
        """JSON-ready: the summary (NaN -> None), the verdict, the words, and per item its values per condition."""
        s = self.summary() if summary is None else summary
        out: dict[str, Any] = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in s.items()}
        out.update(conditions=list(CONDITIONS), words=[list(p) for p in self.pairs], units=dict(
            mlm_nats="nats (-ln p of the target word)", mlm_acc="share of mirror tokens with p(word) > p(mirror)",
            itm="ITM match score logit0 - logit1" if self.itm_trained else "untrained ITM head's logit0 - logit1"),
            floor_nats=floor, verdict=self.verdict("the model", floor, s))
        if per_item:
            out["items"] = [dict(item=self.item_ids[i], n_targets=int(self.n_targets[i]),
                                 **{m: dict(zip(CONDITIONS, getattr(self, m)[:, i].tolist(), strict=True))
                                    for m in MEASURES}) for i in range(self.n)]
        return out


__all__ = ["CONDITIONS", "MLM_FLOOR_NATS", "MirrorProgram", "MirrorResult", "MirrorWords", "flip_locations",
           "flip_rows", "itm_value", "mlm_log_probs", "parse_mirror_words", "position_table",
           "run_mirror", "select_mirror_items", "swap_words"]
