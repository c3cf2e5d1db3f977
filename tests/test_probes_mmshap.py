"""MM-SHAP: the antithetic permutation estimator against exact Shapley values by enumeration of all 2^P coalitions
(a known game, and tiny UNITER / LXMERT models), efficiency on every example, both region removals, padding never
a player, and T-SHAP / V-SHAP; several items per compiled call, split over the 8 test devices, give the values of
one item per call on one device."""

from __future__ import annotations

import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.models import get_model
from jaxvl.probes import PairItems
from jaxvl.probes.mmshap import (
    MMShapProgram,
    MMShapResult,
    all_ranks,
    coalition_inputs,
    coalitions,
    itm_value,
    player_mask,
    sample_ranks,
    shapley_from_values,
    slot_layout,
    t_shap,
)
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh

MASK_ID = 3


def exact_shapley(value, player: np.ndarray) -> np.ndarray:
    """phi [S] by enumerating every coalition of the players: value(keep [S] bool) -> float."""
    slots = np.flatnonzero(player)
    p = len(slots)
    cache = {}
    for r in range(p + 1):
        for sub in itertools.combinations(slots, r):
            keep = np.zeros(player.size, bool)
            keep[list(sub)] = True
            cache[sub] = value(keep)
    phi = np.zeros(player.size)
    for i in slots:
        others = [s for s in slots if s != i]
        for r in range(p):
            w = math.factorial(r) * math.factorial(p - r - 1) / math.factorial(p)
            for sub in itertools.combinations(others, r):
                phi[i] += w * (cache[tuple(sorted((*sub, i)))] - cache[sub])
    return phi


# ------------------------------------------------------------------------------------------- the estimator


def test_estimator_on_a_known_game_is_exact_and_efficient():
    player = np.array([True, False, True, True, False, True])  # slots 1 and 4 are padding
    rng = np.random.default_rng(0)
    w = rng.normal(size=6)
    game = lambda keep: float(w @ keep + 2.0 * keep[0] * keep[3] - 1.5 * keep[2] * keep[3] * keep[5] + 0.3)  # noqa: E731
    ranks = all_ranks(player)
    assert ranks.shape == (24, 6) and (np.sort(ranks[:, player], 1) == np.arange(4)).all()
    masks = np.asarray(coalitions(jnp.asarray(ranks), jnp.asarray(player)))
    assert masks.shape == (2 + 2 * 24 * 5, 6) and not masks[:, ~player].any()
    values = jnp.asarray([game(m) for m in masks], jnp.float32)
    phi = np.asarray(shapley_from_values(values, jnp.asarray(ranks), jnp.asarray(player)))
    np.testing.assert_allclose(phi, exact_shapley(game, player), atol=1e-5)
    assert (phi[~player] == 0).all()
    # sampled permutations: not exact, but efficient per permutation pair, and close with many of them
    for k in (1, 3, 400):
        ranks = sample_ranks(np.random.default_rng(k), player, k)
        masks = np.asarray(coalitions(jnp.asarray(ranks), jnp.asarray(player)))
        values = jnp.asarray([game(m) for m in masks], jnp.float32)
        phi = np.asarray(shapley_from_values(values, jnp.asarray(ranks), jnp.asarray(player)))
        assert phi.sum() == pytest.approx(game(player) - game(np.zeros(6, bool)), abs=1e-5)
    np.testing.assert_allclose(phi, exact_shapley(game, player), atol=0.1)


def test_players_and_t_shap():
    text_mask = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])  # [CLS] a b [SEP] pad pad; [CLS] a [SEP] ...
    region_mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # [IMG] r r pad; [IMG] r pad pad
    pos, rows = slot_layout(6, 4, "first")
    assert pos.tolist() == [1, 2, 3, 4] and rows.tolist() == [1, 2, 3]
    assert slot_layout(6, 4, "last")[1].tolist() == [0, 1, 2] and slot_layout(6, 4, None)[1].tolist() == [0, 1, 2, 3]
    player = player_mask(text_mask, region_mask, "first")
    assert player.tolist() == [[1, 1, 0, 0, 1, 1, 0], [1, 0, 0, 0, 1, 0, 0]]
    phi = np.array([[1.0, -1.0, 9, 9, 2.0, -4.0, 9], [0.0, 0, 0, 0, 0.0, 0, 0]])
    t = t_shap(phi, player, 4)
    assert t[0] == pytest.approx(2 / 8) and np.isnan(t[1])
    result = MMShapResult(phi, player, 4, np.zeros(2), np.zeros(2), 10, "mean", 0)
    s = result.summary(n_boot=50)
    assert s["n_defined"] == 1 and s["t_shap"] == pytest.approx(25.0) and s["v_shap"] == pytest.approx(75.0)
    assert s["t_shap_low"] == pytest.approx(25.0) and s["text_players_mean"] == 1.5


