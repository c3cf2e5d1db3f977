"""The colour probe (jaxvl.probes.colour): whole-word colour tokens and their foils, the projection off a colour
subspace and its random control, the compiled program against a per-condition loop of the model (tiny UNITER and
LXMERT, items of different lengths), the summaries and verdicts, and `jaxvl probe colour` end to end with its bad
inputs as ONE line naming the key or file."""

from __future__ import annotations

import csv
import functools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvl.cli import main
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.probes import PairItems, itm_logits, itm_match_score
from jaxvl.probes.colour import (
    CONDITIONS,
    ColourResult,
    caption_has_word,
    check_basis,
    colour_ids,
    colour_items,
    control_basis,
    project_out,
    run_colour,
    whole_word_mask,
)
from jaxvl.runtime.compile import FAST_COMPILE

WORDS = ["a", "an", "the", "red", "blue", "green", "car", "dog", "bird", "##dish", "##bird", "infra", "##red", "on"]
COLOURS = "red,blue,green,gray"  # gray is not in the vocabulary: skipped
CAPTIONS = ["a red car", "the dog on a blue car", "an infrared dog", "a reddish bird", "a bluebird on a green car",
            "a dog", "a green dog on the red car"]


@functools.cache
def tokenizer() -> Tokenizer:
    return Tokenizer.from_words(WORDS)


def text_items(captions, lt: int = 10, d: int = 24, regions=None, seed: int = 0) -> PairItems:
    """Items of ``captions``, each with its own random regions (``regions[i]`` of them, default 1 + i % 3), an [IMG]
    row 0 holding their mean, padding rows filled with 7.0 (never seen)."""
    tok, rng = tokenizer(), np.random.default_rng(seed)
    n, lv = len(captions), 5
    regions = regions or [1 + i % 3 for i in range(n)]
    ids, mask = zip(*(tok.encode(c, lt) for c in captions), strict=True)
    feats = np.full((n, lv, d), 7.0, np.float32)
    rm = np.zeros((n, lv), np.int32)
    for i, r in enumerate(regions):
        f = rng.normal(size=(r, d)).astype(np.float32)
        feats[i, 1:r + 1], feats[i, 0] = f, f.mean(0)
        rm[i, :r + 1] = 1
    return PairItems.from_batch(dict(input_ids=np.stack(ids), text_mask=np.stack(mask), features=feats,
                                     locations=rng.uniform(size=(n, lv, 5)).astype(np.float32), region_mask=rm))


def orthonormal(k: int, d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, k)))[0].T.astype(np.float32)


# ------------------------------------------------------------------------------------------- words and foils


def test_whole_word_colour_tokens_not_pieces_or_substrings():
    tok = tokenizer()
    ids = colour_ids(tok, COLOURS)
    assert list(ids) == ["red", "blue", "green"]  # gray is not in the vocabulary
    assert tok.tokenize("an infrared dog") == ["an", "infra", "##red", "dog"]
    assert tok.tokenize("a reddish bird") == ["a", "red", "##dish", "bird"]
    items = text_items(CAPTIONS)
    continuation = np.array([t.startswith("##") for t in tok.tokens])
    whole = whole_word_mask(items.input_ids, items.text_mask, list(ids.values()), continuation)
    found = [[tok.tokens[t] for t in items.input_ids[i][whole[i]]] for i in range(items.n)]
    # "infrared" holds ##red (another id), "reddish" is red + ##dish, "bluebird" is blue + ##bird: none is a colour
    assert found == [["red"], ["blue"], [], [], ["green"], [], ["green", "red"]]
    keep = caption_has_word(COLOURS)
    assert [keep(c) for c in CAPTIONS] == [True, True, False, False, True, False, True]
    assert keep("A Gray, dog") and not keep("greenish")


