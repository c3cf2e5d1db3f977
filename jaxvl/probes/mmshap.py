"""MM-SHAP (Parcalabescu & Frank, ACL 2023): how much of a prediction is text vs image, by Shapley values.

Players: an example's caption sub-words (text positions 1 .. length - 2) and its real detector regions (the rows
with ``region_mask`` 1, the global ``[IMG]`` row excluded). ``[CLS]``, ``[SEP]`` and ``[IMG]`` are always kept;
padding is never a player. A player slot layout is fixed per input shape: ``S = St + Sv`` slots, ``St = Lt - 2``
text slots (positions 1 .. Lt - 2) then ``Sv`` region slots (the region rows, ``[IMG]`` left out); ``player``
[S] bool says which slots hold a real player of the example.

Removal of a player:
- text: its id becomes ``mask_id`` (``[MASK]``, the tokenizer's ``mask_id``; the attention mask is unchanged).
  The published code uses id 0 (``[PAD]``) instead.
- regions, ``removal="mean"`` (default, the ablation convention of ``jaxvl.ablation.conditions``): the row's
  feature becomes the dataset-mean region feature (box and mask unchanged); ``removal="mask"``: the row's
  ``region_mask`` becomes 0. In both the ``[IMG]`` row is recomputed from the region rows as the ablation
  does (``objectives.global_region_feature``, corrected divisor): the mean of the real rows (mean mode, removed rows
  holding the mean feature) or of the real rows still kept (mask mode). With no removal this is the ``[IMG]``
  row the data pipeline writes (``jaxvl.data.regions``), so f(all players) is the model on the example.

Sampling (as the published code: ``shap``'s permutation explainer, 10 permutations): per example K sampled
permutations of its players, each with its reverse (antithetic). The prefixes of permutation k are the
coalitions ``rank < j``; the reverse permutation's prefixes are their complements within the players. Each item
has ``C = 2 + 2 K (S - 1)`` coalitions (the empty and full sets once, then per permutation the forward prefixes
j = 1 .. S - 1 and their complements; prefixes with j >= P are the full set and take its value, so the padded
slots cost compute but not accuracy). The values of every coalition of ``items_per_call`` items are computed in
ONE compiled call: the items x coalitions are flattened item-major on one batch axis, padded to whole chunks of
``chunk`` coalitions (``lax.map`` over chunks, each a batch of the model whose rows are split over the mesh's
data axes; parameters and the items replicated). The last call of a run is padded with copies of the run's first
item, whose results are dropped. A coalition's value depends only on its own row, so phi does not depend on
``items_per_call`` nor on the mesh (up to float rounding of differently shaped batches). phi of a player is the
mean of its forward and reverse marginal contributions over the K permutations; per permutation the marginals
telescope to f(all) - f(none), so efficiency holds exactly up to float error.

T-SHAP = sum |phi_text| / (sum |phi_text| + sum |phi_image|), V-SHAP = 1 - T-SHAP (the paper's definition);
NaN for an example whose values are all 0. ``MMShapResult.summary`` aggregates with a 95% bootstrap interval.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.ablation.conditions import global_layout
from jaxvl.models.volta import objectives as obj
from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.probes.pairs import IMAGE_FIELDS, TEXT_FIELDS, PairItems, itm_logits, itm_match_score
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES, make_mesh, replicate

REMOVALS = ("mean", "mask")
DEFAULT_PERMUTATIONS = 10  # the published code's hard-coded npermutations
ValueFn = Callable[[VLOutput], jax.Array]


def itm_value(out: VLOutput) -> jax.Array:
    """The default value function: the ITM match score logit0 - logit1 [B] (``jaxvl.probes.pairs``)."""
    return itm_match_score(itm_logits(out))


# ------------------------------------------------------------------------------------------- players


def slot_layout(lt: int, lv: int, add_global: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(text positions [St], region rows [Sv]) of the player slots for text length ``lt`` and ``lv`` region rows."""
    if lt < 3:
        raise ValueError(f"text length {lt}: needs room for [CLS], a token and [SEP]")
    layout = global_layout(add_global)
    rows = np.arange(lv)[layout[1]] if layout is not None else np.arange(lv)
    return np.arange(1, lt - 1), rows


