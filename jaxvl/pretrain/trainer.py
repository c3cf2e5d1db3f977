"""The pretraining trainer behind ``jaxvl pretrain``: the pieces of a stage for the one stage runner.

``pretrain(cfg, workdir)`` runs a ``jaxvl/configs/pretrain.py`` config: the vision-only stage first when the
config asks for one (``<workdir>/vision``, then the V&L stage in ``<workdir>/vl`` from its parameters),
else one stage in ``<workdir>``. ``pretrain_stage`` builds a stage's pieces (data, model, optimizer, state
init, step, evaluation; sections 1-2 below) and ``jaxvl.runtime.stage.run_stage`` runs it (3-5):

1. Data: a prepared dataset (or a source string prepared on first use), the tokenizer, this host's
   Grain pipeline of the train split and one of the held-out split for evaluation.
2. Model and optimizer from the config, checked against the data (feature size, classes, vocabulary).
3. State: resumed from the stage's latest checkpoint (parameters, optimizer state, step, rng and
   the data iterator's position), else initialised in its shards (random, BERT text stream, a jaxvl
   checkpoint or a VOLTA state dict).
4. The train step compiled ahead of time (its gradient accumulated over ``grad_accum_steps`` microbatches when
   that is above 1), its per-device memory printed.
5. The loop: a progress bar, metrics per step to JSONL and TensorBoard (fetched one step late, so
   the host never waits on the step it just dispatched), periodic evaluation, asynchronous
   checkpoints. A non-finite loss or gradient stops the run naming the step and the last good
   checkpoint, and nothing after it is saved. SIGTERM writes a checkpoint and stops (status
   ``preempted``); running the same command again resumes exactly where it stopped.

A config with a ``sweep`` section trains its members together as one vmapped program
(``jaxvl.pretrain.sweep``); per-member metrics are logged with a ``member`` field and each member's
final parameters are exported to ``<workdir>/members/<name>``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from ml_collections import ConfigDict

from jaxvl.data.grain import open_split, tokenizer_for
from jaxvl.data.resolve import resolve_dataset
from jaxvl.data.tokenizer import Tokenizer
from jaxvl.models import get_model
from jaxvl.models.volta.model import VLBertForPreTraining
from jaxvl.pretrain import sweep
from jaxvl.pretrain.data import PipelineConfig, pretrain_dataset
from jaxvl.pretrain.loss import ObjectiveConfig, pretraining_loss
from jaxvl.pretrain.step import init_state, jit_train_step
from jaxvl.pretrain.step import state_shardings as make_state_shardings
from jaxvl.runtime import stage as stage_runner
from jaxvl.runtime.checkpoint import save_member
from jaxvl.runtime.compile import FAST_COMPILE
from jaxvl.runtime.loop import LoopConfig, StageResult, log
from jaxvl.runtime.optimizer import OptimizerConfig, make_optimizer
from jaxvl.runtime.sharding import batch_sharding, make_mesh, to_global
from jaxvl.runtime.stage import Stage, example_batch, take_batches

logger = logging.getLogger(__name__)

# ============================================================================================ data


def fit_model_to_data(cfg: ConfigDict, info: Any, tokenizer: Tokenizer, dataset: str) -> dict[str, Any]:
    """Model overrides the data dictates. With ``model.fit_data`` they are applied (tiny runs); otherwise
    the preset must already agree, and a mismatch is an error naming the key and the dataset."""
    regions = (info.metadata or {}).get("regions", {})
    want = {"v_feature_size": regions.get("feature_dim"), "vocab_size": tokenizer.vocab_size}
    if regions.get("num_classes"):
        want["num_object_classes"] = regions["num_classes"]
    want = {k: v for k, v in want.items() if v is not None}
    if cfg.model.fit_data:
        return want
    preset = get_model(cfg.model.name, cfg.model.tiny).cfg
    bad = [f"{k}: model {getattr(preset, k)} vs data {v}" for k, v in want.items() if getattr(preset, k) != v]
    if bad:
        raise ValueError(f"model {cfg.model.name!r} does not match dataset {dataset}: {'; '.join(bad)} "
                         f"(set model.fit_data=True to size the model from the data)")
    return {}


def grad_accum_steps(cfg: ConfigDict) -> int:
    """``cfg.grad_accum_steps`` (default 1), checked against ``data.batch_size`` before anything is built."""
    steps = cfg.get("grad_accum_steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"config grad_accum_steps={steps!r}; expected a positive int")
    if cfg.data.batch_size % steps:
        raise ValueError(f"config grad_accum_steps={steps} does not divide data.batch_size={cfg.data.batch_size} "
                         f"(each update averages grad_accum_steps microbatches of batch_size / grad_accum_steps rows)")
    return steps


def vision_only_batch(batch: Mapping[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """The vision-only stage's input (VOLTA ``train_concap_vis.py``): the text is one padding token
    with mask 0, so only the region objectives (MRC-KL) have targets."""
    out = dict(batch)
    rows = batch["input_ids"].shape[0]
    out["input_ids"] = np.full((rows, 1), pad_id, np.int32)
    out["text_mask"] = np.zeros((rows, 1), np.int32)
    out["token_type_ids"] = np.zeros((rows, 1), np.int32)
    return out


# ========================================================================================= initial

_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """``logger.warning(message)`` the first time this process sees ``message`` (a sweep's members and a
    run's stages would otherwise repeat it)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)



def initial_params(cfg: ConfigDict, model: VLBertForPreTraining, params: Any) -> tuple[Any, str]:
    """Parameters to start from (host numpy tree) and a description: ``params`` (random init) as they
    are, BERT in the text stream (``init.kind=bert``) or a VOLTA state dict (``init.checkpoint`` a file)."""
    if cfg.init.checkpoint and os.path.isfile(cfg.init.checkpoint):
        from jaxvl.convert.volta import load_volta_checkpoint

        return load_volta_checkpoint(cfg.init.checkpoint, model.cfg), f"VOLTA checkpoint {cfg.init.checkpoint}"
    kind = cfg.init.kind
    if kind == "random":
        return params, "random"
    if kind != "bert":
        raise ValueError(f"config init.kind={kind!r}; expected 'bert' or 'random'")
    if not cfg.init.bert_checkpoint:
        if cfg.model.tiny:
            warn_once("init.kind=bert without init.bert_checkpoint: a tiny model starts from random weights")
            return params, "random (tiny run: no BERT checkpoint of the tiny text stream's shape)"
        raise ValueError("config init.kind='bert' needs init.bert_checkpoint: a HF BertModel / BertForPreTraining "
                         ".bin or .safetensors file (there is no model hub); or use the rnd-vl variant")
    from jaxvl.convert.common import load_state_dict
    from jaxvl.convert.hf import bert_into_text_stream

    state_dict = load_state_dict(cfg.init.bert_checkpoint)
    out = bert_into_text_stream(state_dict, model.cfg, params, copy_visual_tables=cfg.init.copy_visual_tables)
    return out, f"BERT {cfg.init.bert_checkpoint}"


# ====================================================================================== evaluation


def _mean_eval_loss(eval_fn: Callable, params: Any, batches: list[dict[str, jax.Array]], seed: int,
                    extra: tuple = (), members: list[str] | None = None,
                    ) -> dict[str, float] | list[dict[str, float]]:
    """Mean loss parts over the fixed evaluation batches, masking drawn from a fixed key per batch (the same
    for every member); one dict, or one per sweep member."""
    totals: dict[str, np.ndarray] = {}
    for i, batch in enumerate(batches):
        loss, parts = eval_fn(params, batch, jax.random.fold_in(jax.random.key(seed), i), *extra)
        for k, v in jax.device_get({"loss": loss, **parts}).items():
            totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64) / len(batches)
    if members is None:
        return {k: float(v) for k, v in totals.items()}
    return [{k: float(v[i]) for k, v in totals.items()} for i in range(len(members))]


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """``evaluation(state)``: the held-out losses ({name: float}, or one dict per sweep member); ``chance()``: each
    objective's chance level on the same batches and masking draws (``jaxvl.pretrain.chance``), in the same form."""

    run: Callable[[Any], Any]
    chance: Callable[[], Any]

    def __call__(self, state: Any) -> Any:
        return self.run(state)


