"""Synthetic worlds with planted cross-modal structure, generated in-process: the embedded default data.

``world``: image-caption pairs and ablation phrases (knobs ``vision_to_language``, ``ambiguous_fraction``,
detector rank noise, and for the probes ``spatial_relations`` / ``side_grounding`` and ``colour_dims`` /
``colour_signal``); ``captions``: the captioning world with spatial relations and phrase links; ``foils``:
labelled ITM items, matched captions and foils, optionally with a unimodal tell (EMAP / MM-SHAP planted truth);
``tasks`` / ``tasks_vqa`` / ``tasks_retrieval`` / ``tasks_refer`` / ``tasks_nlvr2`` / ``tasks_snli_ve``: downstream
task worlds (VQA, retrieval, referring expressions, NLVR2, SNLI-VE) with answers planted in the gold objects
(issue 15).
"""

from jaxvl.data.synthetic.foils import LabelledItem, item_batch, labelled_items, tell_vocabulary
from jaxvl.data.synthetic.world import (
    COLOURS,
    REAL_DETECTOR_RANK_PROBS,
    SyntheticImage,
    SyntheticObject,
    World,
    WorldConfig,
)

__all__ = ["COLOURS", "REAL_DETECTOR_RANK_PROBS", "LabelledItem", "SyntheticImage", "SyntheticObject", "World",
           "WorldConfig", "item_batch", "labelled_items", "tell_vocabulary"]