def player_mask(text_mask: np.ndarray, region_mask: np.ndarray, add_global: str | None) -> np.ndarray:
    """bool [..., S]: which slots are players: caption sub-words (1 <= p < length - 1) and real region rows.
    ``text_mask`` [..., Lt], ``region_mask`` [..., Lv] (1 = real)."""
    text_mask, region_mask = np.asarray(text_mask), np.asarray(region_mask)
    pos, rows = slot_layout(text_mask.shape[-1], region_mask.shape[-1], add_global)
    length = text_mask.sum(-1, keepdims=True)
    text = (pos >= 1) & (pos < length - 1) & (text_mask[..., pos] > 0)
    return np.concatenate([text, region_mask[..., rows] > 0], -1)


def sample_ranks(rng: np.random.Generator, player: np.ndarray, k: int) -> np.ndarray:
    """int32 [k, S]: k random permutations of the players as ranks (rank[s] = where slot s comes; players take
    0 .. P - 1, the other slots P .. S - 1 in slot order)."""
    player = np.asarray(player, bool)
    ranks = np.empty((k, player.size), np.int32)
    slots = np.flatnonzero(player)
    ranks[:, ~player] = np.arange(slots.size, player.size)
    for i in range(k):
        ranks[i, rng.permutation(slots)] = np.arange(slots.size)
    return ranks


def all_ranks(player: np.ndarray) -> np.ndarray:
    """int32 [P!, S]: every permutation of the players (for exact values on few players)."""
    player = np.asarray(player, bool)
    slots = np.flatnonzero(player)
    out = []
    for perm in itertools.permutations(slots):
        r = np.empty(player.size, np.int32)
        r[~player] = np.arange(slots.size, player.size)
        r[list(perm)] = np.arange(slots.size)
        out.append(r)
    return np.stack(out)


def coalitions(ranks: jax.Array, player: jax.Array) -> jax.Array:
    """bool [C, S], C = 2 + 2 K (S - 1): which players each coalition keeps (module doc). ``ranks`` [K, S]."""
    k, s = ranks.shape
    j = jnp.arange(1, s)
    prefix = (ranks[:, None, :] < j[None, :, None]) & player  # [K, S-1, S]
    rest = player & ~prefix
    ends = jnp.stack([jnp.zeros_like(player), player])
    return jnp.concatenate([ends, prefix.reshape(-1, s), rest.reshape(-1, s)])


def shapley_from_values(values: jax.Array, ranks: jax.Array, player: jax.Array) -> jax.Array:
    """phi [S] from the values [C] of ``coalitions(ranks, player)``: per permutation the mean of the forward and
    reverse marginal contributions, averaged over the K permutations; 0 on slots that are not players."""
    k, s = ranks.shape
    n = player.sum()
    empty, full = values[0], values[1]
    fwd = values[2:2 + k * (s - 1)].reshape(k, s - 1)
    rev = values[2 + k * (s - 1):].reshape(k, s - 1)
    past = jnp.arange(1, s) >= n  # prefixes that hold every player
    f = jnp.concatenate([jnp.full((k, 1), empty), jnp.where(past, full, fwd), jnp.full((k, 1), full)], 1)
    g = jnp.concatenate([jnp.full((k, 1), full), jnp.where(past, empty, rev), jnp.full((k, 1), empty)], 1)
    at = lambda a, r: jnp.take_along_axis(a, r, 1)  # noqa: E731
    r = jnp.minimum(ranks, s - 1)
    marginal = 0.5 * ((at(f, r + 1) - at(f, r)) + (at(g, r) - at(g, r + 1)))  # [K, S]
    return jnp.where(player, marginal.mean(0), 0.0)


def coalition_inputs(example: Mapping[str, jax.Array], keep: jax.Array, text_pos: np.ndarray,
                     region_rows: np.ndarray, removal: str, mean_feature: jax.Array, mask_id: int,
                     add_global: str | None) -> dict[str, jax.Array]:
    """One coalition's model inputs (no batch axis): ``example`` fields [Lt] / [Lv, ...], ``keep`` [S] bool
    (False on removed players and on non-player slots; only players are ever removed)."""
    st = len(text_pos)
    player = jnp.asarray(example["player"])
    gone = player & ~keep
    ids = example["input_ids"].at[text_pos].set(jnp.where(gone[:st], mask_id, example["input_ids"][text_pos]))
    rm = example["region_mask"]
    out_region = jnp.zeros(rm.shape, bool).at[region_rows].set(gone[st:])
    feats, mask = example["features"], rm
    if removal == "mean":
        feats = jnp.where(out_region[:, None], mean_feature.astype(feats.dtype), feats)
    else:
        mask = jnp.where(out_region, 0, rm)
    layout = global_layout(add_global)
    if layout is not None:
        g, rows = layout
        real = jnp.zeros(rm.shape, bool).at[region_rows].set(player[st:])  # real region rows
        counted = real & ~out_region if removal == "mask" else real
        summed = jnp.where(counted[:, None], feats, 0.0)[rows]
        glob = obj.global_region_feature(summed[None], real[rows][None], ~counted[rows][None], False)[0]
        feats = feats.at[g].set(glob.astype(feats.dtype))
    return dict(input_ids=ids, token_type_ids=example["token_type_ids"], text_mask=example["text_mask"],
                features=feats, locations=example["locations"], region_mask=mask)


