"""Probes of how much a V&L model uses each modality, as compiled counterfactual sweeps.

``pairs``: every (text i, image j) pairing of N items, scored in compiled blocks into O(N x C) streaming sums;
``emap``: EMAP (Hessel & Lee, 2020), the additive projection of those scores and what it loses;
``mmshap``: MM-SHAP (Parcalabescu & Frank, 2023), Shapley values of sub-words and regions, T-SHAP / V-SHAP;
``run``: ``jaxvl probe emap|mmshap`` (``probe_emap`` / ``probe_mmshap(cfg, workdir)``: checkpoints and a pretraining
split -> reports).
"""

from jaxvl.probes.emap import (
    EmapResult,
    MatchMetrics,
    additive_parts,
    emap_metrics,
    emap_projection,
    full_metrics,
    interaction_share,
    run_emap,
)
from jaxvl.probes.mmshap import MMShapProgram, MMShapResult
from jaxvl.probes.pairs import (
    PairItems,
    PairProgram,
    PairSums,
    auc_wins,
    block_stats,
    itm_logits,
    itm_match_score,
)
from jaxvl.probes.run import build_items, probe_emap, probe_mmshap, select_items

__all__ = [
    "EmapResult", "MMShapProgram", "MMShapResult", "MatchMetrics", "PairItems", "PairProgram", "PairSums",
    "additive_parts", "auc_wins", "block_stats", "build_items", "emap_metrics", "emap_projection",
    "full_metrics", "interaction_share", "itm_logits", "itm_match_score", "probe_emap", "probe_mmshap", "run_emap",
    "select_items",
]
