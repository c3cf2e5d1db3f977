"""VOLTA task heads: parity with VOLTA's ``BertForVLTasks``, checkpoints both ways, losses and scores.

Golden files ``tests/data/volta_task_golden_<name>.npz`` come from ``scripts/make_volta_task_golden.py``
(VOLTA's own ``BertForVLTasks`` at jaxvl's tiny sizes, one task of every head type, random float16-exact
weights, one padded batch of 4).
"""

from __future__ import annotations

import json
import os
from functools import cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from flax.linen import meta

from jaxvl.convert.common import StateDictError
from jaxvl.convert.volta_tasks import (
    from_volta_tasks,
    head_tensors,
    load_volta_task_checkpoint,
    to_volta_tasks,
    volta_task_state_dict_shapes,
)
from jaxvl.finetune.losses import (
    accuracy,
    classifier_bce_loss,
    refer_loss,
    refer_pick,
    refer_score,
    retrieval_loss,
    score_of_argmax,
    task_loss,
    task_score,
    vqa_loss,
)
from jaxvl.models import PRESETS, get_config, to_volta_dict
from jaxvl.models.volta.task_heads import VOLTA_TASKS, TaskSpec, VLBertForVLTasks, task_spec_from_volta

DATA = os.path.join(os.path.dirname(__file__), "data")
ATOL = 1e-5
TORCH = "needs torch: pip install -e '.[test]'"


@cache
def golden(name: str) -> dict:
    """The golden file of ``name``: ``sd`` (float32), ``in``, ``out`` dicts plus the top-level arrays."""
    with np.load(os.path.join(DATA, f"volta_task_golden_{name}.npz")) as z:
        g: dict = {"sd": {}, "in": {}, "out": {}}
        for key in z.files:
            group, _, rest = key.partition("/")
            if rest:
                g[group][rest] = z[key].astype(np.float32) if group == "sd" else z[key]
            else:
                g[key] = z[key]
    return g


def tasks_of(entries: dict) -> tuple[TaskSpec, ...]:
    return tuple(task_spec_from_volta(k, v) for k, v in entries.items())


def setup_of(name: str):
    g = golden(name)
    cfg = get_config(name, tiny=True)
    clf_hidden = json.loads(str(g["config"]))["clf_hidden_size"]
    return g, cfg, tasks_of(json.loads(str(g["tasks"]))), clf_hidden


def state(name: str) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in golden(name)["sd"].items()}


def flat_shapes(tree) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(meta.unbox(tree), sep="/").items()}


@pytest.mark.parametrize("name", PRESETS)
def test_golden_config_is_current_tiny_preset(name):
    stored = json.loads(str(golden(name)["config"]))
    stored.pop("clf_hidden_size")
    current = json.loads(json.dumps({**to_volta_dict(get_config(name, tiny=True)), "model": "bert"}))
    assert stored == current, "tiny preset changed: rerun scripts/make_volta_task_golden.py"


@pytest.mark.parametrize("name", PRESETS)
def test_key_names_order_and_shapes_match_volta(name):
    """Tiny: every tensor of VOLTA's BertForVLTasks state dict in order; ctrl size: the head tensors."""
    g, cfg, tasks, clf_hidden = setup_of(name)
    assert list(volta_task_state_dict_shapes(cfg, tasks, clf_hidden).items()) == [
        (k, v.shape) for k, v in g["sd"].items()]
    full = list(zip(g["full_keys"].tolist(), map(tuple, json.loads(str(g["full_shapes"]))), strict=True))
    ours = head_tensors(get_config(name), tasks_of(json.loads(str(g["full_tasks"]))), 1536)
    assert [(t.name, t.shape) for t in ours] == full


def test_volta_task_table_matches_volta_types():
    """The stored full-size tasks (VOLTA's label counts) agree with VOLTA_TASKS."""
    full = tasks_of(json.loads(str(golden("uniter")["full_tasks"])))
    by_name = {t.name: t for t in VOLTA_TASKS.values()}
    for t in full:
        assert by_name[t.name] == t


