"""Diagnostics of trained V&L BERTs: the cross-modal input ablation (Frank, Bugliarello & Elliott 2021),
LabelMatch, attention analyses, and their reports.

- ``alignment``: phrase-to-region alignment by IoT, the lang4vis target region;
- ``conditions``: the vis4lang / lang4vis inputs and per-example losses, VOLTA's quirks as options;
- ``ablate``: every condition, threshold and checkpoint in one compiled, sharded sweep (``run_ablation``);
- ``labelmatch``: phrases whose head nouns name one detector label, detector agreement;
- ``attention``: attention entropy and phrase-to-aligned-region attention from sown weights;
- ``report``: tidy rows with bootstrap intervals, the paper-style table, CSV/JSONL and PNG plots.

The data side (stored ablation examples -> fixed-shape batches) is ``jaxvl.data.ablation_pipeline``.
"""

from jaxvl.diagnostics.ablate import (
    DEFAULT_THRESHOLDS,
    AblationResult,
    AblationSpec,
    AblationSweep,
    Member,
    check_ablation,
    run_ablation,
    stack_params,
)
from jaxvl.diagnostics.attention import attention_rows, plot_attention
from jaxvl.diagnostics.conditions import LEVELS, TASKS, Quirks
from jaxvl.diagnostics.labelmatch import LabelMatcher, detector_rows
from jaxvl.diagnostics.report import markdown_table, tidy_rows, write_report

__all__ = [
    "DEFAULT_THRESHOLDS", "LEVELS", "TASKS", "AblationResult", "AblationSpec", "AblationSweep", "LabelMatcher",
    "Member", "Quirks", "attention_rows", "check_ablation", "detector_rows", "markdown_table", "plot_attention",
    "run_ablation", "stack_params", "tidy_rows", "write_report",
]
