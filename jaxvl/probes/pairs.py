"""Every (text i, image j) pairing of N items, scored in compiled blocks, kept as streaming sums.

EMAP (and any probe that needs a model's output on all N x N pairings) must not hold the N x N x C
tensor: for VQA's C = 3129 classes and N = 1000 items that is 12.5 GB. ``PairProgram`` evaluates a text
block (``text_block`` items) against an image block (``image_block`` items) per compiled call, i.e.
``text_block * image_block`` pairs, and the host keeps only O(N x C) sums (``PairSums``):

- per class: row sums [N, C] (text i over all images), column sums [N, C] (image j over all texts), the
  diagonal [N, C] (the N matched pairs), and the count, mean and centred sum of squares [C] of all N^2
  pairs (combined per block with Chan's parallel formula, so the variance does not cancel);
- for the matched-vs-mismatched metrics: how many matched pairs the argmax predicts as ``match`` (class 0,
  VOLTA's ITM convention) and how many mismatched pairs as not ``match``, and the exact AUROC of the match
  score (``itm_match_score``: logit 0 minus the largest other logit; logit0 - logit1 for ITM). The AUROC
  keeps the N matched scores and counts, per block, the matched scores above each mismatched score
  (``searchsorted``; ties count half). Blocks holding matched pairs run first; their mismatched scores wait
  (O(N x block) floats) until all N matched scores are known.

A pair is text i's fields (``input_ids``, ``token_type_ids``, ``text_mask``) with image j's fields
(``features``, ``locations``, ``region_mask``); items keep their own padding, which the masks remove exactly
(padded keys get a -10000 bias, i.e. zero attention weight). The last block of each axis is padded with
copies of item 0 and masked out of every sum.

Single-stream models run whole per pair. Dual-stream models (``model.cfg.unimodal_prefix > 0``: LXMERT's
text-only and vision-only layers, ViLBERT's text-only layers) run their unimodal prefix once per item (one
compiled program over all items, block by block) and per pair only the cross sub-layers and the heads
(``model.from_prefix``). The pair axis of each block is split over the mesh's data axes; items (or their
prefix streams) and parameters are replicated. One compile per (item array shape, block shape).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.models.volta.pairing import PairForward
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, make_mesh, replicate, to_host

TEXT_FIELDS = ("input_ids", "token_type_ids", "text_mask")
IMAGE_FIELDS = ("features", "locations", "region_mask")
ScoreFn = Callable[[VLOutput], jax.Array]
MatchScore = Callable[[Any], Any]


def itm_logits(out: VLOutput) -> jax.Array:
    """The default score function: the ITM head's logits [B, itm_dim] (float32; index 0 = match)."""
    if out.itm_logits is None:
        raise ValueError("the model has no ITM head (fusion_method 'none'); pass another score function")
    return out.itm_logits.astype(jnp.float32)


def itm_match_score(logits: Any) -> Any:
    """[..., C] logits (C >= 2, class 0 = match) -> [...] match score: logit 0 minus the largest other logit
    (logit0 - logit1 for ITM). Positive exactly where the argmax is class 0 (a tie counts as match, as argmax
    picks the first). Works on numpy and jax arrays."""
    return logits[..., 0] - logits[..., 1:].max(-1)