@pytest.mark.parametrize("name", PRESETS)
def test_golden_parity_with_volta(name):
    """jaxvl with VOLTA's weights reproduces every task head's logits, all tasks at once and one at a time."""
    g, cfg, tasks, clf_hidden = setup_of(name)
    model = VLBertForVLTasks(cfg, tasks, clf_hidden)
    params = from_volta_tasks(g["sd"], cfg, tasks, clf_hidden)
    inputs = {k: jnp.asarray(v) for k, v in g["in"].items()}
    out = model.apply({"params": params}, **inputs)
    assert set(out) == set(g["out"]) == {t.name for t in tasks}
    bad = {}
    for k, ref in g["out"].items():
        assert np.shape(out[k]) == ref.shape, k
        diff = float(np.max(np.abs(np.asarray(out[k]) - ref)))
        if not diff <= ATOL:
            bad[k] = diff
    assert not bad, f"{name}: max|diff| above {ATOL}: {bad}"
    one = model.apply({"params": params}, **inputs, task="TASK10")
    assert np.array_equal(np.asarray(one), np.asarray(out["TASK10"]))


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip_is_bitwise_exact(name):
    g, cfg, tasks, clf_hidden = setup_of(name)
    sd = g["sd"]
    params = from_volta_tasks(sd, cfg, tasks, clf_hidden)
    model = VLBertForVLTasks(cfg, tasks, clf_hidden)
    shapes = flat_shapes(jax.eval_shape(model.init, jax.random.PRNGKey(0), **model.dummy_inputs())["params"])
    assert flat_shapes(params) == shapes, "from_volta_tasks's tree differs from model.init's"
    back = to_volta_tasks(params, cfg, tasks, clf_hidden)
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    rng = np.random.default_rng(0)
    tree = traverse_util.unflatten_dict({tuple(k.split("/")): rng.standard_normal(s).astype(np.float32)
                                         for k, s in shapes.items()})
    again = traverse_util.flatten_dict(from_volta_tasks(to_volta_tasks(tree, cfg, tasks, clf_hidden), cfg, tasks,
                                                        clf_hidden))
    flat = traverse_util.flatten_dict(tree)
    assert flat.keys() == again.keys()
    assert all(np.array_equal(flat[k], again[k]) for k in flat)


def test_bad_state_dicts_name_every_key():
    g, cfg, tasks, clf_hidden = setup_of("lxmert")
    sd = state("lxmert")
    del sd["clfs_dict.TASK1.logit_fc.3.weight"]
    sd["clfs_dict.TASK99.weight"] = np.zeros((1, 24), np.float32)
    sd["clfs_dict.TASK13.weight"] = np.zeros((4, 24), np.float32)
    sd["cls.bi_seq_relationship.weight"] = np.zeros((2, 24), np.float32)
    del sd["bert.encoder.layer.3.output.v_dense.weight"]
    with pytest.raises(StateDictError) as e:
        from_volta_tasks(sd, cfg, tasks, clf_hidden)
    msg = str(e.value)
    assert "missing (1): clfs_dict.TASK1.logit_fc.3.weight" in msg
    assert "clfs_dict.TASK99.weight" in msg and "cls.bi_seq_relationship.weight" in msg
    assert "clfs_dict.TASK13.weight: got (4, 24), expected (3, 24)" in msg
    assert "missing (1): bert.encoder.layer.3.output.v_dense.weight" in msg


def test_task_set_must_match_the_checkpoint():
    """A checkpoint with other tasks (or other label counts) is refused, naming the heads."""
    g, cfg, tasks, clf_hidden = setup_of("uniter")
    fewer = tuple(t for t in tasks if t.name != "TASK15")
    with pytest.raises(StateDictError, match=r"unexpected \(6\): clfs_dict\.TASK15\.logit_fc\.0\.bias"):
        from_volta_tasks(g["sd"], cfg, fewer, clf_hidden)
    more_labels = tuple(TaskSpec(t.name, t.type, 9) if t.name == "TASK1" else t for t in tasks)
    with pytest.raises(StateDictError, match=r"clfs_dict\.TASK1\.logit_fc\.3\.weight: got \(7, 20\)"):
        from_volta_tasks(g["sd"], cfg, more_labels, clf_hidden)


