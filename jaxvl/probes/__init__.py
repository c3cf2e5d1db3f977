"""Probes of how much a V&L model uses each modality, as compiled counterfactual sweeps.

``pairs``: every (text i, image j) pairing of N items, scored in compiled blocks into O(N x C) streaming sums;
``emap``: EMAP (Hessel & Lee, 2020), the additive projection of those scores and what it loses (on N x N pairs, or
on labelled items: matched captions and foils);
``mmshap``: MM-SHAP (Parcalabescu & Frank, 2023), Shapley values of sub-words and regions, T-SHAP / V-SHAP;
``mirror``: positional skew, boxes flipped left-right with and without swapping left/right (MLM, ITM);
``colour``: colour-word foils (ITM, MLM at the masked colour token) and a colour subspace of the region features
projected out, beside a random control;
``plots``: the EMAP and MM-SHAP figures;
``run`` / ``mirror_run`` / ``colour_run``: ``jaxvl probe emap|mmshap|mirror|colour`` (checkpoints and a pretraining
split -> reports).
"""

from jaxvl.probes.colour import ColourItems, ColourProgram, ColourResult, colour_items, project_out, run_colour
from jaxvl.probes.emap import (
    EmapResult,
    LabelledMetrics,
    MatchMetrics,
    additive_parts,
    check_labels,
    emap_metrics,
    emap_projection,
    full_metrics,
    interaction_share,
    labelled_metrics,
    run_emap,
)
from jaxvl.probes.mirror import MirrorProgram, MirrorResult, MirrorWords, flip_locations, run_mirror, swap_words
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
from jaxvl.probes.run import build_items, load_jobs, probe_emap, probe_mmshap, select_items

__all__ = [
    "ColourItems", "ColourProgram", "ColourResult", "EmapResult", "LabelledMetrics", "MMShapProgram", "MMShapResult",
    "MatchMetrics", "MirrorProgram", "MirrorResult", "MirrorWords", "PairItems", "PairProgram", "PairSums",
    "additive_parts", "auc_wins", "block_stats", "build_items", "check_labels", "colour_items", "emap_metrics",
    "emap_projection", "flip_locations", "full_metrics", "interaction_share", "itm_logits", "itm_match_score",
    "labelled_metrics", "load_jobs", "probe_emap", "probe_mmshap", "project_out", "run_colour", "run_emap",
    "run_mirror", "select_items", "swap_words",
]
