"""``jaxvl ablate``: the cross-modal input ablation of trained checkpoints on a prepared ablation dataset.

``ablate(cfg, workdir)`` runs ``jaxvl/configs/ablate.py``:

1. checkpoints -> (model config, parameters): a jaxvl run / stage / sweep member (its ``run.json`` gives
   the model config) or a VOLTA state dict (``jaxvl.convert.volta``); checkpoints whose model configs
   are equal form one group, stacked on a leading axis;
2. the ablation split (``AblationPhrases``; a source string is prepared first), its tokenizer and
   LabelMatch labels, checked against every group's model (vocabulary, feature size, classes, regions)
   before anything compiles;
3. per group ONE compiled sweep of every condition x threshold x checkpoint, with each condition's
   matched control at ``report_threshold`` (``controls``; ``jaxvl.ablation.controls``), the attention
   analyses from sown weights, and its report under ``<workdir>/<group>/``;
4. the combined tidy results, tables (``jaxvl.ablation.report``: the paper's layout, verdicts from
   ``jaxvl.ablation.verdicts``) and plots under ``<workdir>``; the console form of the tables is returned.

Each checkpoint is read on the region heads it trained (``Checkpoint.trained_heads``: a sweep member's own
weights, from its checkpoint meta): an MRC-KL member on MRC-KL, an MRC-XE member on MRC-XE. Losses read on
a head it never trained stay in ``results.csv`` (``trained_head`` False) and out of every table and plot.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ml_collections import ConfigDict

from jaxvl.models.volta.config import JAXVL_ONLY, VLConfig, config_from_volta_dict
from jaxvl.models.volta.model import VLBertForPreTraining, get_config

# A sweep member's checkpoint meta: member weight -> the visual heads it weighs (``jaxvl.pretrain.sweep``'s
# ``WEIGHT_HEADS``; tasks do not import each other).
MEMBER_WEIGHT_HEADS = {"mrc_kl_weight": ("0",), "mrc_xe_weight": ("3",), "mrfr_weight": ("1", "5")}
LANG4VIS_METRICS = ("mrc_kl", "mrc_xe", "mrc_xe_vg")


def metric_head(metric: str, heads: Collection[str]) -> str | None:
    """The visual head a lang4vis ``metric`` is read on for a model with ``heads`` (as
    ``jaxvl.ablation.conditions.lang4vis_losses`` reads it): MRC-KL on ``"0"``; MRC-XE on ``"3"``, else
    ``"0"``; MRC-XE-VG on ``"0"``, else ``"3"``. None when the model has neither."""
    order = {"mrc_kl": ("0",), "mrc_xe": ("3", "0"), "mrc_xe_vg": ("0", "3")}[metric]
    return next((h for h in order if h in heads), None)


@dataclasses.dataclass
class Checkpoint:
    """A checkpoint to ablate. ``trained_heads``: the visual heads (``VLConfig.visual_target_weights`` keys)
    its training weighed, a subset of the model's (``read_trained_heads``)."""

    name: str
    path: str
    model_cfg: VLConfig
    params: Any
    preset: str
    trained_heads: frozenset[str]

    def untrained_metrics(self) -> frozenset[str]:
        """The lang4vis metrics this checkpoint reads on a head it never trained (``metric_head``)."""
        heads = set(self.model_cfg.visual_targets)
        return frozenset(m for m in LANG4VIS_METRICS if metric_head(m, heads) not in (None, *self.trained_heads))


def _checkpoint_meta(directory: str) -> dict[str, Any]:
    """The JSON metadata saved with the latest checkpoint under ``directory`` ({} without one)."""
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(directory, item_handlers={"meta": ocp.JsonCheckpointHandler()})
    try:
        step = manager.latest_step()
        if step is None or not os.path.isdir(os.path.join(directory, str(step), "meta")):
            return {}
        return dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
    finally:
        manager.close()


def read_trained_heads(checkpoints_dir: str, model_cfg: VLConfig) -> frozenset[str]:
    """The visual heads a jaxvl checkpoint trained: a sweep member's, from the member weights in its
    checkpoint meta (its model holds every head of the sweep); otherwise every head of its model."""
    heads = frozenset(model_cfg.visual_targets)
    meta = _checkpoint_meta(checkpoints_dir)
    if not any(key in meta for key in MEMBER_WEIGHT_HEADS):
        return heads
    weighed = {h for key, keys in MEMBER_WEIGHT_HEADS.items() if meta.get(key, 0) > 0 for h in keys}
    return heads & weighed


