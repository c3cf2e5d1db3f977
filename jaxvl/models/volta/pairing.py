"""A V&L BERT on blocks of (text, image) pairs: the forward pass shared by every N x M pairing program.

EMAP (``jaxvl.probes.pairs``) and retrieval (``jaxvl.finetune.retrieval``) both score text blocks x image blocks per
compiled call and differ only in what they keep of the scores. ``PairForward`` is the part they share:

- a block of ``text_block`` texts and ``image_block`` images becomes ``text_block * image_block`` pair rows, text-major
  (each text repeated for every image of the block, the image block tiled once per text), the pair axis split over
  the mesh's data axes;
- dual-stream models (``model.cfg.unimodal_prefix > 0``: LXMERT's text-only and vision-only layers, ViLBERT's text-only
  layers) can run their unimodal prefix once per item (``prefixes``, block by block) and per pair only the cross
  sub-layers and the heads (``model.from_prefix``); item dicts then hold ``prefix`` and the mask instead of the raw
  fields.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvl.models.volta.model import VLBertForPreTraining, VLOutput
from jaxvl.runtime.sharding import DEFAULT_DATA_AXES


class PairForward:
    """``model`` on blocks of pairs over ``mesh``; ``text_block * image_block`` must divide over the mesh's
    ``data_axes`` devices (else a ValueError). ``cache_prefix`` (default: whether the model has a unimodal prefix)
    is refused for a single-stream model."""

    def __init__(self, model: VLBertForPreTraining, mesh: Mesh, text_block: int, image_block: int,
                 cache_prefix: bool | None = None, data_axes: tuple[str, ...] = DEFAULT_DATA_AXES):
        self.model, self.text_block, self.image_block = model, int(text_block), int(image_block)
        has_prefix = model.cfg.unimodal_prefix > 0
        self.cache_prefix = has_prefix if cache_prefix is None else bool(cache_prefix)
        if self.cache_prefix and not has_prefix:
            raise ValueError("cache_prefix needs a dual-stream model with a unimodal prefix (cfg.unimodal_prefix > 0)")
        axes = tuple(a for a in data_axes if a in mesh.axis_names)
        self.shards = math.prod(mesh.shape[a] for a in axes)
        if min(self.text_block, self.image_block) < 1 or (self.text_block * self.image_block) % self.shards:
            raise ValueError(f"text_block x image_block = {self.text_block} x {self.image_block} pairs per block "
                             f"must be a positive multiple of the {self.shards} devices of mesh axes {axes}")
        self.pair_sharding = NamedSharding(mesh, PartitionSpec(axes or None))

    def text_rows(self, text: jax.Array) -> jax.Array:
        """text [bt, ...] -> each row repeated for every image of the block: [bt * bv, ...] (text-major), split
        over the data axes."""
        return jax.lax.with_sharding_constraint(jnp.repeat(text, self.image_block, axis=0), self.pair_sharding)

    def image_rows(self, image: jax.Array) -> jax.Array:
        """image [bv, ...] -> the block tiled once per text: [bt * bv, ...], split over the data axes."""
        tiled = jnp.tile(image, (self.text_block,) + (1,) * (image.ndim - 1))
        return jax.lax.with_sharding_constraint(tiled, self.pair_sharding)

    def prefixes(self, variables: Any, text: dict[str, jax.Array], image: dict[str, jax.Array]
                 ) -> tuple[jax.Array, jax.Array]:
        """Every item's unimodal prefix, block by block: (text [Nt, Lt, H], vision [Ni, Lv, Hv]) from the padded item
        fields; a block's items are split over the data axes where their number divides."""
        m = self.model

        def blocks(x: jax.Array, size: int) -> jax.Array:
            return x.reshape(x.shape[0] // size, size, *x.shape[1:])

        def split(b: dict[str, jax.Array]) -> dict[str, jax.Array]:  # a block's items over the data axes
            if next(iter(b.values())).shape[0] % self.shards:
                return b
            return {k: jax.lax.with_sharding_constraint(x, self.pair_sharding) for k, x in b.items()}

        def text_fn(b: dict[str, jax.Array]) -> jax.Array:
            b = split(b)
            return m.apply(variables, b["input_ids"], b["token_type_ids"], b["text_mask"], method=m.text_prefix)

        def image_fn(b: dict[str, jax.Array]) -> jax.Array:
            b = split(b)
            return m.apply(variables, b["features"], b["locations"], b["region_mask"], method=m.vision_prefix)

        t = jax.lax.map(text_fn, {k: blocks(v, self.text_block) for k, v in text.items()})
        v = jax.lax.map(image_fn, {k: blocks(x, self.image_block) for k, x in image.items()})
        return t.reshape(-1, *t.shape[2:]), v.reshape(-1, *v.shape[2:])

    def block_output(self, variables: Any, text: dict[str, jax.Array], image: dict[str, jax.Array],
                     t0: jax.Array, i0: jax.Array) -> VLOutput:
        """The model's output on texts t0.. x images i0.. ([bt * bv] rows, text-major) from padded item arrays:
        the raw fields (``input_ids``, ``token_type_ids``, ``text_mask``; ``features``, ``locations``,
        ``region_mask``) or, with ``cache_prefix``, the prefix streams (text {prefix [Nt, Lt, H], text_mask}, image
        {prefix [Ni, Lv, Hv], region_mask})."""
        tb = {k: jax.lax.dynamic_slice_in_dim(v, t0, self.text_block) for k, v in text.items()}
        ib = {k: jax.lax.dynamic_slice_in_dim(v, i0, self.image_block) for k, v in image.items()}
        t = {k: self.text_rows(x) for k, x in tb.items()}
        v = {k: self.image_rows(x) for k, x in ib.items()}
        if self.cache_prefix:
            return self.model.apply(variables, t["prefix"], v["prefix"], t["text_mask"], v["region_mask"],
                                    method=self.model.from_prefix)
        return self.model.apply(variables, t["input_ids"], v["features"], v["locations"], t["token_type_ids"],
                                t["text_mask"], v["region_mask"])


__all__ = ["PairForward"]
