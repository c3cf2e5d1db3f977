"""Probes of how much a V&L model uses each modality, as compiled counterfactual sweeps.

``pairs``: every (text i, image j) pairing of N items, scored in compiled blocks into O(N x C) streaming sums;
``emap``: EMAP (Hessel & Lee, 2020), the additive projection of those scores and what it loses.
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
from jaxvl.probes.pairs import (
    PairItems,
    PairProgram,
    PairSums,
    auc_wins,
    block_stats,
    itm_logits,
    itm_match_score,
)

__all__ = [
    "EmapResult", "MatchMetrics", "PairItems", "PairProgram", "PairSums", "additive_parts", "auc_wins",
    "block_stats", "emap_metrics", "emap_projection", "full_metrics", "interaction_share", "itm_logits",
    "itm_match_score", "run_emap",
]
