"""``jaxvl models``: build each preset, count its parameters against VOLTA's, run one jitted forward pass."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxvl.models.params import count_params
from jaxvl.models.validate import validate_batch
from jaxvl.models.volta.config import VLConfig
from jaxvl.models.volta.model import get_model
from jaxvl.models.volta.plan import find_segments

# VOLTA's own BertForVLPreTraining parameter counts for the ctrl configs (shared tensors counted once).
VOLTA_PARAM_COUNTS = {"visualbert": 114_882_941, "uniter": 114_497_405, "vl-bert": 116_066_941,
                      "lxmert": 211_369_853, "vilbert": 242_076_029}


def example_batch(cfg: VLConfig, batch: int, text_len: int, regions: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A random valid batch: ``input_ids``/``text_mask`` [batch, text_len] (the last row half padding),
    ``features`` [batch, regions, v_feature_size], ``locations`` [batch, regions, 5] ([x1, y1, x2, y2, area],
    row 0 the global [IMG] box), ``region_mask`` [batch, regions]."""
    rng = np.random.default_rng(seed)
    text_mask = np.ones((batch, text_len), np.int32)
    text_mask[-1, text_len // 2:] = 0
    ids = rng.integers(1, cfg.vocab_size, (batch, text_len)).astype(np.int32) * text_mask
    xy = rng.uniform(0, 0.5, (batch, regions, 2))
    wh = rng.uniform(0.05, 0.5, (batch, regions, 2))
    boxes = np.concatenate([xy, xy + wh, wh[..., :1] * wh[..., 1:]], -1).astype(np.float32)
    boxes[:, 0] = [0, 0, 1, 1, 1]  # the global [IMG] row
    return dict(input_ids=ids, features=rng.normal(size=(batch, regions, cfg.v_feature_size)).astype(np.float32),
                locations=boxes, text_mask=text_mask, region_mask=np.ones((batch, regions), np.int32))


def describe_presets(presets: Sequence[str], size: str, batch: int, text_len: int, regions: int) -> int:
    """Prints each preset's layout and parameter count (at ctrl size, next to VOLTA's) and the output shapes
    of one jitted forward pass at ``size`` (``tiny`` or ``ctrl``). Returns 1 if a count differs, else 0."""
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} devices); "
          f"forward pass at {size} size, batch {batch}, text {text_len}, regions {regions}")
    mismatches = 0
    for name in presets:
        full = get_model(name)
        shapes = jax.eval_shape(lambda m=full: m.init(jax.random.key(0), **m.dummy_inputs()))
        n_params = count_params(shapes["params"], full.cfg)
        ok = n_params == VOLTA_PARAM_COUNTS[name]
        mismatches += not ok
        segments = " + ".join(f"{s.repeats}x{len(s.sublayers)}" for s in find_segments(full.cfg.sublayers))
        print(f"\n{name}: {'dual' if full.cfg.dual_stream else 'single'}-stream, {full.cfg.plan.depth} sub-layers "
              f"({segments}), {n_params:,} parameters (VOLTA: {VOLTA_PARAM_COUNTS[name]:,}, "
              f"{'equal' if ok else 'DIFFERENT'})")
        model = full if size == "ctrl" else get_model(name, tiny=True)
        inputs = example_batch(model.cfg, batch, text_len, regions)
        validate_batch(inputs, model.cfg, source=f"{name} example batch")
        start = time.perf_counter()
        variables = jax.jit(lambda b, m=model: m.init(jax.random.key(0), **b))(inputs)
        out = jax.block_until_ready(jax.jit(lambda v, b, m=model: m.apply(v, **b))(variables, inputs))
        print(f"  forward ({time.perf_counter() - start:.1f} s incl. init and compile):")
        for field in ("text", "vision", "pooled", "mlm_logits", "itm_logits"):
            print(f"    {field:<13} {tuple(getattr(out, field).shape)}")
        for key, logits in out.visual_logits.items():
            print(f"    visual[{key}]     {tuple(logits.shape)}")
    return 1 if mismatches else 0