def pretrain_evaluation(cfg: ConfigDict, model: VLBertForPreTraining, ocfg: ObjectiveConfig, dataset: str,
                        tokenizer: Tokenizer, pipeline: PipelineConfig, mesh: Mesh,
                        host_to_global: Callable[[Mapping[str, np.ndarray]], dict[str, jax.Array]],
                        shardings: Any, compiler_options: dict[str, Any] | None,
                        members: list[sweep.SweepMember] | None = None) -> Evaluation | None:
    """``evaluate(state)``: the deterministic loss and its parts averaged over ``cfg.eval_batches`` fixed
    held-out batches ({name: float}, or one dict per sweep member: vmapped over the members with each
    member's own masking and head weights), with ``evaluate.chance()``, the chance levels of the same batches;
    None without evaluation or without an eval split."""
    if not cfg.eval_every or not cfg.eval_batches:
        return None
    try:
        eval_source, _ = open_split(dataset, cfg.data.eval_split, skip_bad=cfg.data.skip_bad)
    except ValueError:
        logger.warning("no %r split in %s: no evaluation", cfg.data.eval_split, dataset)
        return None
    eval_cfg = dataclasses.replace(pipeline, shuffle=False, num_epochs=1,
                                   batch_size=min(pipeline.batch_size, len(eval_source)))
    batches = take_batches(pretrain_dataset(eval_source, tokenizer, eval_cfg), host_to_global, cfg.eval_batches)

    def chance() -> dict[str, float] | list[dict[str, float]]:
        from jaxvl.pretrain.chance import chance_levels, evaluation_targets

        args = (batches, cfg.seed + 1, ocfg, model.cfg.vocab_size, model.cfg.add_global_imgfeat)
        if not members:
            return chance_levels(evaluation_targets(*args))
        return [chance_levels(evaluation_targets(*args, token_prob=m.token_prob, region_prob=m.region_prob,
                                                 overlap_threshold=m.overlap_threshold)) for m in members]

    if not members:
        def loss(params, batch, rng):
            return pretraining_loss(model, params, batch, rng, ocfg, deterministic=True)

        fn = jax.jit(loss, in_shardings=(shardings.params, batch_sharding(mesh), None),
                     compiler_options=compiler_options)
        return Evaluation(lambda state: _mean_eval_loss(fn, state.params, batches, cfg.seed + 1), chance)

    def member_loss(params, batch, rng, hp):
        return pretraining_loss(model, params, batch, rng, ocfg, deterministic=True, token_prob=hp.token_prob,
                                region_prob=hp.region_prob, overlap_threshold=hp.overlap_threshold,
                                visual_weights=sweep.visual_weights(model.cfg, hp))

    fn = jax.jit(jax.vmap(member_loss, in_axes=(0, None, None, 0)),
                 in_shardings=(shardings.params, batch_sharding(mesh), None, shardings.hparams),
                 compiler_options=compiler_options)
    names = [m.name for m in members]
    return Evaluation(lambda state: _mean_eval_loss(fn, state.params, batches, cfg.seed + 1, (state.hparams,), names),
                      chance)


