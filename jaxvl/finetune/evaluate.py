"""Evaluation of fine-tuned task models: the held-out loss and score during training, and the results table.

``TaskEvaluation(model, task, split, ...)`` places a split's batches on the mesh once and compiles one
deterministic forward (vmapped over the members of a sweep). ``evaluation(params)`` gives ``{"loss", "score"}``
(one dict per member for stacked parameters), what the training loop logs every ``eval_every`` steps;
``evaluation.scores(params)`` the per-example scores [N] (or [K, N]).

``task_results`` turns per-example scores into the rows a researcher reads: the mean score in percent, its 95%
percentile-bootstrap interval over the examples (1000 resamples, the same for every member), the number of
examples, the chance level of the split (``TaskSplit.chance``) and whether the interval lies above it; retrieval
tasks add VOLTA's R@1/5/10 and ranks over the held-out images x captions (``RetrievalProgram`` with the
fine-tuned 1-logit head as the score). ``write_results`` writes ``<name>.json`` and ``<name>.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxvl.finetune.data import TaskSplit, eval_batches
from jaxvl.finetune.step import task_outputs
from jaxvl.metrics.bootstrap import bootstrap_means, bootstrap_weights
from jaxvl.models.volta.task_heads import TaskSpec, VLBertForVLTasks
from jaxvl.runtime.sharding import batch_sharding, to_global

# What the score of each head type is (the column header says it, in percent).
SCORE_NAMES = {"VL-classifier": "VQA score", "VL-classifier-GQA": "accuracy", "VL-binary-classifier": "accuracy",
               "VL-tri-classifier": "accuracy", "V-logit": "accuracy (picked region IoU > 0.5)",
               "VL-logit": "4-way option accuracy"}
EXAMPLE_NAMES = {"VL-classifier": "questions", "VL-classifier-GQA": "questions", "VL-binary-classifier": "statements",
                 "VL-tri-classifier": "hypotheses", "V-logit": "expressions", "VL-logit": "captions"}


class TaskEvaluation:
    """The held-out evaluation of ``task`` on ``split`` (module doc). ``members``: the sweep's member names (the
    parameters then carry a leading member axis), None for a single run."""

    def __init__(self, model: VLBertForVLTasks, task: TaskSpec, split: TaskSplit, batch_size: int, mesh: Mesh,
                 members: Sequence[str] | None = None, compiler_options: dict[str, Any] | None = None):
        self.task, self.split, self.members = task, split, list(members) if members else None
        batch_size = min(batch_size, len(split))
        batch_size += -batch_size % mesh.size  # rows divide over the devices
        host = eval_batches(split, batch_size)  # read once (a file split reads its features here)
        self.masks = [b["example_mask"] for b in host]
        self.batches = [to_global(b, mesh) for b in host]

        def outputs(params, batch):
            return task_outputs(model, params, batch, None, task, deterministic=True)

        fn = jax.vmap(outputs, in_axes=(0, None)) if self.members else outputs
        self._outputs = jax.jit(fn, in_shardings=(None, batch_sharding(mesh)), compiler_options=compiler_options)

    def scores(self, params: Any) -> tuple[np.ndarray, np.ndarray]:
        """(mean loss [] or [K], per-example scores [N] or [K, N]) over the split's real examples."""
        losses, scores = [], []
        for batch, mask in zip(self.batches, self.masks, strict=True):
            loss, s = jax.device_get(self._outputs(params, batch))
            losses.append(np.asarray(loss, np.float64) * mask.sum())
            scores.append(np.asarray(s, np.float64)[..., mask > 0])
        return sum(losses) / len(self.split), np.concatenate(scores, axis=-1)

    def __call__(self, params: Any) -> dict[str, float] | list[dict[str, float]]:
        loss, scores = self.scores(params)
        if not self.members:
            return {"loss": float(loss), "score": float(scores.mean())}
        return [{"loss": float(loss[k]), "score": float(scores[k].mean())} for k in range(len(self.members))]