@dataclasses.dataclass(frozen=True)
class PairItems:
    """N items, each a text and an image, padded to common lengths (1 = real in the masks).

    ``input_ids``, ``token_type_ids``, ``text_mask``: [N, Lt] int; ``features`` [N, Lv, v_feature_size] and
    ``locations`` [N, Lv, num_locs] float; ``region_mask`` [N, Lv] int (row 0 the global [IMG] row where the
    model has one). Item i's text is paired with every item j's image.
    """

    input_ids: np.ndarray
    token_type_ids: np.ndarray
    text_mask: np.ndarray
    features: np.ndarray
    locations: np.ndarray
    region_mask: np.ndarray

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> PairItems:
        """From a batch dict with those fields (``token_type_ids`` defaults to zeros); checks the shapes."""
        ids = np.asarray(batch["input_ids"], np.int32)
        tt = np.zeros_like(ids) if batch.get("token_type_ids") is None else np.asarray(batch["token_type_ids"])
        items = cls(ids, tt.astype(np.int32), np.asarray(batch["text_mask"], np.int32),
                    np.asarray(batch["features"], np.float32), np.asarray(batch["locations"], np.float32),
                    np.asarray(batch["region_mask"], np.int32))
        items.check()
        return items

    @property
    def n(self) -> int:
        return int(self.input_ids.shape[0])

    def check(self) -> None:
        """Raises ValueError on inconsistent shapes or an item with no real token or region."""
        n, lt = self.input_ids.shape
        lv = self.features.shape[1]
        want = {"token_type_ids": (n, lt), "text_mask": (n, lt), "region_mask": (n, lv)}
        for key, shape in want.items():
            if getattr(self, key).shape != shape:
                raise ValueError(f"pair items: '{key}' has shape {getattr(self, key).shape}, expected {shape}")
        if self.features.ndim != 3 or self.locations.shape[:2] != (n, lv):
            raise ValueError(f"pair items: features {self.features.shape} / locations {self.locations.shape} "
                             f"must be [N={n}, Lv, ...]")
        if n == 0:
            raise ValueError("pair items: no item")
        for key in ("text_mask", "region_mask"):
            empty = np.flatnonzero(getattr(self, key).sum(1) == 0)
            if empty.size:
                raise ValueError(f"pair items: '{key}' of item {int(empty[0])} has no real entry")

    def padded(self, rows: int) -> dict[str, np.ndarray]:
        """Every field with rows appended (copies of item 0) up to ``rows``."""
        def pad(x: np.ndarray) -> np.ndarray:
            return np.concatenate([x, np.repeat(x[:1], rows - x.shape[0], 0)]) if rows > x.shape[0] else x
        return {f.name: pad(getattr(self, f.name)) for f in dataclasses.fields(self)}


def block_stats(logits: jax.Array, text_index: jax.Array, image_index: jax.Array, n: int | jax.Array,
                match_score: MatchScore = itm_match_score) -> dict[str, jax.Array]:
    """The per-block reductions of one block's scores, with padded rows masked out.

    ``logits`` [bt, bv, C] (text-major), ``text_index`` [bt] / ``image_index`` [bv] the items' global indices
    (>= ``n`` for padding). Returns ``row_sum`` [bt, C], ``col_sum`` [bv, C], ``diag`` [bt, C] (the matched
    pair's logits where it lies in this block, else 0), ``count`` [] (real pairs), ``mean`` [C] and ``m2`` [C]
    (their centred sum of squares), ``matched_correct`` / ``mismatched_correct`` [] (argmax == 0 on matched,
    != 0 on mismatched pairs) and ``score`` [bt, bv] (``match_score`` of every pair, padding included).
    """
    logits = jnp.asarray(logits, jnp.float32)
    valid = (text_index < n)[:, None] & (image_index < n)[None, :]
    matched = valid & (text_index[:, None] == image_index[None, :])
    f = jnp.where(valid[..., None], logits, 0.0)
    count = valid.sum()
    mean = f.sum((0, 1)) / jnp.maximum(count, 1)
    m2 = jnp.where(valid[..., None], (logits - mean) ** 2, 0.0).sum((0, 1))
    says_match = jnp.argmax(logits, -1) == 0
    return dict(row_sum=f.sum(1), col_sum=f.sum(0), diag=jnp.where(matched[..., None], logits, 0.0).sum(1),
                count=count.astype(jnp.int32), mean=mean, m2=m2,
                matched_correct=(matched & says_match).sum().astype(jnp.int32),
                mismatched_correct=(valid & ~matched & ~says_match).sum().astype(jnp.int32),
                score=match_score(logits).astype(jnp.float32))


def auc_wins(sorted_positives: np.ndarray, negatives: np.ndarray) -> int:
    """Twice the Mann-Whitney count: sum over ``negatives`` of 2 x (#positives above) + (#positives equal).
    AUROC = wins / (2 x #positives x #negatives). ``sorted_positives`` ascending."""
    negatives = np.ravel(negatives)
    lo = np.searchsorted(sorted_positives, negatives, "left")
    hi = np.searchsorted(sorted_positives, negatives, "right")
    return int(2 * (len(sorted_positives) - hi).sum() + (hi - lo).sum())