def test_colour_items_and_foils_are_deterministic_and_never_the_same_word():
    tok = tokenizer()
    items = text_items(CAPTIONS)
    ci = colour_items(items, tok, COLOURS, seed=3)
    assert ci.kept.tolist() == [0, 1, 4, 6] and ci.n == 4
    assert ci.position.tolist() == [2, 5, 6, 2]  # [CLS] first: the FIRST whole-word colour token
    assert [ci.word(t) for t in ci.true_id] == ["red", "blue", "green", "green"]
    assert (ci.true_id != ci.foil_id).all() and set(ci.foil_id) <= set(ci.words.values())
    np.testing.assert_array_equal(ci.items.features, items.features[ci.kept])
    again = colour_items(items, tok, COLOURS, seed=3)
    np.testing.assert_array_equal(again.foil_id, ci.foil_id)
    many = text_items(["a red car"] * 60)
    foils = colour_items(many, tok, COLOURS, seed=0).foil_id
    assert set(foils) == {tok.token_to_id("blue"), tok.token_to_id("green")}  # both others drawn, never red
    assert not (colour_items(many, tok, COLOURS, seed=1).foil_id == foils).all()
    with pytest.raises(ValueError, match=r"config colour.words: 1 of the words red, gray are whole tokens"):
        colour_items(items, tok, "red,gray")
    with pytest.raises(ValueError, match="config colour.words: none of the 2 items holds"):
        colour_items(text_items(["a dog", "an infrared dog"]), tok, COLOURS)


# ------------------------------------------------------------------------------------------- subspaces