# ========================================================================================= a stage


def pretrain_stage(cfg: ConfigDict, workdir: str, vision_only: bool = False, init_from: str | None = None,
                   run_dir: str | None = None) -> Stage:
    """The pieces of one pretraining stage in ``workdir`` for ``runtime.stage.run_stage`` (module doc, steps
    1-5). ``init_from``: a workdir whose parameters start the stage (else ``cfg.init``); ``run_dir``: the
    run's top directory, where a source string's data is prepared (default ``workdir``)."""
    compiler_options = FAST_COMPILE if cfg.fast_compile else None
    accumulate = grad_accum_steps(cfg)

    # ----------------------------------------------------------------------------------- data
    from jaxvl.data.builders.pretrain import PretrainPairs

    dataset = resolve_dataset(cfg.data.dataset, cfg.data.prepare_dir, run_dir or workdir, PretrainPairs)
    source, info = open_split(dataset, cfg.data.train_split, skip_bad=cfg.data.skip_bad)
    tokenizer = tokenizer_for(info, cfg.data.vocab_file or None)
    fitted = fit_model_to_data(cfg, info, tokenizer, dataset)

    # -------------------------------------------------------------------- model and optimizer
    model = get_model(cfg.model.name, cfg.model.tiny, dtype=cfg.model.dtype, scan_layers=cfg.model.scan_layers,
                      visual_target_weights=dict(cfg.model.visual_target_weights),
                      pad_to_multiple_of=cfg.model.get("pad_to_multiple_of", 1),
                      remat=cfg.model.get("remat", "none"),
                      weight_grad_dtype=cfg.model.get("weight_grad_dtype", "float32"), **fitted)
    stage_cfg = cfg.vision_stage if vision_only else cfg
    steps = int(stage_cfg.steps) or math.ceil(stage_cfg.epochs * len(source) / cfg.data.batch_size)
    opt_cfg = OptimizerConfig(total_steps=steps, **cfg.optimizer.to_dict())
    objective = cfg.objective.to_dict()
    if vision_only:
        objective.update(objective=2, token_prob=0.0)
    ocfg = ObjectiveConfig(mask_id=tokenizer.mask_id, cls_id=tokenizer.cls_id, sep_id=tokenizer.sep_id, **objective)
    members = sweep.members_from_config(cfg.sweep, model.cfg, ocfg, opt_cfg, seed=cfg.seed) if cfg.sweep else None
    if members:  # one model with every head a member weighs; the members' peak learning rates injected
        weights = sweep.shared_visual_target_weights(members, model.cfg)
        model = VLBertForPreTraining(model.cfg.replace(visual_target_weights=weights))
    tx = make_optimizer(opt_cfg, injected_peak=bool(members))
    mesh = make_mesh(**cfg.mesh.to_dict())

    pipeline = PipelineConfig(batch_size=cfg.data.batch_size, max_seq_length=cfg.data.max_seq_length,
                              add_global_imgfeat=model.cfg.add_global_imgfeat, seed=cfg.seed,
                              num_threads=cfg.data.num_threads)
    train_ds = pretrain_dataset(source, tokenizer, pipeline)

    def host_to_global(host: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        host = {k: v for k, v in host.items() if k != "num_boxes"}
        return to_global(vision_only_batch(host, tokenizer.pad_id) if vision_only else host, mesh)

    example = example_batch(train_ds, host_to_global)

    # ------------------------------------------------------------------------------ the state
    if members:
        shardings = sweep.sweep_state_shardings(model, tx, example, mesh, len(members))
        jitted = sweep.jit_sweep_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), compiler_options,
                                      accumulate_steps=accumulate)

        def fresh_state() -> Any:
            return sweep.init_sweep_state(model, tx, members, example, mesh, compiler_options=compiler_options)
    else:
        shardings = make_state_shardings(model, tx, example, mesh)
        jitted = jit_train_step(model, ocfg, tx, mesh, shardings, batch_sharding(mesh), compiler_options,
                                accumulate_steps=accumulate)

        def fresh_state() -> Any:
            return init_state(model, tx, jax.random.key(cfg.seed), example, mesh, compiler_options=compiler_options)

    start_from = init_from or (cfg.init.checkpoint if cfg.init.checkpoint and not os.path.isfile(cfg.init.checkpoint)
                               else None)
    if members and start_from:
        raise ValueError("a sweep starts from random or BERT weights (init.checkpoint / vision stages are "
                         "single-run features)")

    def initialise(state: Any) -> tuple[Any, str]:
        params = jax.device_get(state.params)
        if members:  # each member's own random draw, then the same BERT text stream (if any) in every member
            per_member = [initial_params(cfg, model, jax.tree.map(lambda x, k=k: x[k], params))
                          for k in range(len(members))]
            params = jax.tree.map(lambda *xs: np.stack(xs), *[p for p, _ in per_member])
            init_desc = per_member[0][1]
        else:
            params, init_desc = initial_params(cfg, model, params)
        return state.replace(params=jax.device_put(params, shardings.params)), init_desc

    # ------------------------------------------------------------------------------- the loop
    names = None if not members else [m.name for m in members]
    loop = LoopConfig(steps=steps, checkpoint_every=cfg.checkpoint.every, eval_every=cfg.eval_every,
                      log_every=cfg.log_every, progress=cfg.progress, members=names)
    from jaxvl.models.volta.config import JAXVL_ONLY, to_volta_dict

    model_cfg = {**to_volta_dict(model.cfg), **{k: getattr(model.cfg, k) for k in JAXVL_ONLY if k != "plan"}}
    built: dict[str, Evaluation | None] = {}

    def make_evaluate() -> Evaluation | None:
        built["evaluation"] = pretrain_evaluation(cfg, model, ocfg, dataset, tokenizer, pipeline, mesh, host_to_global,
                                                  shardings, compiler_options, members)
        return built["evaluation"]

    def on_done(state: Any) -> None:
        learned = report_learned(workdir, state, built.get("evaluation"), trained_objectives(model.cfg, ocfg, members),
                                 members)
        if members:
            finish_sweep(workdir, state, members, learned)

    return Stage(
        description=f"{cfg.model.name} ({'vision-only' if vision_only else 'V&L'} stage), {steps} steps of "
                    f"{cfg.data.batch_size}",
        mesh=mesh, train_data=train_ds, host_to_global=host_to_global, example=example, init_state=fresh_state,
        shardings=shardings, loop=loop, jitted_step=jitted, init_from=start_from, initialise=initialise,
        make_evaluate=make_evaluate,
        run_info=dict(config=cfg.to_dict(), model_config=model_cfg, dataset=dataset,
                      stage="vision" if vision_only else "vl"),
        on_done=on_done,
        checkpoint_keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)