def test_module_prefix_and_torch_bin(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH)
    g, cfg, tasks, clf_hidden = setup_of("vilbert")
    path = tmp_path / "pytorch_model_19.bin"
    torch.save({f"module.{k}": torch.from_numpy(v.copy()) for k, v in g["sd"].items()}, path)
    a = traverse_util.flatten_dict(load_volta_task_checkpoint(path, cfg, tasks, clf_hidden))
    b = traverse_util.flatten_dict(from_volta_tasks(g["sd"], cfg, tasks, clf_hidden))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_padded_regions_never_win_the_refcoco_argmax():
    """Model logits sit 10000 below on padded regions; the masked pick never lands there, even on raw logits
    that favour padded rows."""
    g, cfg, tasks, clf_hidden = setup_of("uniter")
    model = VLBertForVLTasks(cfg, tasks, clf_hidden)
    params = from_volta_tasks(g["sd"], cfg, tasks, clf_hidden)
    inputs = {k: jnp.asarray(v) for k, v in g["in"].items()}
    inputs["features"] = inputs["features"].at[:, -1].set(50.0)  # loud padded rows (where masked)
    logits = np.asarray(model.apply({"params": params}, **inputs, task="TASK10"))[..., 0]
    mask = g["in"]["region_mask"].astype(bool)
    assert (~mask).any() and np.all(logits[~mask] < -9000) and np.all(logits[mask] > -100)
    assert np.all(mask[np.arange(len(mask)), np.asarray(refer_pick(logits))])
    rng = np.random.default_rng(1)
    raw = rng.standard_normal((64, 9)).astype(np.float32)
    rmask = rng.random((64, 9)) < 0.6
    rmask[:, 0] = True
    raw = np.where(rmask, raw, raw + 100.0)  # padded rows always highest
    pick = np.asarray(refer_pick(jnp.asarray(raw), jnp.asarray(rmask)))
    assert np.all(rmask[np.arange(64), pick])
    iou = rng.random((64, 9)).astype(np.float32)
    want = (iou[np.arange(64), np.where(rmask, raw, -np.inf).argmax(1)] > 0.5).astype(np.float32)
    assert np.array_equal(np.asarray(refer_score(jnp.asarray(raw)[..., None], jnp.asarray(iou), jnp.asarray(rmask))),
                          want)


# ------------------------------------------------------------------------------------------------ losses


def volta_losses(torch, logits: np.ndarray, target: np.ndarray, kind: str) -> float:
    """VOLTA's formulas (task_utils.ForwardModelsTrain with LossMap's criteria), in torch."""
    x, y = torch.from_numpy(logits), torch.from_numpy(target)
    bce = torch.nn.BCEWithLogitsLoss(reduction="mean")
    if kind == "classifier":
        return float(bce(x, y).mean() * y.size(1))
    if kind == "refer":
        return float(bce(x, y).mean() * y.size(1))
    if kind == "pair":
        return float(bce(x, y).mean())
    return float(torch.nn.CrossEntropyLoss()(x, y))


def compute_score_with_logits(torch, logits, labels):
    """VOLTA's ``task_utils.compute_score_with_logits`` (without ``.cuda()``)."""
    logits = torch.max(logits, 1)[1].data
    one_hots = torch.zeros(*labels.size())
    one_hots.scatter_(1, logits.view(-1, 1), 1)
    return one_hots * labels