def test_projection_removes_exactly_the_basis_component():
    rng = np.random.default_rng(0)
    d, k = 12, 3
    basis = orthonormal(k, d, 1)
    feats = rng.normal(size=(2, 5, d)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    feats[0, 0] = feats[0, 1:3].mean(0)  # [IMG]: the mean of the real region rows
    out = np.asarray(project_out(jnp.asarray(feats), jnp.asarray(mask), jnp.asarray(basis)))
    real = mask > 0
    np.testing.assert_allclose(out[real] @ basis.T, 0, atol=1e-5)  # no basis component left
    complement = np.eye(d) - basis.T @ basis
    np.testing.assert_allclose(out[real] @ complement, feats[real] @ complement, atol=1e-5)  # the rest kept
    np.testing.assert_array_equal(out[~real], feats[~real])  # padded rows untouched, bit for bit
    np.testing.assert_allclose(out[0, 0], out[0, 1:3].mean(0), atol=1e-5)  # [IMG] = mean of the projected rows
    assert np.abs(feats[real] @ basis.T).min() > 0  # there was something to remove


def test_basis_checks_and_the_random_control():
    d, k = 24, 4
    basis = orthonormal(k, d, 2)
    rows, changed = check_basis(basis, d)
    assert not changed and np.allclose(rows, basis)
    skewed = np.array([[2.0, 0, 0, *([0.0] * (d - 3))], [1.0, 1.0, 0, *([0.0] * (d - 3))]])
    rows, changed = check_basis(skewed, d)
    assert changed and np.allclose(rows @ rows.T, np.eye(2), atol=1e-6)
    np.testing.assert_allclose(skewed - (skewed @ rows.T) @ rows, 0, atol=1e-6)  # the same span
    control = control_basis(basis, seed=5)
    assert control.shape == (k, d) and control.dtype == np.float32
    np.testing.assert_allclose(control @ control.T, np.eye(k), atol=1e-6)
    np.testing.assert_allclose(control @ basis.T, 0, atol=1e-6)
    np.testing.assert_array_equal(control_basis(basis, seed=5), control)
    assert not np.allclose(control_basis(basis, seed=6), control)
    for bad, message in ((np.ones((k, d + 1)), r"shape \(4, 25\), expected \[k, 24\]"),
                         (np.ones(d), r"shape \(24,\)"), (np.ones((0, d)), "k >= 1"),
                         (orthonormal(13, d, 0), "k must be <= D / 2 = 12"),
                         (np.full((2, d), np.nan), "not finite"), (np.ones((2, d)), "linearly dependent")):
        with pytest.raises(ValueError, match=message):
            check_basis(bad, d, "config colour.basis: b.npy")


# ------------------------------------------------------------------------------------------- tiny models


@functools.cache
def model_case(name: str) -> tuple:
    model = get_model(name, tiny=True, vocab_size=tokenizer().vocab_size)
    variables = jax.jit(model.init, compiler_options=FAST_COMPILE)(jax.random.key(2), **model.dummy_inputs(1, 4, 3))
    return model, variables


def reference(model, variables, ci, projections) -> tuple[np.ndarray, np.ndarray]:
    """itm [N, F, 2] and mlm [N, F, 2] by one plain model call per (text, feature) condition."""
    it = ci.items
    rows = np.arange(ci.n)
    foil, masked = it.input_ids.copy(), it.input_ids.copy()
    foil[rows, ci.position], masked[rows, ci.position] = ci.foil_id, tokenizer().mask_id
    feats = [it.features]
    for b in projections:
        f = it.features.astype(np.float64)
        proj = f - (f @ b.T) @ b
        feats.append(np.where(it.region_mask[..., None] > 0, proj, f).astype(np.float32))
    itm, mlm = np.zeros((ci.n, len(feats), 2)), np.zeros((ci.n, len(feats), 2))
    apply = jax.jit(model.apply, compiler_options=FAST_COMPILE)  # one plain call per condition, compiled once
    for j, f in enumerate(feats):
        for t, ids in enumerate((it.input_ids, foil, masked)):
            out = apply(variables, ids, f, it.locations, it.token_type_ids, it.text_mask, it.region_mask)
            if t < 2:
                itm[:, j, t] = np.asarray(itm_match_score(itm_logits(out)))
            else:
                logp = np.asarray(jax.nn.log_softmax(out.mlm_logits[rows, ci.position].astype(jnp.float32), -1))
                mlm[:, j] = logp[rows[:, None], np.stack([ci.true_id, ci.foil_id], 1)]
    return itm, mlm


@pytest.mark.parametrize("name", ["uniter", pytest.param("lxmert", marks=pytest.mark.slow)])
def test_compiled_program_equals_a_loop_over_conditions(name):
    model, variables = model_case(name)
    d = model.cfg.v_feature_size
    captions = [CAPTIONS[i % len(CAPTIONS)] for i in range(21)]  # 12 with a colour token: 2 blocks of 8 (8 devices)
    items = text_items(captions, d=d, regions=[1 + i % 4 for i in range(21)], seed=1)
    basis = orthonormal(3, d, 3)
    result, ci = run_colour(model, variables, items, tokenizer(), COLOURS, basis, seed=4, block=8,
                            compiler_options=FAST_COMPILE)
    assert ci.n == 12 and len(set(ci.items.text_mask.sum(1))) > 1 and len(set(ci.items.region_mask.sum(1))) > 1
    assert result.conditions == CONDITIONS and result.basis_rank == 3
    itm, mlm = reference(model, variables, ci, [basis, control_basis(basis, 4)])
    np.testing.assert_allclose(result.itm, itm, atol=2e-5)
    np.testing.assert_allclose(result.mlm, mlm, atol=2e-5)
    assert np.abs(result.mlm[:, 1] - result.mlm[:, 0]).max() > 1e-4  # the projection changed the model's input
    # no basis (one block, padded with copies of item 0): the same original-feature numbers
    first = PairItems(**{k: v[:5] for k, v in vars(items).items()})  # 3 items with a colour token
    alone, ci2 = run_colour(model, variables, first, tokenizer(), COLOURS, seed=4, block=8,
                            compiler_options=FAST_COMPILE)
    assert alone.conditions == ("original",) and alone.itm.shape == (ci2.n, 1, 2)
    np.testing.assert_allclose(alone.itm[:, 0], result.itm[:ci2.n, 0], atol=2e-5)


def test_summary_and_verdicts_on_known_numbers():
    n = 40
    rng = np.random.default_rng(0)
    itm = np.zeros((n, 3, 2))
    itm[:, :, 0] = 1.0 + 0.1 * rng.normal(size=(n, 3))  # the caption always above its foil
    itm[:4, 0] = 0.5  # 4 ties on original features
    mlm = np.log(np.full((n, 3, 2), 0.25))
    mlm[:, 1, 0] = np.log(0.0625) + 0.01 * rng.normal(size=n)  # colour projected: 2 bits more
    mlm[:, 2, 0] += 0.01 * rng.normal(size=n)  # control: ~0
    result = ColourResult(itm, mlm, CONDITIONS, ["red"] * n, ["blue"] * n, 4)
    m = result.measures()
    assert m["itm_pairwise"][:4, 0].tolist() == [50.0] * 4 and (m["itm_pairwise"][4:] == 100).all()
    np.testing.assert_allclose(m["mlm_bits"][:, 0], 2.0)
    s = result.summary(n_boot=200)
    assert s["measures"]["itm_pairwise"]["original"]["mean"] == pytest.approx(95.0)
    eff = s["effects"]
    assert eff["colour"]["mean"] == pytest.approx(2.0, abs=0.01) and eff["colour"]["n"] == n
    assert eff["control"]["low"] < 0.05 and eff["effect"]["low"] > 1.9
    v = result.verdicts(s)
    assert v["features"].startswith("uses colour from the features") and v["itm"].startswith("tells captions")
    assert v["mlm"].startswith("no preference")  # p(true) = p(foil) on original features: 2-way accuracy 50%
    assert result.verdicts(s, itm_trained=False)["itm"].startswith("no verdict: the ITM head was never trained")
    same = ColourResult(itm, np.log(np.full((n, 3, 2), 0.25)), CONDITIONS, ["red"] * n, ["blue"] * n, 4)
    assert same.verdicts()["features"].startswith("no evidence")
    control_too = mlm.copy()
    control_too[:, 2, 0] = mlm[:, 1, 0]  # the random subspace costs as much: not a colour effect
    assert ColourResult(itm, control_too, CONDITIONS, ["r"] * n, ["b"] * n, 4).verdicts()["features"].startswith(
        "no evidence")
    text_only = ColourResult(itm[:, :1], mlm[:, :1], CONDITIONS[:1], ["red"] * n, ["blue"] * n)
    assert text_only.effects() == {} and text_only.verdicts()["features"] == "not measured (no colour basis)"


# ------------------------------------------------------------------------------------------- the command

WORLD = "synthetic:num_images=32,val_images=8,colour_dims=4"  # captions "a red kodufa": colour words
TINY = ["--config.fast_compile=True", "--config.progress=False", "--config.data.batch_size=8",
        "--config.data.max_seq_length=12", "--config.eval_every=0"]
PROBE = ["probe", "colour", "--config", "probes:colour,tiny", "--config.progress=False"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny UNITER pretrained 2 steps on a colour world, and the world's colour basis as a .npy."""
    from jaxvl.data.synthetic.volta_files import world_from_source
    from jaxvl.data.synthetic.world import World

    root = tmp_path_factory.mktemp("colour")
    assert main(["pretrain", "--config", "pretrain:uniter,tiny", "--workdir", str(root / "uniter"),
                 "--config.steps=2", f"--config.data.dataset={WORLD}", *TINY]) == 0
    np.save(root / "basis.npy", World(world_from_source(WORLD)[0]).colour_basis())
    return root


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxvl: error: "), err
    return lines[0]


@pytest.mark.slow
def test_probe_colour_writes_the_report(run, tmp_path, capsys):
    out = tmp_path / "colour"
    assert main([*PROBE, "--workdir", str(out), f"--config.checkpoints={run / 'uniter'}",
                 f"--config.colour.basis={run / 'basis.npy'}"]) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "uniter" / "colour.json").read_text())
    n = record["n_items"]
    assert 2 <= n <= 8 and len(record["items"]) == n and record["basis_rank"] == 4
    assert record["conditions"] == list(CONDITIONS) and record["units"]["mlm_bits"] == "bits"
    assert record["itm_trained"] and not record["verdicts"]["itm"].startswith("no verdict")
    item = record["items"][0]
    assert item["colour"] != item["foil"] and item["colour"] in item["text"].split()
    s = record["summary"]["measures"]["mlm_bits"]
    assert set(s) == set(CONDITIONS) and s["original"]["n"] == n and s["original"]["low"] <= s["original"]["high"]
    with open(out / "uniter" / "colour.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["item", "condition", "measure", "value"]
    assert len(rows) == n * (4 * 3 + 3) and {r["condition"] for r in rows} == {*CONDITIONS, "effect"}
    table = (out / "uniter" / "table.md").read_text()
    assert f"n = {n} items" in table and "| MLM -log2 p(true colour) at the masked colour token (bits) |" in table
    assert "(untrained ITM head)" not in table and "| effect: colour - control |" in table
    assert table.strip() in (out / "table.md").read_text() and "Verdicts:" in printed
    assert (out / "uniter" / "colour.png").stat().st_size > 10_000
    # no basis: the text side alone
    assert main([*PROBE, "--workdir", str(tmp_path / "text"), f"--config.checkpoints={run / 'uniter'}"]) == 0
    record = json.loads((tmp_path / "text" / "uniter" / "colour.json").read_text())
    assert record["conditions"] == ["original"] and record["verdicts"]["features"].startswith("not measured")
    # the same checkpoint, its run.json saying it was pretrained without ITM negatives: ITM numbers labelled
    untrained = tmp_path / "untrained"
    shutil.copytree(run / "uniter" / "checkpoints", untrained / "checkpoints")
    info = json.loads((run / "uniter" / "run.json").read_text())
    info["config"]["objective"]["objective"] = 2
    (untrained / "run.json").write_text(json.dumps(info))
    assert main([*PROBE, "--workdir", str(tmp_path / "u"), f"--config.checkpoints={untrained}"]) == 0
    record = json.loads((tmp_path / "u" / "untrained" / "colour.json").read_text())
    assert not record["itm_trained"] and record["verdicts"]["itm"].startswith("no verdict")
    assert "(untrained ITM head)" in (tmp_path / "u" / "untrained" / "table.md").read_text()


def test_probe_colour_bad_inputs_before_loading_are_one_line(tmp_path, capsys):
    out, ckpt = str(tmp_path / "out"), f"--config.checkpoints={tmp_path / 'never_read'}"
    missing = tmp_path / "nope.npy"
    assert main([*PROBE, "--workdir", out, ckpt, f"--config.colour.basis={missing}"]) == 2
    assert f"config colour.basis: {missing}: no such file" in _error_line(capsys)
    (tmp_path / "text.npy").write_text("not an array")
    assert main([*PROBE, "--workdir", out, ckpt, f"--config.colour.basis={tmp_path / 'text.npy'}"]) == 2
    assert f"config colour.basis: {tmp_path / 'text.npy'}: not a readable .npy array" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, ckpt, "--config.colour.words=red"]) == 2
    assert "config colour.words='red': expected a comma list of two or more" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, ckpt, "--config.text_block=0"]) == 2
    assert "config text_block=0: expected an integer >= 1" in _error_line(capsys)