# ------------------------------------------------------------------------------------------- tiny models

LT, LV = 6, 5  # [CLS] + up to 3 sub-words + [SEP] + a padding slot; [IMG] + up to 3 regions + padding
TEXTS, REGIONS = (2, 3, 1), (2, 1, 3)  # per item: sub-words, detector regions (P = 4 each: one compile)


@functools.cache
def model_case(name: str) -> tuple:
    model = get_model(name, tiny=True)
    cfg = model.cfg
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(1), **model.dummy_inputs(1, 4, 3))
    rng = np.random.default_rng(5)
    n = len(TEXTS)
    batch = {"input_ids": np.full((n, LT), 7, np.int32), "text_mask": np.zeros((n, LT), np.int32),
             "features": np.full((n, LV, cfg.v_feature_size), 5.0, np.float32),
             "locations": rng.uniform(size=(n, LV, cfg.num_locs)).astype(np.float32),
             "region_mask": np.zeros((n, LV), np.int32)}
    for i, (t, r) in enumerate(zip(TEXTS, REGIONS, strict=True)):
        batch["input_ids"][i, :t + 2] = [1, *rng.integers(10, cfg.vocab_size, size=t), 2]
        batch["text_mask"][i, :t + 2] = 1
        feats = rng.normal(size=(r, cfg.v_feature_size)).astype(np.float32)
        batch["features"][i, 1:r + 1], batch["features"][i, 0] = feats, feats.mean(0)  # [IMG]: the data's mean
        batch["region_mask"][i, :r + 1] = 1
    mean_feature = rng.normal(size=cfg.v_feature_size).astype(np.float32)
    return model, variables, PairItems.from_batch(batch), mean_feature


@functools.cache
def program(name: str, removal: str, items_per_call: int = 1, devices: int = 8, chunk: int = 64) -> MMShapProgram:
    """The program on a mesh of the first ``devices`` test devices (all on the data axis)."""
    model, _, _, mean_feature = model_case(name)
    return MMShapProgram(model, MASK_ID, removal, mean_feature, chunk=chunk,
                         mesh=make_mesh(devices=jax.devices()[:devices]), items_per_call=items_per_call,
                         compiler_options=FAST_COMPILE)


def reference_values(name: str, removal: str, i: int, keeps: np.ndarray) -> np.ndarray:
    """The value of each coalition keeps [M, S] of item i, one plain batched model call (no chunks)."""
    model, variables, items, mean_feature = model_case(name)
    ex = {k: jnp.asarray(getattr(items, k)[i]) for k in ("input_ids", "token_type_ids", "text_mask", "features",
                                                          "locations", "region_mask")}
    ex["player"] = jnp.asarray(player_mask(items.text_mask[i], items.region_mask[i], model.cfg.add_global_imgfeat))
    pos, rows = slot_layout(LT, LV, model.cfg.add_global_imgfeat)
    b = jax.vmap(lambda k: coalition_inputs(ex, k, pos, rows, removal, jnp.asarray(mean_feature), MASK_ID,
                                            model.cfg.add_global_imgfeat))(jnp.asarray(keeps))
    out = model.apply(variables, b["input_ids"], b["features"], b["locations"], b["token_type_ids"],
                      b["text_mask"], b["region_mask"])
    return np.asarray(itm_value(out), np.float64)


@functools.cache
def exact_phi(name: str, removal: str) -> np.ndarray:
    """[N, S] exact Shapley values of every item by enumeration of its 2^4 coalitions (``reference_values``)."""
    model, _, items, _ = model_case(name)
    player = player_mask(items.text_mask, items.region_mask, model.cfg.add_global_imgfeat)
    assert (player.sum(1) == 4).all() and player.shape[1] == (LT - 2) + (LV - 1)
    phi = []
    for i in range(items.n):
        subsets = [np.isin(np.arange(player.shape[1]), np.flatnonzero(player[i])[list(c)])
                   for r in range(5) for c in itertools.combinations(range(4), r)]
        table = dict(zip((tuple(np.flatnonzero(s)) for s in subsets),
                         reference_values(name, removal, i, np.stack(subsets)), strict=True))
        phi.append(exact_shapley(lambda keep, t=table: t[tuple(np.flatnonzero(keep))], player[i]))
    return np.stack(phi)