def test_losses_match_volta_formulas():
    torch = pytest.importorskip("torch", reason=TORCH)
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((6, 11))).astype(np.float32)
    scores = np.where(rng.random((6, 11)) < 0.3, rng.choice([0.3, 0.6, 0.9, 1.0], (6, 11)), 0.0).astype(np.float32)
    want = volta_losses(torch, logits, scores, "classifier")
    assert np.isclose(float(vqa_loss(jnp.asarray(logits), jnp.asarray(scores))), want, rtol=1e-5)
    assert np.isclose(float(task_loss(VOLTA_TASKS["vqa"], jnp.asarray(logits), jnp.asarray(scores))), want, rtol=1e-5)
    vqa = compute_score_with_logits(torch, torch.from_numpy(logits), torch.from_numpy(scores)).sum(1).numpy()
    assert np.allclose(np.asarray(score_of_argmax(jnp.asarray(logits), jnp.asarray(scores))), vqa)

    for c, task in ((2, VOLTA_TASKS["nlvr2"]), (3, VOLTA_TASKS["snli-ve"])):
        x = rng.standard_normal((8, c)).astype(np.float32)
        labels = rng.integers(0, c, 8)
        one_hot = np.eye(c, dtype=np.float32)[labels]
        want = volta_losses(torch, x, one_hot, "pair")
        assert np.isclose(float(classifier_bce_loss(jnp.asarray(x), jnp.asarray(labels))), want, rtol=1e-5)
        assert np.isclose(float(task_loss(task, jnp.asarray(x), jnp.asarray(labels))), want, rtol=1e-5)
        ref = compute_score_with_logits(torch, torch.from_numpy(x), torch.from_numpy(one_hot)).sum(1).numpy()
        assert np.array_equal(np.asarray(accuracy(jnp.asarray(x), jnp.asarray(labels))), ref)
        assert np.array_equal(np.asarray(task_score(task, jnp.asarray(x), jnp.asarray(labels))), ref)

    region_mask = rng.random((5, 7)) < 0.7
    region_mask[:, 0] = True
    x = (rng.standard_normal((5, 7, 1)) + np.where(region_mask, 0.0, -10000.0)[..., None]).astype(np.float32)
    iou = np.where(region_mask, rng.random((5, 7)), 0.0).astype(np.float32)[..., None]
    want = volta_losses(torch, x, iou, "refer")
    assert np.isclose(float(refer_loss(jnp.asarray(x), jnp.asarray(iou))), want, rtol=1e-5)
    assert np.isclose(float(task_loss(VOLTA_TASKS["refcoco+"], jnp.asarray(x), jnp.asarray(iou[..., 0]))), want,
                      rtol=1e-5)
    tx = torch.from_numpy(x)
    select = torch.from_numpy(iou).squeeze(2).gather(1, torch.max(tx, dim=1)[1].view(-1, 1))
    assert np.array_equal(np.asarray(refer_score(jnp.asarray(x), jnp.asarray(iou))),
                          (select[:, 0] > 0.5).float().numpy())

    x = rng.standard_normal((6, 4)).astype(np.float32)
    target = np.zeros(6, np.int64)
    want = volta_losses(torch, x, target, "ce")
    assert np.isclose(float(retrieval_loss(jnp.asarray(x))), want, rtol=1e-5)
    rows = jnp.asarray(x.reshape(24, 1))  # the VL-logit head's layout: 4 adjacent rows per example
    task = VOLTA_TASKS["retrieval_flickr30k"]
    assert np.isclose(float(task_loss(task, rows, jnp.zeros(6, jnp.int32))), want, rtol=1e-5)
    assert np.array_equal(np.asarray(task_score(task, rows, jnp.zeros(6, jnp.int32))),
                          (x.argmax(1) == 0).astype(np.float32))


def test_mask_averages_over_real_examples_only():
    rng = np.random.default_rng(2)
    logits = jnp.asarray(rng.standard_normal((6, 5)), jnp.float32)
    scores = jnp.asarray(rng.random((6, 5)), jnp.float32)
    mask = jnp.asarray([1, 1, 0, 1, 0, 0])
    keep = np.asarray(mask).astype(bool)
    assert np.isclose(float(vqa_loss(logits, scores, mask)), float(vqa_loss(logits[keep], scores[keep])), rtol=1e-6)
    assert not np.isclose(float(vqa_loss(logits, scores, mask)), float(vqa_loss(logits, scores)))
    labels = jnp.asarray(rng.integers(0, 5, 6))
    assert np.isclose(float(retrieval_loss(logits, labels, mask)), float(retrieval_loss(logits[keep], labels[keep])),
                      rtol=1e-6)


# ------------------------------------------------------------------------------------------- bad input


def test_bad_tasks_and_calls_are_clear_errors():
    with pytest.raises(ValueError, match="type='V-logit-mc'"):
        TaskSpec("TASK4", "V-logit-mc")
    with pytest.raises(ValueError, match="num_labels=0"):
        TaskSpec("TASK1", "VL-classifier", 0)
    with pytest.raises(ValueError, match="num_clf_layers=3"):
        TaskSpec("TASK9", "V-logit", num_clf_layers=3)
    with pytest.raises(ValueError, match="no 'type' key"):
        task_spec_from_volta("TASK1", {"num_labels": 3})
    cfg = get_config("visualbert", tiny=True)
    tasks = (VOLTA_TASKS["vqa"], VOLTA_TASKS["nlvr2"])
    with pytest.raises(ValueError, match="each name once"):
        head_tensors(cfg, tasks + (VOLTA_TASKS["vqa"],))
    with pytest.raises(ValueError, match="fusion_method='none'"):
        head_tensors(cfg.replace(fusion_method="none"), tasks)
    model = VLBertForVLTasks(cfg, (TaskSpec("TASK12", "VL-binary-classifier", 2), TaskSpec("TASK13",
                                                                                           "VL-tri-classifier", 3)), 8)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), **model.dummy_inputs())
    with pytest.raises(ValueError, match="task='TASK1'"):
        jax.eval_shape(lambda v: model.apply(v, **model.dummy_inputs(), task="TASK1"), variables)
    with pytest.raises(ValueError, match="batch 3 is odd"):
        jax.eval_shape(lambda v: model.apply(v, **model.dummy_inputs(3), task="TASK12"), variables)
    jax.eval_shape(lambda v: model.apply(v, **model.dummy_inputs(3), task="TASK13"), variables)  # odd is fine here
    with pytest.raises(ValueError, match="scores: shape"):
        vqa_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="iou: shape"):
        refer_loss(jnp.zeros((2, 5, 1)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="labels: shape"):
        classifier_bce_loss(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32))