@dataclasses.dataclass
class PairSums:
    """Streaming sums over the N x N pairs (float64 on the host; see the module docstring).

    ``row_sum[i]`` = sum_j f(t_i, v_j), ``col_sum[j]`` = sum_i f(t_i, v_j), ``diag[i]`` = f(t_i, v_i), all
    [N, C]; ``count``, ``mean`` [C], ``m2`` [C] over the pairs seen; ``matched_correct`` /
    ``mismatched_correct`` argmax counts; ``positive_scores`` [N] the match scores of the matched pairs;
    ``wins`` the AUROC's doubled Mann-Whitney count over the mismatched pairs counted so far (``negatives``).
    """

    n: int
    num_classes: int
    row_sum: np.ndarray
    col_sum: np.ndarray
    diag: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    positive_scores: np.ndarray
    count: int = 0
    matched_correct: int = 0
    mismatched_correct: int = 0
    wins: int = 0
    negatives: int = 0
    positives_seen: int = 0
    pending: list[np.ndarray] = dataclasses.field(default_factory=list)

    @classmethod
    def empty(cls, n: int, num_classes: int) -> PairSums:
        z = lambda *s: np.zeros(s, np.float64)  # noqa: E731
        return cls(n, num_classes, z(n, num_classes), z(n, num_classes), z(n, num_classes), z(num_classes),
                   z(num_classes), np.full(n, np.nan, np.float32))

    @property
    def complete(self) -> bool:
        """Whether every one of the N^2 pairs has been added."""
        return self.count == self.n * self.n and not self.pending

    @property
    def total(self) -> np.ndarray:
        """sum over all pairs [C]."""
        return self.row_sum.sum(0)

    @property
    def auroc(self) -> float:
        """The match score's AUROC, matched (positive) vs mismatched pairs, ties counted half."""
        if not self.complete:
            raise ValueError(f"{self.count} of {self.n * self.n} pairs added")
        return self.wins / (2 * self.n * self.negatives) if self.negatives else math.nan

    def add(self, stats: Mapping[str, np.ndarray], text_start: int, image_start: int) -> None:
        """Adds one block's ``block_stats`` (host arrays) for the texts from ``text_start`` and the images
        from ``image_start``."""
        bt, bv = np.shape(stats["score"])
        ti, ii = text_start + np.arange(bt), image_start + np.arange(bv)
        tv, iv = ti < self.n, ii < self.n
        self.row_sum[ti[tv]] += stats["row_sum"][tv]
        self.col_sum[ii[iv]] += stats["col_sum"][iv]
        self.diag[ti[tv]] += stats["diag"][tv]
        nb, mean_b = int(stats["count"]), np.asarray(stats["mean"], np.float64)
        total = self.count + nb
        delta = mean_b - self.mean
        self.m2 += np.asarray(stats["m2"], np.float64) + delta ** 2 * self.count * nb / total
        self.mean += delta * nb / total
        self.count = total
        self.matched_correct += int(stats["matched_correct"])
        self.mismatched_correct += int(stats["mismatched_correct"])
        valid = tv[:, None] & iv[None, :]
        matched = valid & (ti[:, None] == ii[None, :])
        rows, cols = np.nonzero(matched)
        self.positive_scores[ti[rows]] = stats["score"][rows, cols]
        self.positives_seen += len(rows)
        self.pending.append(np.asarray(stats["score"])[valid & ~matched])
        if self.positives_seen == self.n:
            positives = np.sort(self.positive_scores)
            for negatives in self.pending:
                self.wins += auc_wins(positives, negatives)
                self.negatives += negatives.size
            self.pending = []