def task_results(task_name: str, task: TaskSpec, split_name: str, chance: float, scores: np.ndarray,
                 members: Sequence[str] | None = None, retrieval: Sequence[Mapping[str, float]] | None = None,
                 seed: int = 0) -> dict[str, Any]:
    """The results of per-example ``scores`` [N] (or [K, N] for K members): mean and 95% bootstrap interval in
    percent, n, chance, above chance (the interval's low end above chance); ``retrieval``: per member R@K rows."""
    scores = np.atleast_2d(np.asarray(scores, np.float64))
    names = list(members) if members else [""]
    n = scores.shape[1]
    mean, low, high = bootstrap_means(scores.T, np.ones_like(scores.T, bool), bootstrap_weights(n, seed=seed))
    rows = []
    for k, name in enumerate(names):
        row = {"member": name, "score": 100 * mean[k], "low": 100 * low[k], "high": 100 * high[k],
               "above_chance": bool(low[k] > chance)}
        if retrieval is not None:
            row.update({key: float(v) for key, v in retrieval[k].items()})
        rows.append(row)
    return {"task": task_name, "volta_task": task.name, "type": task.type, "split": split_name, "n": n,
            "examples": EXAMPLE_NAMES[task.type], "score_name": SCORE_NAMES[task.type], "unit": "%",
            "chance": 100 * chance, "interval": "95% percentile bootstrap over examples, 1000 resamples",
            "rows": rows}


def results_markdown(results: Mapping[str, Any], step: int | None = None) -> str:
    """A titled markdown table of ``task_results`` (one row per member)."""
    at = f" after {step} steps" if step is not None else ""
    title = (f"{results['task']} ({results['volta_task']}, {results['type']}){at}: {results['score_name']} in %, on "
             f"{results['n']} {results['split']} {results['examples']}, with its {results['interval']}; chance "
             f"{results['chance']:.1f}%.")
    retrieval = "ir_r1" in results["rows"][0]
    header = ["member", f"{results['score_name']} %", "95% interval", "above chance?"]
    if retrieval:
        header += ["IR R@1", "IR R@5", "IR R@10", "IR mean rank", "TR R@1", "TR R@5", "TR R@10"]
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results["rows"]:
        cells = [r["member"] or "(single run)", f"{r['score']:.1f}", f"[{r['low']:.1f}, {r['high']:.1f}]",
                 "yes" if r["above_chance"] else "no"]
        if retrieval:
            cells += [f"{r[k]:.1f}" for k in ("ir_r1", "ir_r5", "ir_r10", "ir_meanr", "tr_r1", "tr_r5", "tr_r10")]
        lines.append("| " + " | ".join(cells) + " |")
    if retrieval:
        lines += ["", "IR/TR: image / text retrieval over every held-out caption x image with the fine-tuned head's "
                  "logit (R@K in %, ranks 1-based; VOLTA's eval_retrieval.py)."]
    return "\n".join(lines)


def write_results(workdir: str, name: str, results: Mapping[str, Any], step: int | None = None) -> str:
    """``<workdir>/<name>.json`` and ``<name>.md`` (process 0); returns the markdown."""
    table = results_markdown(results, step)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump({**results, "step": step}, f, indent=1)
        with open(os.path.join(workdir, f"{name}.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return table


def retrieval_scores(model: VLBertForVLTasks, task: TaskSpec, params: Sequence[Any], items: tuple, mesh: Mesh,
                     compiler_options: dict[str, Any] | None = None) -> list[dict[str, float]]:
    """VOLTA's retrieval metrics of each parameter tree of ``params`` (one per sweep member) over ``items`` =
    (texts, images, caption_image) (``jaxvl.finetune.data.retrieval_items``), scored by the task's 1-logit head
    through one ``RetrievalProgram`` (compiled once for all of them)."""
    from jaxvl.finetune.retrieval import RetrievalProgram

    block = 8 if mesh.size <= 64 else mesh.size
    program = RetrievalProgram(model, mesh, k=10, text_block=block, image_block=block,
                               score_fn=lambda out: out[task.name][:, 0].astype(jnp.float32),
                               compiler_options=compiler_options)
    texts, images, caption_image = items
    return [program({"params": p}, texts, images, caption_image).metrics() for p in params]


__all__ = ["SCORE_NAMES", "TaskEvaluation", "results_markdown", "retrieval_scores", "task_results", "write_results"]
