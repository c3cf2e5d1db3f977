"""Tiny UNITERs trained on synthetic worlds with nothing or both directions planted, then ablated with the
matched controls: the calibration of ``jaxvl.ablation.verdicts`` (``tests/test_ablation_verdicts.py``,
``scripts/calibrate_verdict_floor.py``).

Worlds (one object per image, so a caption mention has one referent; 12 classes; a detector that ranks
the gold class first, a sharp MRC target), each from its own seed:

- ``planted``: ``vision_to_language=1`` (captions name the image's object: vision informs language) and
  ``ambiguous_fraction=1`` (paired classes share one visual prototype, only the caption tells them
  apart: language informs vision). The knobs cannot plant the two directions apart (a caption that
  names the object informs both ways), so one world carries both;
- ``nothing``: ``vision_to_language=0`` (captions name random classes) and no ambiguous pairs. The data
  layer writes no phrase for a mention of nothing in the image, so each mention is grounded to the
  image's one object here: phrase and gold box are unrelated.

Recipes (``RECIPES``, 1200 steps of batch 32 each: at 600, language -> vision was learnt by some seeds
only, 0.05 to 1.1 bits): ``demo``, ``jaxvl.demo``'s (objective 2: no ITM negatives; 40% of tokens and
30% of regions masked; learning rate 3e-3, 5% warm-up; MRC-KL); ``demo-xe``, the same with MRC-XE as
the region loss (the demo's other sweep member); ``volta``, the tiny pretraining config's defaults
(VOLTA's objective 1: ITM with negatives and no MLM / MRC targets on mismatched pairs; 15% / 15%; 1e-3,
10% warm-up; MRC-KL), which learns no cross-modal structure in that time. ``train`` fits one model per
world in ONE compiled program (``train_step`` under ``lax.scan``, vmapped over the models); ``ablate``
evaluates each model on 64 held-out images of its own world (128 phrases) with every condition and its
control at IoT > 0.5.
"""

from __future__ import annotations

import dataclasses
import functools

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation, stored_ablation_example
from jaxvl.ablation.report import tidy_rows
from jaxvl.ablation.sweep import AblationSpec, run_ablation
from jaxvl.data.builders.common import RegionSpec, encode_regions
from jaxvl.data.grain import PretrainTransform
from jaxvl.data.records import AblationExample
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.pretrain.loss import ObjectiveConfig
from jaxvl.pretrain.step import train_step
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import make_mesh
from jaxvl.runtime.state import TrainState

TRAIN, VAL, T, R, K = 256, 64, 12, 6, 12
CHUNK, BATCH, THRESHOLD = 50, 32, 0.5
KNOBS = {"planted": dict(vision_to_language=1.0, ambiguous_fraction=1.0),
         "nothing": dict(vision_to_language=0.0, ambiguous_fraction=0.0),
         # the mirror and colour probes' worlds (tests/test_probes_planted.py): the same captions ("there is a red
         # kodufa on the left"); sides tied to the boxes and colours carried by 4 feature dims, or neither
         "sides+colour": dict(spatial_relations=True, side_grounding=1.0, colour_dims=4, colour_signal=1.0),
         "untied": dict(spatial_relations=True, side_grounding=0.0, colour_dims=4, colour_signal=0.0)}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """``ObjectiveConfig`` and ``OptimizerConfig`` fields, the region heads and the number of steps."""

    objective: dict
    optimizer: dict
    heads: tuple[tuple[str, float], ...] = (("0", 1.0),)
    steps: int = 1200