def test_dual_stream_prefix_split_equals_the_whole_model():
    g, cfg, tasks, clf_hidden = setup_of("vilbert")
    model = VLBertForVLTasks(cfg, tasks, clf_hidden)
    params = {"params": from_volta_tasks(g["sd"], cfg, tasks, clf_hidden)}
    i = {k: jnp.asarray(v) for k, v in g["in"].items()}
    text = model.apply(params, i["input_ids"], i["token_type_ids"], i["text_mask"], method=model.text_prefix)
    vision = model.apply(params, i["features"], i["locations"], i["region_mask"], method=model.vision_prefix)
    split = model.apply(params, text, vision, i["text_mask"], i["region_mask"], method=model.from_prefix)
    whole = model.apply(params, **i)
    for k in whole:
        assert np.allclose(np.asarray(split[k]), np.asarray(whole[k]), atol=ATOL), k
    with pytest.raises(ValueError, match="no unimodal prefix"):
        m = VLBertForVLTasks(get_config("uniter", tiny=True), tasks, clf_hidden)
        m.apply({"params": from_volta_tasks(golden("uniter")["sd"], m.cfg, tasks, clf_hidden)}, i["input_ids"],
                method=m.text_prefix)


def test_dropout_acts_in_training_only():
    """Dropout (VOLTA's 0.1 on the fused pooled vector and the vision stream) draws from the ``dropout`` stream;
    padded regions stay 10000 below under it."""
    g, cfg, tasks, clf_hidden = setup_of("visualbert")
    model = VLBertForVLTasks(cfg, tasks, clf_hidden)
    params = {"params": from_volta_tasks(g["sd"], cfg, tasks, clf_hidden)}
    i = {k: jnp.asarray(v) for k, v in g["in"].items()}
    run = jax.jit(lambda rng: model.apply(params, **i, deterministic=False, rngs={"dropout": rng}))
    a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
    evaluated = model.apply(params, **i)
    for k in ("TASK1", "TASK10"):
        assert not np.allclose(np.asarray(a[k]), np.asarray(b[k]))
        assert not np.allclose(np.asarray(a[k]), np.asarray(evaluated[k]))
    padded = ~g["in"]["region_mask"].astype(bool)
    assert np.all(np.asarray(a["TASK10"])[..., 0][padded] < -9000)


def test_ties_share_the_score_so_a_collapsed_head_scores_chance():
    """All-equal logits (a collapsed head) score the chance of a random pick, not 100% because the positive comes
    first: 4-way retrieval 1/4, a 3-way label 1/3, VQA the mean target, RefCOCO the share of hits among real rows."""
    from jaxvl.finetune.losses import task_score

    flat = jnp.zeros((5, 4))
    assert np.allclose(np.asarray(task_score(VOLTA_TASKS["retrieval_flickr30k"], flat, jnp.zeros(5, jnp.int32))), 0.25)
    assert np.allclose(np.asarray(accuracy(jnp.zeros((2, 3)), jnp.array([0, 2]))), 1 / 3)
    scores = jnp.array([[0.3, 0.9, 0.0, 0.0]])
    assert np.allclose(np.asarray(score_of_argmax(jnp.zeros((1, 4)), scores)), 0.3)
    iou, mask = jnp.array([[0.6, 0.1, 0.7, 0.9]]), jnp.array([[1, 1, 1, 0]])
    assert np.allclose(np.asarray(refer_score(jnp.zeros((1, 4)), iou, mask)), 2 / 3)
    two = jnp.array([[1.0, 1.0, 0.0, -1.0]])  # a tie of two: the label among them scores 1/2
    assert np.allclose(np.asarray(accuracy(two, jnp.array([1]))), 0.5)
