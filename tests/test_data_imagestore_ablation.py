"""The bound on float16 features (issue 16, part 2): the cross-modal ablation's per-condition mean losses move by at
most 1e-3 bits when a synthetic world's features go through an image store as float16 instead of float32.

The world's images are prepared as an image store with ``features_dtype=float16`` (``jaxvl prepare``'s path)
and read back (cast to float32); their features replace the float32 ones in the world's ablation records, and
the same tiny UNITER sweeps both (``run_ablation``, every vis4lang / lang4vis condition and control).
"""

from __future__ import annotations

import logging
from typing import Any

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from flax import linen as nn

from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation, world_ablation_source
from jaxvl.ablation.sweep import AblationResult, AblationSpec, run_ablation, stack_params
from jaxvl.data.grain import open_split
from jaxvl.data.sources import build_source
from jaxvl.data.synthetic import World, WorldConfig
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.presets import single_stream_plan
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.sharding import make_mesh

logging.getLogger("absl").setLevel(logging.ERROR)
tfds.disable_progress_bar()

IMAGES, SEED, T = 8, 3, 20
BOUND_BITS = 1e-3


def float16_features(out) -> dict[str, np.ndarray]:
    """Image id -> its features [R, D] as an image store with float16 features gives them back (float32)."""
    builder = build_source(f"synthetic:num_images={IMAGES},seed={SEED},val_images=0,layout=images,"
                           "features_dtype=float16", str(out)).builders[0]
    builder.download_and_prepare()
    source, info = open_split(builder.data_dir, "train")
    assert info.features_dtype == "float16"
    return {r["image_id"].decode(): r["features"] for r in (source[i] for i in range(len(source)))}


def sweep(source: list[dict], tok: Tokenizer, params: Any = None) -> tuple[AblationResult, Any]:
    """The ablation of ``source`` by a tiny UNITER (``params``, or freshly initialised); the result and params."""
    cfg = AblationPipelineConfig(batch_size=8, max_seq_length=T)
    index = scan_ablation(source, tok, cfg)
    batches = list(ablation_dataset(source, tok, cfg, index, shard=grain.sharding.NoSharding()))
    model = get_model("uniter", tiny=True, vocab_size=tok.vocab_size, num_object_classes=20,
                      **single_stream_plan(1).to_dict())
    if params is None:
        inputs = {k: batches[0][k][:1] for k in ("input_ids", "features", "locations")}
        init = jax.jit(model.init, compiler_options=FAST_COMPILE)
        params = stack_params([nn.meta.unbox(init(jax.random.key(0), **inputs)["params"])])
    spec = AblationSpec(tok.mask_id, thresholds=(0.5,), control_threshold=0.5)
    result = run_ablation(model, params, batches, spec, index.mean_feature, make_mesh(), compiler_options=FAST_COMPILE)
    return result, params


def condition_means(result: AblationResult) -> dict[tuple, float]:
    """(task, metric, condition, threshold, control) -> the mean loss in bits over the member's examples."""
    out = {}
    for task, metrics in result.values.items():
        for metric, values in metrics.items():
            for m, member in enumerate(result.members[task]):
                included = result.included(task, m)
                out[task, metric, member.condition, member.threshold, member.control] = float(
                    np.mean(np.asarray(values, np.float64)[0, m][included]))
    return out


def test_float16_features_move_the_ablation_means_by_at_most_1e_3_bits(tmp_path):
    world = World(WorldConfig(num_images=IMAGES, seed=SEED))
    tok = Tokenizer.from_words(world.vocabulary())
    full = world_ablation_source(world, range(IMAGES))
    half_features = float16_features(tmp_path)
    half = [{**r, "features": half_features[r["image_id"]]} for r in full]
    changed = max(float(np.abs(h["features"] - f["features"]).max()) for h, f in zip(half, full, strict=True))
    assert 0 < changed < 1e-2  # float16 rounding of features of order 1
    result, params = sweep(full, tok)
    a, b = condition_means(result), condition_means(sweep(half, tok, params)[0])
    assert a.keys() == b.keys() and len(a) >= 8
    diffs = {k: abs(a[k] - b[k]) for k in a}
    worst = max(diffs, key=diffs.get)
    print(f"float16 vs float32 features: largest change of a per-condition mean loss {diffs[worst]:.2e} bits at "
          f"{worst} (means {a[worst]:.4f} / {b[worst]:.4f} bits); {len(a)} means")
    assert all(np.isfinite(v) for v in a.values())
    assert 0 < diffs[worst] <= BOUND_BITS  # the rounding reached the losses, and moved no mean by more