@pytest.mark.parametrize("name,removal", [("uniter", "mean"), ("uniter", "mask"), ("lxmert", "mean")])
def test_all_permutations_equal_exact_enumeration(name, removal):
    model, variables, items, _ = model_case(name)
    prog = program(name, removal)
    player = player_mask(items.text_mask, items.region_mask, model.cfg.add_global_imgfeat)
    exact = exact_phi(name, removal)
    for i in range(items.n):
        out = prog.example(variables, items, i, all_ranks(player[i]))
        np.testing.assert_allclose(out["phi"], exact[i], atol=2e-5)
        assert out["phi"].sum() == pytest.approx(out["full"] - out["empty"], abs=1e-5)
    # f(all players): the model on the example itself ([IMG] as the data writes it), padding included
    full = model.apply(variables, items.input_ids, items.features, items.locations, items.token_type_ids,
                       items.text_mask, items.region_mask)
    whole = [prog.example(variables, items, i, all_ranks(player[i]))["full"] for i in range(items.n)]
    np.testing.assert_allclose(whole, np.asarray(itm_value(full)), atol=2e-5)


@pytest.mark.parametrize("name,removal", [("uniter", "mean"), ("uniter", "mask"),
                                          pytest.param("lxmert", "mean", marks=pytest.mark.slow)])
def test_items_per_call_and_sharding_keep_the_values(name, removal):
    """Two items per call over 8 devices, in chunks of 16 coalitions that straddle items, with the 3 items' texts and
    region counts all different (the second call padded): exact on all permutations, and the same sampled phi, f(all)
    and f(none) as one item per call on one device."""
    model, variables, items, _ = model_case(name)
    multi, single = program(name, removal, items_per_call=2, chunk=16), program(name, removal, devices=1)
    player = player_mask(items.text_mask, items.region_mask, model.cfg.add_global_imgfeat)
    calls = []
    out = multi.evaluate(variables, items, [2, 0, 1], np.stack([all_ranks(player[i]) for i in (2, 0, 1)]),
                         calls.append)
    assert calls == [2, 1] and out["phi"].shape == (3, player.shape[1]) and out["values"].shape == (3, 2 + 2 * 24 * 7)
    np.testing.assert_allclose(out["phi"], exact_phi(name, removal)[[2, 0, 1]], atol=2e-5)
    np.testing.assert_allclose(out["phi"].sum(1), out["full"] - out["empty"], atol=1e-5)
    with pytest.raises(ValueError, match="one row of K per item"):
        multi.evaluate(variables, items, [0, 1], all_ranks(player[0]))
    calls = []
    got = multi(variables, items, permutations=3, seed=4, progress=calls.append)
    want = single(variables, items, permutations=3, seed=4)
    assert calls == [2, 1] and got.coalitions == want.coalitions == 2 + 2 * 3 * 7
    for key in ("phi", "full", "empty"):
        np.testing.assert_allclose(getattr(got, key), getattr(want, key), atol=2e-5, err_msg=key)
    np.testing.assert_array_equal(got.player, want.player)
    np.testing.assert_allclose(got.phi.sum(1), got.full - got.empty, atol=1e-5)
    assert np.ptp(got.phi.sum(1)) > 1e-4  # the items differ, so a mixed-up item would show


@pytest.mark.parametrize("removal", ["mean", "mask"])
def test_sampled_efficiency_and_padding(removal):
    model, variables, items, _ = model_case("uniter")
    prog = program("uniter", removal)
    result = prog(variables, items, permutations=3, seed=1)
    assert result.phi.shape == (items.n, (LT - 2) + (LV - 1)) and result.coalitions == 2 + 2 * 3 * 7
    np.testing.assert_allclose(result.phi.sum(1), result.full - result.empty, atol=1e-5)
    assert (result.phi[~result.player] == 0).all() and np.isfinite(result.t_shap).all()
    np.testing.assert_allclose(result.t_shap + result.v_shap, 1.0)
    # padding content is never seen: other padding ids / features / boxes give the same values
    noisy = {k: np.array(getattr(items, k)) for k in ("input_ids", "token_type_ids", "text_mask", "features",
                                                       "locations", "region_mask")}
    noisy["input_ids"][items.text_mask == 0] = 11
    noisy["features"][items.region_mask == 0] = -3.0
    noisy["locations"][items.region_mask == 0] = 0.5
    again = prog(variables, PairItems.from_batch(noisy), permutations=3, seed=1)
    np.testing.assert_allclose(again.phi, result.phi, atol=2e-5)
    data = result.as_dict()
    assert data["removal"] == removal and len(data["examples"]) == items.n
    assert len(data["examples"][0]["phi_text"]) == TEXTS[0] and len(data["examples"][0]["phi_regions"]) == REGIONS[0]
    json.dumps(data)
    assert "| T-SHAP |" in result.table("uniter-tiny")