_HEAD_OBJECTIVES = {"0": "mrc_kl", "3": "mrc_xe", "1": "mrfr", "5": "mrfr"}
_MEMBER_OBJECTIVES = {"mrc_kl_weight": "mrc_kl", "mrc_xe_weight": "mrc_xe", "mrfr_weight": "mrfr"}


def trained_objectives(model_cfg: Any, ocfg: ObjectiveConfig,
                       members: list[sweep.SweepMember] | None = None) -> dict[str, tuple[set[str], set[str]]]:
    """{member ("" for a single run): (objectives it trains, objectives it does not)} among MLM (token masking
    above 0), ITM (objectives 0 and 1) and the region heads (weight above 0: the model's, or the member's)."""
    itm = {"itm"} if ocfg.objective != 2 else set()
    heads = {_HEAD_OBJECTIVES[k] for k in model_cfg.visual_targets if k in _HEAD_OBJECTIVES}
    out = {}
    for m in members or [None]:
        if m is None:
            weighed = {_HEAD_OBJECTIVES[k] for k, w in model_cfg.visual_target_weights
                       if w > 0 and k in _HEAD_OBJECTIVES}
            text = ocfg.token_prob > 0
        else:
            weighed = {name for key, name in _MEMBER_OBJECTIVES.items() if getattr(m, key) > 0}
            text = m.token_prob > 0
        trained = weighed | itm | ({"mlm"} if text else set())
        out["" if m is None else m.name] = (trained, ({"mlm", "itm"} | heads) - trained)
    return out