# ------------------------------------------------------------------------------------------- the program


class MMShapProgram:
    """The compiled MM-SHAP of ``model`` on ``mesh``: ``program(variables, items, k, seed) -> MMShapResult``.

    ``value_fn(VLOutput) -> [B]`` float (default ``itm_value``); ``removal`` "mean" (needs ``mean_feature`` [D])
    or "mask"; ``mask_id`` the tokenizer's ``[MASK]`` id; ``chunk`` coalitions per model batch (a multiple of the
    devices of the mesh's ``data_axes``: the batch rows are split over them); ``items_per_call`` items whose
    coalitions one compiled call evaluates. One compile per (item shape, K); ``compiler_options`` as ``jax.jit``
    takes them (``FAST_COMPILE`` for tests).
    """

    def __init__(self, model: VLBertForPreTraining, mask_id: int, removal: str = "mean",
                 mean_feature: np.ndarray | None = None, value_fn: ValueFn = itm_value, chunk: int = 256,
                 mesh: Mesh | None = None, items_per_call: int = 1, data_axes: tuple[str, ...] = DEFAULT_DATA_AXES,
                 compiler_options: dict[str, Any] | None = None):
        if removal not in REMOVALS:
            raise ValueError(f"removal={removal!r}: expected one of {', '.join(REMOVALS)}")
        if removal == "mean" and mean_feature is None:
            raise ValueError("removal='mean' needs the dataset-mean region feature (mean_feature [D])")
        if items_per_call < 1:
            raise ValueError(f"items_per_call={items_per_call}: expected >= 1 items per compiled call")
        self.mesh = make_mesh() if mesh is None else mesh
        axes = tuple(a for a in data_axes if a in self.mesh.axis_names)
        shards = math.prod(self.mesh.shape[a] for a in axes)
        if chunk < 1 or chunk % shards:
            raise ValueError(f"chunk={chunk} coalitions per model batch: expected a positive multiple of the {shards} "
                             f"devices of mesh axes {axes} (its rows are split over them)")
        self.model, self.mask_id, self.removal = model, int(mask_id), removal
        self.chunk, self.items_per_call = int(chunk), int(items_per_call)
        d = model.cfg.v_feature_size
        self.mean_feature = np.zeros(d, np.float32) if mean_feature is None else np.asarray(mean_feature, np.float32)
        if self.mean_feature.shape != (d,):
            raise ValueError(f"mean_feature has shape {self.mean_feature.shape}, the model's features ({d},)")
        self.value_fn, self.add_global = value_fn, model.cfg.add_global_imgfeat
        self.rows = NamedSharding(self.mesh, PartitionSpec(axes or None))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._call = jax.jit(self._program, out_shardings=self.replicated, compiler_options=compiler_options)

    def _program(self, variables: Any, items: dict[str, jax.Array], ranks: jax.Array,
                 mean_feature: jax.Array) -> dict[str, jax.Array]:
        """B items' fields [B, ...] (plus ``player`` [B, S]) and ``ranks`` [B, K, S] -> ``phi`` [B, S], the values
        ``full`` / ``empty`` [B] of all / no players and all ``values`` [B, C]."""
        n, lt = items["input_ids"].shape
        text_pos, region_rows = slot_layout(lt, items["region_mask"].shape[1], self.add_global)
        masks = jax.vmap(coalitions)(ranks, items["player"])  # [B, C, S]
        c, s = masks.shape[1:]
        rows = n * c
        chunks = -(-rows // self.chunk)
        pad = chunks * self.chunk - rows
        keep = jnp.concatenate([masks.reshape(rows, s), jnp.zeros((pad, s), bool)]).reshape(chunks, self.chunk, s)
        owner = jnp.concatenate([jnp.repeat(jnp.arange(n), c), jnp.zeros(pad, jnp.int32)])  # each row's item
        split = lambda x: jax.lax.with_sharding_constraint(x, self.rows)  # noqa: E731

        def build(i: jax.Array, k: jax.Array) -> dict[str, jax.Array]:
            example = {name: x[i] for name, x in items.items()}
            return coalition_inputs(example, k, text_pos, region_rows, self.removal, mean_feature, self.mask_id,
                                    self.add_global)

        def run(chunk: tuple[jax.Array, jax.Array]) -> jax.Array:
            b = {name: split(x) for name, x in jax.vmap(build)(*map(split, chunk)).items()}
            first = split(jnp.zeros((self.chunk, 1), jnp.int32))  # the heads at one row only: cheap MLM/region heads
            out = self.model.apply(variables, b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                                   b["text_mask"], b["region_mask"], text_positions=first, region_positions=first)
            return self.value_fn(out).astype(jnp.float32)

        values = jax.lax.map(run, (owner.reshape(chunks, self.chunk), keep)).reshape(-1)[:rows].reshape(n, c)
        phi = jax.vmap(shapley_from_values)(values, ranks, items["player"])
        return dict(phi=phi, full=values[:, 1], empty=values[:, 0], values=values)

    def evaluate(self, variables: Any, items: PairItems, index: Sequence[int], ranks: np.ndarray,
                 progress: Callable[[int], Any] | None = None) -> dict[str, np.ndarray]:
        """The program on items ``index`` [b] of ``items`` with their permutations ``ranks`` [b, K, S], in calls of
        ``items_per_call`` items (the last padded with copies of the first item, dropped): host arrays ``phi``
        [b, S], ``full`` / ``empty`` [b], ``values`` [b, C]. ``progress(items)`` after each call."""
        index, ranks = np.asarray(index, np.int64), np.asarray(ranks, np.int32)
        if not len(index) or ranks.shape[:1] != index.shape or ranks.ndim != 3:
            raise ValueError(f"{len(index)} items, ranks {ranks.shape}: expected [b >= 1, K, S], one row of K per "
                             "item")
        variables = jax.device_put(_params(variables), self.replicated)
        mean = replicate(self.mean_feature, self.replicated)
        player = player_mask(items.text_mask, items.region_mask, self.add_global)
        b, size = len(index), self.items_per_call
        pad = -(-b // size) * size - b
        index = np.concatenate([index, np.repeat(index[:1], pad)])
        ranks = np.concatenate([ranks, np.repeat(ranks[:1], pad, 0)])
        outs = []
        with jax.set_mesh(self.mesh):
            for start in range(0, b, size):
                take = index[start:start + size]
                fields = {k: getattr(items, k)[take] for k in (*TEXT_FIELDS, *IMAGE_FIELDS)}
                fields["player"] = player[take]
                out = self._call(variables, replicate(fields, self.replicated),
                                 replicate(ranks[start:start + size], self.replicated), mean)
                real = min(size, b - start)
                outs.append({k: np.asarray(v.addressable_data(0))[:real] for k, v in out.items()})
                if progress is not None:
                    progress(real)
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

    def example(self, variables: Any, items: PairItems, i: int, ranks: np.ndarray) -> dict[str, np.ndarray]:
        """The program on item ``i`` of ``items`` with the permutations ``ranks`` [K, S] (host arrays back, no item
        axis)."""
        return {k: v[0] for k, v in self.evaluate(variables, items, [i], np.asarray(ranks)[None]).items()}

    def __call__(self, variables: Any, items: PairItems | Mapping[str, Any], permutations: int = DEFAULT_PERMUTATIONS,
                 seed: int = 0, progress: Callable[[int], Any] | None = None) -> MMShapResult:
        """MM-SHAP of every item (its own text with its own image) with ``permutations`` antithetic pairs each
        (item i's drawn from ``seed`` after items 0 .. i - 1's, whatever ``items_per_call``)."""
        items = items if isinstance(items, PairItems) else PairItems.from_batch(items)
        items.check()
        if permutations < 1:
            raise ValueError(f"permutations={permutations}: expected >= 1")
        player = player_mask(items.text_mask, items.region_mask, self.add_global)
        rng = np.random.default_rng(seed)
        ranks = np.stack([sample_ranks(rng, player[i], permutations) for i in range(items.n)])
        out = self.evaluate(variables, items, range(items.n), ranks, progress)
        st = items.input_ids.shape[1] - 2
        return MMShapResult(out["phi"], player, st, out["full"], out["empty"], permutations, self.removal,
                            2 + 2 * permutations * (player.shape[1] - 1))



def _params(variables: Any) -> Any:
    variables = nn.meta.unbox(variables)
    return variables if "params" in variables else {"params": variables}


# ------------------------------------------------------------------------------------------- results


def t_shap(phi: np.ndarray, player: np.ndarray, text_slots: int) -> np.ndarray:
    """[N] T-SHAP = sum |phi_text| / (sum |phi_text| + sum |phi_image|); ``phi``, ``player`` [N, S]."""
    a = np.where(player, np.abs(phi), 0.0).astype(np.float64)
    text, image = a[:, :text_slots].sum(1), a[:, text_slots:].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return text / (text + image)


@dataclasses.dataclass
class MMShapResult:
    """Per example: ``phi`` [N, S] (0 off the players), ``player`` [N, S] bool, the first ``text_slots`` slots
    text; ``full`` / ``empty`` [N] the values of all / no players (sum(phi) == full - empty); ``permutations``
    K antithetic pairs, ``removal`` of regions, ``coalitions`` C model inputs per example."""

    phi: np.ndarray
    player: np.ndarray
    text_slots: int
    full: np.ndarray
    empty: np.ndarray
    permutations: int
    removal: str
    coalitions: int

    @property
    def t_shap(self) -> np.ndarray:
        return t_shap(self.phi, self.player, self.text_slots)

    @property
    def v_shap(self) -> np.ndarray:
        return 1.0 - self.t_shap

    def summary(self, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, float]:
        """Mean T-SHAP / V-SHAP (in %) over examples with a defined T-SHAP, with a bootstrap interval."""
        from jaxvl.metrics.bootstrap import bootstrap_means, bootstrap_weights

        t = self.t_shap
        ok = np.isfinite(t)
        n = len(t)
        w = bootstrap_weights(n, n_boot, seed)
        vals = np.stack([np.nan_to_num(t), 1 - np.nan_to_num(t)], 1) * 100
        mean, low, high = bootstrap_means(vals, np.repeat(ok[:, None], 2, 1), w, level)
        text_players = self.player[:, :self.text_slots].sum(1)
        return dict(n_examples=n, n_defined=int(ok.sum()), t_shap=mean[0], t_shap_low=low[0], t_shap_high=high[0],
                    v_shap=mean[1], v_shap_low=low[1], v_shap_high=high[1],
                    text_players_mean=float(text_players.mean()),
                    region_players_mean=float((self.player.sum(1) - text_players).mean()))

    def table(self, name: str, value: str = "ITM match score (logit0 - logit1)") -> str:
        """A markdown table of the summary and what it counts."""
        s = self.summary()
        pct = lambda k: f"{s[k]:.1f} [{s[k + '_low']:.1f}, {s[k + '_high']:.1f}]"  # noqa: E731
        return "\n".join([
            f"MM-SHAP of {name}: n = {s['n_examples']} examples ({s['n_defined']} with a defined T-SHAP), "
            f"{self.permutations} antithetic permutation pairs, {self.coalitions} coalitions per example; value: "
            f"{value}; regions removed by {'the dataset-mean feature' if self.removal == 'mean' else 'masking'}, "
            f"text by [MASK]; {s['text_players_mean']:.1f} text and {s['region_players_mean']:.1f} region players "
            "per example on average.", "",
            "| measure | mean (%) [95% bootstrap interval] |", "|---|---|",
            f"| T-SHAP | {pct('t_shap')} |", f"| V-SHAP | {pct('v_shap')} |"])

    def as_dict(self, per_example: bool = True) -> dict[str, Any]:
        """JSON-ready summary (and per example T-SHAP, f(all), f(none) and the players' phi)."""
        out: dict[str, Any] = dict(permutations=self.permutations, removal=self.removal,
                                   coalitions_per_example=self.coalitions, **self.summary())
        out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}
        if per_example:
            t, st = self.t_shap, self.text_slots
            out["examples"] = [dict(t_shap=None if not np.isfinite(t[i]) else float(t[i]),
                                    full=float(self.full[i]), empty=float(self.empty[i]),
                                    phi_text=self.phi[i, :st][self.player[i, :st]].tolist(),
                                    phi_regions=self.phi[i, st:][self.player[i, st:]].tolist())
                               for i in range(len(t))]
        return out

    def save_json(self, path: Any, **extra: Any) -> Any:
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps({**self.as_dict(), **extra}, indent=1) + "\n")
        return path


__all__ = ["DEFAULT_PERMUTATIONS", "MMShapProgram", "MMShapResult", "REMOVALS", "all_ranks", "coalition_inputs",
           "coalitions", "itm_value", "player_mask", "sample_ranks", "shapley_from_values", "slot_layout", "t_shap"]