def _run_json(path: str) -> str | None:
    for candidate in (os.path.join(path, "run.json"), os.path.join(path, "..", "..", "run.json")):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def model_config_from_run(run_json: str) -> tuple[VLConfig, str]:
    """The model config a jaxvl run saved (VOLTA keys + jaxvl-only fields) and its preset name."""
    with open(run_json, encoding="utf-8") as f:
        info = json.load(f)
    saved = dict(info["model_config"])
    extra = {k: saved.pop(k) for k in list(saved) if k in JAXVL_ONLY}
    cfg = config_from_volta_dict(saved, source=run_json).replace(**extra)
    return cfg, info["config"]["model"]["name"]


def load_checkpoint(path: str, name: str, cfg: ConfigDict) -> Checkpoint:
    """A jaxvl checkpoint (run, stage ``vl``, sweep member) or a VOLTA ``.bin`` (``model.name`` / ``volta_config``)."""
    from jaxvl.runtime.checkpoint import restore_params

    if os.path.isfile(path):
        from jaxvl.convert.volta import load_volta_checkpoint
        from jaxvl.models.volta.config import config_from_volta_json

        if cfg.model.volta_config:
            model_cfg, preset = config_from_volta_json(cfg.model.volta_config), cfg.model.name or "volta"
        elif cfg.model.name:
            model_cfg, preset = get_config(cfg.model.name), cfg.model.name
        else:
            raise ValueError(f"{path}: a VOLTA checkpoint needs model.name (a preset) or model.volta_config")
        if cfg.model.num_object_classes:
            model_cfg = model_cfg.replace(num_object_classes=cfg.model.num_object_classes)
        params = load_volta_checkpoint(path, model_cfg)
        return Checkpoint(name, path, model_cfg, params, preset, frozenset(model_cfg.visual_targets))
    if not os.path.isdir(os.path.join(path, "checkpoints")) and os.path.isdir(os.path.join(path, "vl")):
        path = os.path.join(path, "vl")  # a vision-first run: its V&L stage
    if not os.path.isdir(os.path.join(path, "checkpoints")):
        raise FileNotFoundError(f"{path}: neither a jaxvl workdir (no checkpoints/) nor a VOLTA checkpoint file")
    run_json = _run_json(path)
    if run_json is None:
        raise FileNotFoundError(f"{path}: no run.json beside its checkpoints (needed for the model config)")
    model_cfg, preset = model_config_from_run(run_json)
    params, _ = restore_params(os.path.join(path, "checkpoints"))
    return Checkpoint(name, path, model_cfg, params, preset, read_trained_heads(os.path.join(path, "checkpoints"),
                                                                                 model_cfg))


def checkpoint_names(cfg: ConfigDict, paths: Sequence[str]) -> list[str]:
    """The labels of ``paths``: ``cfg.names`` (comma-separated, one per path) or each path's last component;
    raises when the counts differ or a label repeats."""
    names = [n for n in str(cfg.names).split(",") if n] if cfg.names else []
    if names and len(names) != len(paths):
        raise ValueError(f"config names lists {len(names)} names for {len(paths)} checkpoints")
    if not names:
        names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"checkpoint names {names} repeat; give config.names")
    return names


def _floats(values: Any, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in (values if isinstance(values, (tuple, list)) else (values,)))
    except (TypeError, ValueError):
        raise ValueError(f"config {what}={values!r}: expected numbers") from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in str(text).split(",") if x.strip())


def check_fits(model_cfg: VLConfig, tokenizer: Any, info: Any, dataset: str, group: str) -> None:
    """The data must be what the model was trained on: vocabulary size, feature size, detector classes."""
    regions = (info.metadata or {}).get("regions", {})
    problems = []
    if tokenizer.vocab_size != model_cfg.vocab_size:
        problems.append(f"vocabulary: the data's tokenizer has {tokenizer.vocab_size} ids, the model "
                        f"{model_cfg.vocab_size}")
    if regions.get("feature_dim") not in (None, model_cfg.v_feature_size):
        problems.append(f"feature size: data {regions['feature_dim']}, model {model_cfg.v_feature_size}")
    if regions.get("num_classes") not in (None, model_cfg.num_object_classes):
        problems.append(f"detector classes: data {regions['num_classes']}, model {model_cfg.num_object_classes}")
    if problems:
        raise ValueError(f"checkpoint(s) {group} do not match the ablation data {dataset}: " + "; ".join(problems))


