"""Synthetic worlds with planted cross-modal structure, generated in-process: the embedded default data.

``world``: image-caption pairs and ablation phrases (knobs ``vision_to_language``, ``ambiguous_fraction``,
detector rank noise); ``captions``: the captioning world with spatial relations and phrase links.
"""

from jaxvl.data.synthetic.world import (
    REAL_DETECTOR_RANK_PROBS,
    SyntheticImage,
    SyntheticObject,
    World,
    WorldConfig,
)

__all__ = ["REAL_DETECTOR_RANK_PROBS", "SyntheticImage", "SyntheticObject", "World", "WorldConfig"]
