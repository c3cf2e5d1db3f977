"""The cross-modal input ablation of trained V&L BERTs (Frank, Bugliarello & Elliott 2021), LabelMatch,
attention analyses, and their reports: everything ``jaxvl ablate`` does, in one folder.

- ``run``: ``ablate(cfg, workdir)``, the command: checkpoints grouped by model config, one sweep each;
- ``data``: stored ablation examples -> fixed-shape batches (phrase spans, padded reference boxes);
- ``alignment``: phrase-to-region alignment by IoT, the lang4vis target region;
- ``conditions``: the vis4lang / lang4vis inputs and per-example losses, VOLTA's quirks as options;
- ``controls``: each condition's matched control (as much input removed, none of it aligned with the phrase);
- ``sweep``: every condition, threshold and checkpoint in one compiled, sharded sweep (``run_ablation``);
- ``labelmatch``: phrases whose head nouns name one detector label, detector agreement;
- ``attention``: attention entropy and phrase-to-aligned-region attention from sown weights;
- ``report``: tidy rows with bootstrap intervals, the paper-style table, CSV/JSONL and PNG plots;
- ``verdicts``: ``found`` / ``not found`` / ``opposite`` from each effect against its control and a measured floor.
"""

from jaxvl.ablation.attention import attention_rows, plot_attention
from jaxvl.ablation.conditions import LEVELS, TASKS, Quirks
from jaxvl.ablation.labelmatch import LabelMatcher, detector_rows
from jaxvl.ablation.report import markdown_table, tidy_rows, write_report
from jaxvl.ablation.run import Checkpoint, ablate, check_fits, load_checkpoint, model_config_from_run
from jaxvl.ablation.spec import DEFAULT_THRESHOLDS
from jaxvl.ablation.sweep import (
    AblationResult,
    AblationSpec,
    AblationSweep,
    Member,
    check_ablation,
    run_ablation,
    stack_params,
)

__all__ = [
    "Checkpoint", "ablate", "check_fits", "load_checkpoint", "model_config_from_run",
    "DEFAULT_THRESHOLDS", "LEVELS", "TASKS", "AblationResult", "AblationSpec", "AblationSweep", "LabelMatcher",
    "Member", "Quirks", "attention_rows", "check_ablation", "detector_rows", "markdown_table", "plot_attention",
    "run_ablation", "stack_params", "tidy_rows", "write_report",
]