def test_bad_arguments():
    model = get_model("uniter", tiny=True)
    with pytest.raises(ValueError, match="removal="):
        MMShapProgram(model, MASK_ID, "zero")
    with pytest.raises(ValueError, match="mean_feature"):
        MMShapProgram(model, MASK_ID, "mean")
    with pytest.raises(ValueError, match="shape"):
        MMShapProgram(model, MASK_ID, "mean", np.zeros(3))
    with pytest.raises(ValueError, match="items_per_call=0"):
        MMShapProgram(model, MASK_ID, "mask", items_per_call=0)
    for chunk, mesh in ((12, make_mesh()), (3, make_mesh(data=2, tensor=4)), (0, make_mesh())):
        with pytest.raises(ValueError, match=f"chunk={chunk} .* multiple of the {mesh.shape['data']} devices"):
            MMShapProgram(model, MASK_ID, "mask", chunk=chunk, mesh=mesh)
    assert MMShapProgram(model, MASK_ID, "mask", chunk=6, mesh=make_mesh(data=2, tensor=4)).chunk == 6


@pytest.mark.parametrize("removal", ["mean", "mask"])
def test_coalition_inputs_remove_as_stated(removal):
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(5, 4)).astype(np.float32)  # [IMG] + 3 regions + padding
    ex = dict(input_ids=jnp.asarray([1, 20, 21, 22, 2, 0]), token_type_ids=jnp.zeros(6, jnp.int32),
              text_mask=jnp.asarray([1, 1, 1, 1, 1, 0]), features=jnp.asarray(feats),
              locations=jnp.zeros((5, 5)), region_mask=jnp.asarray([1, 1, 1, 1, 0]))
    ex["player"] = jnp.asarray(player_mask(np.asarray(ex["text_mask"]), np.asarray(ex["region_mask"]), "first"))
    assert np.asarray(ex["player"]).tolist() == [1, 1, 1, 0, 1, 1, 1, 0]
    keep = jnp.asarray([1, 0, 1, 0, 0, 1, 1, 0], bool)  # remove sub-word 21 and region row 1
    mean = np.full(4, 7.0, np.float32)
    pos, rows = slot_layout(6, 5, "first")
    out = {k: np.asarray(v) for k, v in coalition_inputs(ex, keep, pos, rows, removal, jnp.asarray(mean), MASK_ID,
                                                         "first").items()}
    assert out["input_ids"].tolist() == [1, 20, MASK_ID, 22, 2, 0] and out["text_mask"].tolist() == [1] * 5 + [0]
    if removal == "mean":
        np.testing.assert_allclose(out["features"][1], mean)
        np.testing.assert_allclose(out["features"][0], (mean + feats[2] + feats[3]) / 3, rtol=1e-6)
        assert out["region_mask"].tolist() == [1, 1, 1, 1, 0]
    else:
        np.testing.assert_allclose(out["features"][1:], feats[1:])
        np.testing.assert_allclose(out["features"][0], (feats[2] + feats[3]) / 2, rtol=1e-6)
        assert out["region_mask"].tolist() == [1, 0, 1, 1, 0]


# ------------------------------------------------------------------------------------------- the command

WORLD = "synthetic:num_images=32,val_images=8"


# End to end (its own pretraining, then four probe runs): -m slow. Not slow: `jaxvl probe mmshap` on a pretrained
# checkpoint (tests/test_probes_command.py::test_probe_mmshap_writes_its_plot), the bad removal and chunk
# (test_bad_arguments), mask removal (test_items_per_call_and_sharding_keep_the_values[uniter-mask]) and efficiency.
@pytest.mark.slow
def test_probe_mmshap_command(tmp_path, capsys):
    from jaxvl.cli import main

    run = tmp_path / "uniter"
    assert main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(run), "--config.steps=2",
                 f"--config.data.dataset={WORLD}", "--config.fast_compile=True", "--config.progress=False",
                 "--config.data.batch_size=8", "--config.data.max_seq_length=12", "--config.eval_every=0"]) == 0
    probe = ["probe", "mmshap", "--config", "probes:mmshap,tiny", "--config.progress=False",
             f"--config.checkpoints={run}", "--config.n_items=3", "--config.permutations=2"]
    out = tmp_path / "mmshap"
    assert main([*probe, "--workdir", str(out)]) == 0
    record = json.loads((out / "uniter" / "mmshap.json").read_text())
    assert record["n_examples"] == 3 and record["permutations"] == 2 and record["removal"] == "mean"
    for ex in record["examples"]:
        assert sum(ex["phi_text"]) + sum(ex["phi_regions"]) == pytest.approx(ex["full"] - ex["empty"], abs=1e-4)
    assert "| T-SHAP |" in (out / "table.md").read_text() and "| V-SHAP |" in capsys.readouterr().out
    assert main([*probe, "--workdir", str(out), "--config.removal=zero"]) == 2
    assert "config removal='zero'" in capsys.readouterr().err
    assert main([*probe, "--workdir", str(out), "--config.chunk=12"]) == 2  # 8 data devices
    assert "chunk=12 coalitions per model batch" in capsys.readouterr().err
    assert main([*probe, "--workdir", str(out), "--config.removal=mask", "--config.names=m"]) == 0
    assert json.loads((out / "m" / "mmshap.json").read_text())["removal"] == "mask"