def label_matcher(cfg: ConfigDict, info: Any, dataset: str, num_classes: int = 1600) -> tuple[Any, str]:
    """The LabelMatch matcher of ``cfg.labelmatch`` (Visual Genome's ``objects_vocab.txt``, which must list
    ``num_classes`` classes, the models' detector classes; else the dataset's own detector label list), and a note
    for the report when LabelMatch is enabled but cannot be computed."""
    from jaxvl.ablation.labelmatch import LabelMatcher

    if not cfg.labelmatch.enabled:
        return None, ""
    if cfg.labelmatch.objects_vocab:
        from jaxvl.data.readers.visual_genome import load_objects_vocab

        return LabelMatcher.from_vocab(load_objects_vocab(cfg.labelmatch.objects_vocab, num_classes)), ""
    if (info.metadata or {}).get("label_list"):
        return LabelMatcher.from_label_list(info.metadata["label_list"]), ""
    return None, (f"LabelMatch not computed: {dataset} carries no detector label list and "
                  f"labelmatch.objects_vocab is not set (Visual Genome's objects_vocab.txt)")


def ablate(cfg: ConfigDict, workdir: str, expected: Mapping[tuple[str, str], str] | None = None,
           preface: str = "") -> str:
    """Runs the ablation of the module doc; returns what it prints (``jaxvl.ablation.report.console_tables``).

    ``expected``: (task, condition) -> the verdict the data predicts (``found`` / ``not found``), adding the
    verdict tables' ``expected`` and ``as expected?`` columns; ``preface``: text for the top of the combined
    ``table.md`` (the demo: what its world plants).
    """
    from tqdm import tqdm

    from jaxvl.ablation import AblationSpec, Quirks, attention_rows, run_ablation, stack_params
    from jaxvl.ablation.data import AblationPipelineConfig, ablation_dataset, scan_ablation
    from jaxvl.ablation.report import (
        console_tables,
        full_tables,
        plot_conditions,
        plot_thresholds,
        region_metrics,
        tidy_rows,
        write_report,
        write_rows,
    )
    from jaxvl.data.builders.ablation import AblationPhrases
    from jaxvl.data.grain import open_split, tokenizer_for
    from jaxvl.data.resolve import resolve_dataset
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.sharding import make_mesh

    # ------------------------------------------------------------------- spec and checkpoints
    thresholds = _floats(cfg.thresholds, "thresholds")
    if cfg.controls and float(cfg.report_threshold) not in thresholds:
        raise ValueError(f"config report_threshold={cfg.report_threshold} is not one of thresholds "
                         f"{list(thresholds)}; the matched controls run at it (or set controls=False)")
    spec_args = dict(vis4lang=_words(cfg.vis4lang), lang4vis=_words(cfg.lang4vis), thresholds=thresholds,
                     quirks=Quirks(**cfg.quirks.to_dict()), member_batch_size=cfg.member_batch_size,
                     model_batch_size=cfg.model_batch_size,
                     control_threshold=float(cfg.report_threshold) if cfg.controls else None)
    AblationSpec(0, **spec_args)  # bad condition names / thresholds fail here, before any loading
    paths = [p for p in str(cfg.checkpoints).split(",") if p]
    if not paths:
        raise ValueError("config checkpoints is empty: give one or more jaxvl workdirs or VOLTA .bin files")
    checkpoints = [load_checkpoint(p, n, cfg) for p, n in zip(paths, checkpoint_names(cfg, paths), strict=True)]
    groups: dict[VLConfig, list[Checkpoint]] = {}
    for ckpt in checkpoints:
        groups.setdefault(ckpt.model_cfg, []).append(ckpt)

    # ------------------------------------------------------------------------------- data
    os.makedirs(workdir, exist_ok=True)
    dataset = resolve_dataset(cfg.data.dataset, cfg.data.prepare_dir, workdir, AblationPhrases)
    source, info = open_split(dataset, cfg.data.split, skip_bad=cfg.data.skip_bad)
    if len(source) == 0:
        raise ValueError(f"{dataset}: split {cfg.data.split!r} is empty")
    tokenizer = tokenizer_for(info, cfg.data.vocab_file or None)
    matcher, labelmatch_note = label_matcher(cfg, info, dataset, checkpoints[0].model_cfg.num_object_classes)
    mesh = make_mesh(**cfg.mesh.to_dict())
    options = FAST_COMPILE if cfg.fast_compile else None

    # --------------------------------------------------------------------- one sweep per group
    all_rows, tables = [], []
    for model_cfg, members in groups.items():
        group = "+".join(c.name for c in members)
        check_fits(model_cfg, tokenizer, info, dataset, group)
        model = VLBertForPreTraining(model_cfg)
        pcfg = AblationPipelineConfig(batch_size=cfg.data.batch_size, max_seq_length=cfg.data.max_seq_length,
                                      add_global_imgfeat=model_cfg.add_global_imgfeat)
        index = scan_ablation(source, tokenizer, pcfg, label_matcher=matcher, skip_bad=cfg.data.skip_bad,
                              source_name=f"{dataset} split {cfg.data.split}")
        batches = ablation_dataset(source, tokenizer, pcfg, index)
        stacked = stack_params([c.params for c in members])
        names = [c.name for c in members]
        spec = AblationSpec(tokenizer.mask_id, **spec_args,
                            max_phrase_tokens=index.max_phrase_tokens(pcfg.max_seq_length))
        with tqdm(total=len(index), desc=f"ablate {group}", unit="ex", disable=not cfg.progress) as bar:
            result = run_ablation(model, stacked, batches, spec, index.mean_feature, mesh, model_names=names,
                                  progress=bar.update, compiler_options=options)
        attention = None
        if cfg.attention:
            sowing = VLBertForPreTraining(model_cfg, sow_weights=True)
            attention = attention_rows(sowing, stacked, ablation_dataset(source, tokenizer, pcfg, index), mesh,
                                       cfg.report_threshold, names, compiler_options=options)
        out = os.path.join(workdir, group)
        untrained = {c.name: c.untrained_metrics() for c in members}
        write_report(result, out, cfg.report_threshold, cfg.n_boot, cfg.seed, phrases=index.phrases,
                     image_ids=index.image_ids, attention=attention, floor=cfg.verdict_floor, untrained=untrained)
        rows = tidy_rows(result, cfg.n_boot, cfg.seed, floor=cfg.verdict_floor, untrained=untrained)
        for row in rows:
            row["preset"] = members[0].preset
        all_rows += rows
        with open(os.path.join(out, "table.md"), encoding="utf-8") as f:
            tables.append(f"### {group} ({members[0].preset})\n\n{f.read()}")
        if index.truncated or index.skipped:
            tables.append(f"{index.truncated} phrases truncated by max_seq_length, {len(index.skipped)} "
                          f"examples skipped")

    # ------------------------------------------------------------------------ combined report
    write_rows(all_rows, os.path.join(workdir, "results.csv"))
    write_rows(all_rows, os.path.join(workdir, "results.jsonl"))
    # Each model is read on the region heads it trained: an MRC-KL member on MRC-KL, an MRC-XE member on MRC-XE
    # (a sweep's members carry both heads, one of them untrained; its rows are in results.csv only).
    metrics = region_metrics(all_rows) or ["mrc_kl"]
    plot_conditions(all_rows, os.path.join(workdir, "conditions.png"), cfg.report_threshold, metrics)
    plot_thresholds(all_rows, os.path.join(workdir, "thresholds.png"), metrics)
    full = full_tables(all_rows, cfg.report_threshold, cfg.verdict_floor, expected)
    with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(p.rstrip("\n") for p in (preface, full, *tables, labelmatch_note) if p) + "\n")
    console = console_tables(all_rows, cfg.report_threshold, cfg.verdict_floor, expected)
    return f"{console}\n\n{labelmatch_note}" if labelmatch_note else console


__all__ = ["Checkpoint", "ablate", "check_fits", "label_matcher", "load_checkpoint", "model_config_from_run"]

