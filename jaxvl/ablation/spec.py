"""What an ablation sweep evaluates: ``AblationSpec`` (conditions, IoT thresholds, controls, quirks and how the
sweep runs) and its ``Member``s, one per evaluated (task, condition, threshold[, control]). The sweep itself
is ``jaxvl.ablation.sweep``; the forward passes ``jaxvl.ablation.forward``."""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxvl.ablation.conditions import LEVELS, TASKS, Quirks

DEFAULT_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(10))


@dataclasses.dataclass(frozen=True)
class Member:
    """One evaluated condition: ``task`` (``vis4lang``/``lang4vis``), ``condition`` and IoT ``threshold``
    (None where the condition does not depend on it); ``control``: the condition's matched control
    (``jaxvl.ablation.controls``) at ``threshold`` instead of the condition itself."""

    task: str
    condition: str
    threshold: float | None
    control: bool = False

    @property
    def level(self) -> int:
        return LEVELS[self.task].index(self.condition)


@dataclasses.dataclass(frozen=True)
class AblationSpec:
    """What the sweep evaluates. ``mask_id``: the tokenizer's ``[MASK]`` id. Conditions are given per task
    by name; ``thresholds`` (each in [0, 1]) apply to vis4lang ``object`` and to every lang4vis condition.
    An empty tuple skips a task. ``control_threshold`` (one of ``thresholds``): every condition but ``none``
    also runs its matched control there (vis4lang ``all``'s control keeps the regions aligned at it); None:
    no controls. The controls' draws read the batches' ``example`` field.

    ``scored_rows_only`` (default): the MLM head runs only at the phrase's sub-words (the first
    ``max_phrase_tokens`` positions of each row's phrase; None: the text length) and the visual heads only at
    the target region, instead of at every row; the losses are the same (the heads act on each row alone).
    ``max_phrase_tokens`` must cover every phrase: ``run_ablation`` checks each batch; ``jaxvl ablate`` sets it to
    the split's longest phrase (``AblationIndex.max_phrase_tokens``). ``share_prefix`` (default; dual-stream
    models): each stream's unimodal prefix runs once per distinct input instead of once per member
    (``jaxvl.ablation.forward``). False for either: the slower program, kept to measure the difference."""

    mask_id: int
    vis4lang: tuple[str, ...] = LEVELS["vis4lang"]
    lang4vis: tuple[str, ...] = LEVELS["lang4vis"]
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    quirks: Quirks = Quirks()
    member_batch_size: int | None = None
    model_batch_size: int | None = None
    control_threshold: float | None = None
    scored_rows_only: bool = True
    max_phrase_tokens: int | None = None
    share_prefix: bool = True

    def __post_init__(self):
        for task in TASKS:
            names = tuple(getattr(self, task))
            object.__setattr__(self, task, names)
            unknown = [n for n in names if n not in LEVELS[task]]
            if unknown:
                raise ValueError(f"unknown {task} condition(s) {unknown}; known: {list(LEVELS[task])}")
            if len(set(names)) != len(names):
                raise ValueError(f"{task} conditions {list(names)} repeat a name")
        if not self.vis4lang and not self.lang4vis:
            raise ValueError("no condition to evaluate: vis4lang and lang4vis are both empty")
        thresholds = tuple(float(t) for t in self.thresholds)
        object.__setattr__(self, "thresholds", thresholds)
        bad = [t for t in thresholds if not 0.0 <= t <= 1.0]  # NaN fails this too
        if bad:
            raise ValueError(f"IoT threshold(s) {bad} outside [0, 1]")
        if len(set(thresholds)) != len(thresholds):
            raise ValueError(f"IoT thresholds {list(thresholds)} repeat a value")
        needs_threshold = "object" in self.vis4lang or bool(self.lang4vis)
        if needs_threshold and not thresholds:
            raise ValueError("no IoT threshold given, but vis4lang 'object' or lang4vis needs one")
        if self.control_threshold is not None and float(self.control_threshold) not in thresholds:
            raise ValueError(f"control_threshold={self.control_threshold} is not one of the IoT thresholds "
                             f"{list(thresholds)}")
        if self.mask_id < 0:
            raise ValueError(f"mask_id={self.mask_id} must be a token id >= 0")
        for name in ("member_batch_size", "model_batch_size", "max_phrase_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1 or None")

    def members(self, task: str) -> tuple[Member, ...]:
        """The members of ``task`` in sweep order: the conditions, then their controls."""
        out: list[Member] = []
        for cond in getattr(self, task):
            if task == "vis4lang" and cond != "object":
                out.append(Member(task, cond, None))
            else:
                out.extend(Member(task, cond, t) for t in self.thresholds)
        if self.control_threshold is not None:
            t = float(self.control_threshold)
            out.extend(Member(task, cond, t, control=True) for cond in getattr(self, task) if cond != "none")
        return tuple(out)

    def member_arrays(self, task: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(levels int32 [M], thresholds float32 [M], controls bool [M]) of ``task``'s members (an unused
        threshold is 0)."""
        members = self.members(task)
        return (np.array([m.level for m in members], np.int32),
                np.array([0.0 if m.threshold is None else m.threshold for m in members], np.float32),
                np.array([m.control for m in members], bool))