_DEMO = dict(objective=2, token_prob=0.4, region_prob=0.3), dict(learning_rate=3e-3, warmup_fraction=0.05)
RECIPES = {
    "demo": Recipe(*_DEMO),
    "demo-xe": Recipe(*_DEMO, heads=(("3", 1.0),)),
    "volta": Recipe(dict(objective=1, token_prob=0.15, region_prob=0.15),
                    dict(learning_rate=1e-3, warmup_fraction=0.1)),
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One trained model: its world's kind (``KNOBS``), the seed of world, initialisation and data order."""

    kind: str
    seed: int

    @functools.cached_property
    def world(self) -> World:
        return World(WorldConfig(num_images=TRAIN + VAL, num_classes=K, min_objects=1, max_objects=1,
                                 num_regions=R, detector_rank_probs=(1.0, 0.0, 0.0, 0.0, 0.0),
                                 detector_temperature=0.5, seed=self.seed, **KNOBS[self.kind]))


def tokenizer(cases: list[Case]) -> Tokenizer:
    """One word-level tokenizer over every case's vocabulary (the models share one vocabulary size)."""
    return Tokenizer.from_words(sorted({w for c in cases for w in c.world.vocabulary()}))


def training_pairs(case: Case, tok: Tokenizer, images: range = range(TRAIN)) -> dict[str, np.ndarray]:
    """Every (caption, image) pair of ``images`` (default: the training images) as pretraining fields [N, ...]."""
    w = case.world
    spec, transform = RegionSpec(R, w.cfg.feature_dim, K), PretrainTransform(tok, T, R, "first")
    rows = []
    for i in images:
        image = w[i]
        stored = encode_regions(image.regions, spec, "synthetic")
        rows.extend(transform.map({"caption": c, "image_id": image.image_id, **stored}) for c in image.captions)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def held_out_phrases(case: Case) -> list[dict]:
    """Stored ablation examples of the held-out images; in ``nothing`` each (random) mention is grounded to
    the image's one object."""
    w = case.world
    spec = RegionSpec(R, w.cfg.feature_dim, K)
    out = []
    for i in range(TRAIN, TRAIN + VAL):
        image = w[i]
        found = image.phrases
        if case.kind == "nothing":
            found = []
            for s, (caption, mentions) in enumerate(zip(image.captions, image.mentions, strict=True)):
                words = caption.split(" ")
                for _, k, a in mentions:
                    noun = f"a {w.attribute_names[a]} {w.class_names[k]}"
                    start = next(j for j in range(len(words)) if words[j:j + 3] == noun.split(" "))
                    found.append(AblationExample(image.image_id, s, caption, noun, start, f"{image.image_id}-0",
                                                 "object", image.objects[0].box[None].copy()))
        out.extend(stored_ablation_example(p, image.regions, spec) for p in found)
    return out


def train(cases: list[Case], recipe: Recipe, tok: Tokenizer) -> tuple[VLBertForPreTraining, dict]:
    """One model per case, trained together with ``recipe``; returns (model, parameters stacked
    [len(cases), ...])."""
    data = [training_pairs(c, tok) for c in cases]
    model = get_model("uniter", tiny=True, vocab_size=tok.vocab_size, num_object_classes=K,
                      max_position_embeddings=32, visual_target_weights=recipe.heads)
    tx = make_optimizer(OptimizerConfig(total_steps=recipe.steps, **recipe.optimizer))
    ocfg = ObjectiveConfig(mask_id=tok.mask_id, cls_id=tok.cls_id, sep_id=tok.sep_id, **recipe.objective)
    shapes = {k: jnp.zeros((1, *data[0][k].shape[1:]), data[0][k].dtype) for k in ("input_ids", "features",
                                                                                    "locations")}

    def init(rng):
        params = nn.meta.unbox(model.init(rng, **shapes)["params"])
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          rng=jax.random.fold_in(rng, 1))

    seeds = jnp.array([1000 * c.seed + i for i, c in enumerate(cases)])
    state = jax.jit(jax.vmap(lambda s: init(jax.random.key(s))), compiler_options=FAST_COMPILE)(seeds)

    @jax.jit
    def chunk(state, batches):  # CHUNK steps of every case's model
        step = functools.partial(train_step, model=model, ocfg=ocfg, tx=tx)
        return jax.lax.scan(lambda s, b: jax.vmap(step)(s, b), state, batches)

    rngs = [np.random.default_rng(c.seed) for c in cases]
    for _ in range(-(-recipe.steps // CHUNK)):
        idx = [rng.integers(0, len(d["input_ids"]), (CHUNK, BATCH)) for rng, d in zip(rngs, data, strict=True)]
        state, metrics = chunk(state, {k: np.stack([d[k][i] for d, i in zip(data, idx, strict=True)], 1)
                                       for k in data[0]})
    assert np.isfinite(np.asarray(metrics["loss"])).all()
    return model, state.params


def ablate(model: VLBertForPreTraining, params: dict, cases: list[Case], tok: Tokenizer,
           n_boot: int = 1000) -> list[dict]:
    """Tidy rows (subset ``all``, with ``kind`` and ``seed``) of each case's model on its own held-out phrases,
    every condition and its matched control at IoT > ``THRESHOLD``."""
    mesh, pcfg = make_mesh(), AblationPipelineConfig(batch_size=BATCH, max_seq_length=T)
    spec = AblationSpec(tok.mask_id, thresholds=(THRESHOLD,), control_threshold=THRESHOLD)
    rows = []
    for k, case in enumerate(cases):
        source = held_out_phrases(case)
        index = scan_ablation(source, tok, pcfg)
        batches = ablation_dataset(source, tok, pcfg, index, shard=grain.sharding.NoSharding())
        one = jax.tree.map(lambda x, k=k: x[k:k + 1], params)
        result = run_ablation(model, one, batches, spec, index.mean_feature, mesh, model_names=[f"{case.kind}-{k}"],
                              compiler_options=FAST_COMPILE)
        rows += [dict(r, kind=case.kind, seed=case.seed) for r in tidy_rows(result, n_boot=n_boot)
                 if r["subset"] == "all"]
    return rows


def calibrate(recipes: dict[str, list[Case]]) -> list[dict]:
    """Rows of every case of every recipe (``RECIPES`` name -> cases; ``ablate``), each with its ``recipe``."""
    rows = []
    for name, cases in recipes.items():
        tok = tokenizer(cases)
        model, params = train(cases, RECIPES[name], tok)
        rows += [dict(r, recipe=name) for r in ablate(model, params, cases, tok)]
    return rows