def report_learned(workdir: str, state: Any, evaluation: Evaluation | None,
                   objectives: dict[str, tuple[set[str], set[str]]],
                   members: list[sweep.SweepMember] | None = None) -> str:
    """Whether each trained objective learned above chance (``jaxvl.pretrain.chance``): the final evaluation loss
    (the one logged at the last step, else evaluated now) beside its chance level, a verdict per objective.
    Printed, written to ``<workdir>/learned.md`` and ``learned.json``, and added to ``run.json`` as ``learned``
    ({member: {objective: verdict}}). Returns the markdown ("" without an evaluation split)."""
    import json

    from jaxvl.pretrain.chance import LEARNED_MARGIN, learned_table, verdicts
    from jaxvl.runtime.metrics_log import read_metrics
    from jaxvl.runtime.stage import write_run_info

    if evaluation is None:
        log(f"{workdir}: no evaluation (eval_every / eval_batches 0, or no held-out split): cannot say whether the "
            "model learned above chance")
        return ""
    step = int(jax.device_get(state.step))
    names = [m.name for m in members] if members else [""]
    logged = {n: [r for r in read_metrics(workdir, "eval", n or None) if r["step"] == step] for n in names}
    if all(logged.values()):
        final = [logged[n][-1] for n in names]
    else:
        now = evaluation(state)
        final = now if isinstance(now, list) else [now]
    chance = evaluation.chance()
    chance = chance if isinstance(chance, list) else [chance]
    rows = [v for n, losses, levels in zip(names, final, chance, strict=True)
            for v in verdicts(losses, levels, objectives[n][0], member=n)]
    table = learned_table(rows, {n: objectives[n][1] for n in names}, step=step)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "learned.md"), "w", encoding="utf-8") as f:
            f.write(table + "\n")
        with open(os.path.join(workdir, "learned.json"), "w", encoding="utf-8") as f:
            json.dump({"step": step, "margin": LEARNED_MARGIN, "rows": [dataclasses.asdict(r) for r in rows],
                       "untrained": {n: sorted(objectives[n][1]) for n in names}}, f, indent=1)
        run_json = os.path.join(workdir, "run.json")
        if os.path.isfile(run_json):
            with open(run_json, encoding="utf-8") as f:
                info = json.load(f)
            info["learned"] = {n: {r.objective: r.verdict for r in rows if r.member == n} for n in names}
            write_run_info(workdir, info)
    log(f"{workdir}:\n{table}")
    return table