@pytest.mark.slow
def test_probe_colour_bad_inputs_on_a_checkpoint_are_one_line(run, tmp_path, capsys):
    out, ckpt = str(tmp_path / "out"), f"--config.checkpoints={run / 'uniter'}"
    for name, array, message in (("wide.npy", np.eye(25)[:4], "shape (4, 25), expected [k, 24]"),
                                 ("big.npy", np.eye(24)[:13], "k must be <= D / 2 = 12"),
                                 ("nan.npy", np.full((2, 24), np.nan), "not finite")):
        np.save(tmp_path / name, array)
        assert main([*PROBE, "--workdir", out, ckpt, f"--config.colour.basis={tmp_path / name}"]) == 2
        line = _error_line(capsys)
        assert f"config colour.basis: {tmp_path / name}" in line and message in line
    assert main([*PROBE, "--workdir", out, ckpt, "--config.colour.words=mauve,teal"]) == 2
    assert "captions with one of the colour words (mauve, teal; config colour.words)" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, ckpt, "--config.colour.words=red,teal"]) == 2  # teal: not in the vocabulary
    assert "config colour.words: 1 of the words red, teal are whole tokens of the vocabulary" in _error_line(capsys)
    assert main([*PROBE, "--workdir", out, ckpt, "--config.text_block=3"]) == 2  # 3 items over 8 devices
    assert "block=3 items per call must be a positive multiple of the 8 devices" in _error_line(capsys)