class PairProgram:
    """The compiled N x N pair evaluation of ``model`` on ``mesh``: ``program(variables, items) -> PairSums``.

    ``score_fn(VLOutput) -> [B, C]`` float32 (default ``itm_logits``); ``match_score`` [..., C] -> [...] for
    the AUROC (default ``itm_match_score``). ``text_block * image_block`` pairs per call; it must divide over
    the mesh's ``data_axes`` devices. ``cache_prefix`` (default: whether the model has a unimodal prefix) runs
    dual-stream models' prefix once per item; False runs the whole model per pair (for checks).
    ``compiler_options``: XLA options (``jaxvl.runtime.compile.FAST_COMPILE`` for tests and CPU smoke runs).
    """

    def __init__(self, model: VLBertForPreTraining, mesh: Mesh | None = None, text_block: int = 8,
                 image_block: int = 8, score_fn: ScoreFn = itm_logits, match_score: MatchScore = itm_match_score,
                 cache_prefix: bool | None = None, data_axes: tuple[str, ...] = DEFAULT_DATA_AXES,
                 compiler_options: dict[str, Any] | None = None):
        self.model, self.mesh = model, make_mesh() if mesh is None else mesh
        self.text_block, self.image_block = int(text_block), int(image_block)
        self.score_fn, self.match_score = score_fn, match_score
        self.forward = PairForward(model, self.mesh, self.text_block, self.image_block, cache_prefix, data_axes)
        self.cache_prefix, self.shards = self.forward.cache_prefix, self.forward.shards
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        jit = lambda f: jax.jit(f, out_shardings=self.replicated, compiler_options=compiler_options)  # noqa: E731
        self._prefixes = jit(self.forward.prefixes)
        self._block = jit(self._block_stats)

    # ----------------------------------------------------------------------------- traced programs

    def _block_stats(self, variables: Any, text: dict[str, jax.Array], image: dict[str, jax.Array],
                     t0: jax.Array, i0: jax.Array, n: jax.Array) -> dict[str, jax.Array]:
        """Padded item arrays (or their prefix streams: ``PairForward.block_output``) -> ``block_stats`` of texts
        t0.. x images i0.."""
        out = self.forward.block_output(variables, text, image, t0, i0)
        logits = self.score_fn(out).astype(jnp.float32).reshape(self.text_block, self.image_block, -1)
        return block_stats(logits, t0 + jnp.arange(self.text_block), i0 + jnp.arange(self.image_block), n,
                           self.match_score)

    # ----------------------------------------------------------------------------- host driver

    def schedule(self, n: int) -> Iterator[tuple[int, int]]:
        """(text_start, image_start) of every block; blocks that hold matched pairs first (the AUROC's
        mismatched scores wait only until all matched scores are known)."""
        starts = [(t, i) for t in range(0, n, self.text_block) for i in range(0, n, self.image_block)]
        holds = lambda s: s[0] < s[1] + self.image_block and s[1] < s[0] + self.text_block  # noqa: E731
        yield from sorted(starts, key=lambda s: not holds(s))

    def __call__(self, variables: Any, items: PairItems | Mapping[str, Any],
                 progress: Callable[[int], Any] | None = None) -> PairSums:
        """Scores all N x N pairs of ``items``; ``variables`` as from ``model.init`` (or the params tree).
        ``progress(pairs)`` is called after each block with the real pairs it held."""
        items = items if isinstance(items, PairItems) else PairItems.from_batch(items)
        items.check()
        n = items.n
        variables = nn.meta.unbox(variables)
        variables = variables if "params" in variables else {"params": variables}
        variables = jax.device_put(variables, self.replicated)
        rows = lambda size: -(-n // size) * size  # noqa: E731
        text = {k: v for k, v in items.padded(rows(self.text_block)).items() if k in TEXT_FIELDS}
        image = {k: v for k, v in items.padded(rows(self.image_block)).items() if k in IMAGE_FIELDS}
        text, image = replicate(text, self.replicated), replicate(image, self.replicated)
        with jax.set_mesh(self.mesh):
            if self.cache_prefix:
                tp, vp = self._prefixes(variables, text, image)
                text = {"prefix": tp, "text_mask": text["text_mask"]}
                image = {"prefix": vp, "region_mask": image["region_mask"]}
            sums = None
            n_arr = jnp.int32(n)
            for t0, i0 in self.schedule(n):
                stats = to_host(self._block(variables, text, image, jnp.int32(t0), jnp.int32(i0), n_arr))
                if sums is None:
                    sums = PairSums.empty(n, stats["row_sum"].shape[-1])
                sums.add(stats, t0, i0)
                if progress is not None:
                    progress(int(stats["count"]))
        assert sums is not None and sums.complete
        return sums