def finish_sweep(workdir: str, state: Any, members: list[sweep.SweepMember], learned: str = "") -> None:
    """Each member's final state as its own checkpoint (``<workdir>/members/<name>``, a single-run layout
    that ``init.checkpoint`` and the ablation read), and the summary table (``summary.md``, printed), followed
    by ``learned``, the learned-above-chance table (``report_learned``)."""
    from jaxvl.runtime.metrics_log import read_metrics

    for k, member in enumerate(members):
        save_member(workdir, member.name, sweep.unstack_member(state, k),
                    {"member": member.name, **dataclasses.asdict(member)})
    last_step = max(r["step"] for r in read_metrics(workdir, "train"))
    history = {m.name: read_metrics(workdir, "train", m.name) for m in members}
    rows = {name: next(r for r in h if r["step"] == last_step) for name, h in history.items()}
    keys = [k for k in rows[members[0].name] if isinstance(rows[members[0].name][k], float) and k != "seconds"]
    seconds = [sum(r.get("seconds", 0.0) for r in history[m.name]) for m in members]
    table = sweep.summary_table([{k: [rows[m.name][k] for m in members] for k in keys}], members, seconds)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "summary.md"), "w") as f:
            f.write(table + "\n" + (f"\n{learned}\n" if learned else ""))
    log(f"sweep of {len(members)} members at step {last_step}:\n{table}")


def run_stage(cfg: ConfigDict, workdir: str, vision_only: bool = False, init_from: str | None = None,
              run_dir: str | None = None) -> StageResult:
    """One pretraining stage in ``workdir`` (``pretrain_stage`` run by ``runtime.stage.run_stage``)."""
    os.makedirs(workdir, exist_ok=True)
    _, result = stage_runner.run_stage(pretrain_stage(cfg, workdir, vision_only, init_from, run_dir), workdir)
    return result


# ===================================================================================== stages


def pretrain(cfg: ConfigDict, workdir: str) -> list[StageResult]:
    """Runs the config's stages (module doc). Returns one ``StageResult`` per stage run; a stage that did not
    finish (``preempted``, ``interrupted``) ends the run (the next call resumes it)."""
    if cfg.sweep and cfg.vision_stage.enabled:
        raise ValueError("a sweep cannot have a vision-only stage (run the stages' sweeps separately)")
    if not cfg.vision_stage.enabled:
        return [run_stage(cfg, workdir)]
    vision_dir, vl_dir = os.path.join(workdir, "vision"), os.path.join(workdir, "vl")
    first = run_stage(cfg, vision_dir, vision_only=True, run_dir=workdir)
    if first.status != "done":
        return [first]
    return [first, run_stage(cfg, vl_dir, init_from=vision_dir, run_dir=workdir)]


__all__ = ["Evaluation", "finish_sweep", "fit_model_to_data", "grad_accum_steps", "initial_params", "pretrain",
           "pretrain_evaluation", "pretrain_stage", "report_learned", "run_stage", "trained_objectives",
           "vision_only_batch"]
