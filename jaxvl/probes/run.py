"""``jaxvl probe emap`` / ``jaxvl probe mmshap``: EMAP / MM-SHAP of trained checkpoints' ITM heads on N items of a
pretraining split (``probe_mmshap``: steps 1-3 below, then ``jaxvl.probes.mmshap`` per checkpoint).

``probe_emap(cfg, workdir)`` runs ``jaxvl/configs/probes.py``:

1. checkpoints -> (model config, parameters), as ``jaxvl ablate`` reads them (``jaxvl.ablation.run.load_checkpoint``:
   a jaxvl run / stage / sweep member, or a VOLTA ``.bin``); a model without an ITM head is refused;
2. per checkpoint its items: ``data.split`` of ``data.dataset`` (empty: the dataset the checkpoint was pretrained
   on, its ``run.json``), ``n_items`` records of distinct images (``select_items``), each caption with its own image's
   regions through the pretraining transform without any masking (``jaxvl.data.grain.PretrainTransform``), every
   item keeping its own text and region padding; vocabulary and feature size checked against the model;
3. every bad input (no checkpoint, no ITM head, an empty split, fewer than 2 items, blocks that do not divide
   over the mesh) is a ``ValueError`` / ``FileNotFoundError`` naming the key or file, before anything compiles;
4. per checkpoint ``run_emap`` (one ``PairProgram`` per model config, reused by checkpoints that share it), then
   ``<workdir>/<name>/emap.json`` (``EmapResult.as_dict`` plus where the items came from and the time),
   ``table.md``, ``emap.png`` (``jaxvl.probes.plots.plot_emap``: full model vs EMAP) and, with ``per_item``, the
   tidy ``emap.csv`` (``emap_rows``: item, predictor, class, logit); all tables in ``<workdir>/table.md``, and
   with several checkpoints their bars side by side in ``<workdir>/emap.png``. The tables are returned.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from jaxvl.probes.pairs import IMAGE_FIELDS, TEXT_FIELDS, PairItems

DEFAULT_MAX_SEQ_LENGTH = 38  # VOLTA's, for checkpoints without a run.json


def write_text(path: str, text: str) -> None:
    """Writes ``text`` and a newline to ``path`` (UTF-8)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def _run_info(path: str) -> tuple[dict[str, Any], str]:
    """A jaxvl checkpoint's ``run.json`` (beside it, or the sweep's two levels up) and its run directory;
    ({}, "") for a VOLTA file or a run without one."""
    if os.path.isfile(path):
        return {}, ""
    for run_dir in (path, os.path.join(path, "..", "..")):
        run_json = os.path.join(run_dir, "run.json")
        if os.path.isfile(run_json):
            with open(run_json, encoding="utf-8") as f:
                return json.load(f), os.path.normpath(run_dir)
    return {}, ""



def _data_source(cfg: ConfigDict, info: dict[str, Any], run_dir: str, ckpt_path: str, workdir: str) -> str:
    """The version directory of the checkpoint's probe dataset (module doc, step 2)."""
    from jaxvl.data.builders.pretrain import PretrainPairs
    from jaxvl.data.imagestore.layout import is_image_store
    from jaxvl.data.resolve import resolve_dataset

    if cfg.data.dataset:
        return resolve_dataset(cfg.data.dataset, cfg.data.prepare_dir, workdir, PretrainPairs)
    if not info:
        raise ValueError(f"config data.dataset is empty and checkpoint {ckpt_path} has no run.json to take its "
                         "pretraining dataset from: give --config.data.dataset=DIR (a dataset prepared by `jaxvl "
                         "prepare`) or a source string")
    stored = info.get("dataset") or ""
    if stored and (os.path.isfile(os.path.join(stored, "dataset_info.json")) or is_image_store(stored)):
        return stored
    data = info.get("config", {}).get("data", {})
    return resolve_dataset(data.get("dataset", ""), data.get("prepare_dir", ""), run_dir, PretrainPairs)


def select_items(source: Sequence[Any], n: int, seed: int = -1,
                 keep: Callable[[str], bool] | None = None) -> np.ndarray:
    """The record indices of up to ``n`` items, one per image (the first of its captions met): a second caption of
    an item's image would count as a mismatched pair. Records in split order (``seed`` < 0) or in the order of a
    permutation drawn with ``seed``; only records whose caption ``keep`` accepts (all without it); the indices
    come back sorted."""
    from jaxvl.data.builders.common import as_str

    order = range(len(source)) if seed < 0 else np.random.default_rng(seed).permutation(len(source))
    chosen: dict[str, int] = {}
    for i in order:
        record = source[int(i)]
        image = as_str(record["image_id"])
        if image not in chosen and (keep is None or keep(as_str(record["caption"]))):
            chosen[image] = int(i)
            if len(chosen) == n:
                break
    return np.sort(np.fromiter(chosen.values(), np.int64, len(chosen)))


def build_items(source: Sequence[Any], tokenizer: Any, indices: Sequence[int], max_seq_length: int,
                add_global_imgfeat: str | None) -> tuple[PairItems, dict[str, Any]]:
    """The items of records ``indices`` of ``source``: each caption with its own image's regions, unmasked
    (``PretrainTransform``), stacked with every item's own padding; and facts for the report (image ids, captions
    truncated by ``max_seq_length``, captions repeated among the items)."""
    from jaxvl.data.builders.common import as_str
    from jaxvl.data.grain import PretrainTransform

    transform = PretrainTransform(tokenizer, max_seq_length, None, add_global_imgfeat)
    rows, image_ids, captions = [], [], []
    for i in indices:
        record = source[int(i)]
        rows.append(transform.map(record))
        image_ids.append(as_str(record["image_id"]))
        captions.append(as_str(record["caption"]))
    truncated = sum(len(tokenizer.tokenize(c)) > max_seq_length - 2 for c in captions)
    batch = {k: np.stack([r[k] for r in rows]) for k in (*TEXT_FIELDS, *IMAGE_FIELDS)}
    facts = dict(item_index=[int(i) for i in indices], image_ids=image_ids, truncated_captions=int(truncated),
                 repeated_captions=len(captions) - len(set(captions)),
                 text_tokens_mean=float(batch["text_mask"].sum(1).mean()),
                 regions_mean=float(batch["region_mask"].sum(1).mean()))
    return PairItems.from_batch(batch), facts


def _check_fits(model_cfg: Any, tokenizer: Any, items: PairItems, dataset: str, name: str) -> None:
    problems = []
    if tokenizer.vocab_size != model_cfg.vocab_size:
        problems.append(f"vocabulary: the data's tokenizer has {tokenizer.vocab_size} ids, the model "
                        f"{model_cfg.vocab_size} (set data.vocab_file)")
    if items.features.shape[-1] != model_cfg.v_feature_size:
        problems.append(f"feature size: data {items.features.shape[-1]}, model {model_cfg.v_feature_size}")
    if items.locations.shape[-1] != model_cfg.num_locs:
        problems.append(f"box locations: data {items.locations.shape[-1]}, model {model_cfg.num_locs}")
    if problems:
        raise ValueError(f"checkpoint {name} does not match the probe data {dataset}: " + "; ".join(problems))


def positive_int(cfg: ConfigDict, key: str, least: int = 1) -> int:
    """``cfg[key]``, checked to be an integer >= ``least`` (else a ValueError naming the key)."""
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"config {key}={value!r}: expected an integer >= {least}")
    return value


def load_jobs(cfg: ConfigDict, workdir: str, probe: str, least: int, keep: Callable[[str], bool] | None = None,
              wanted: str = "") -> list[tuple[Any, PairItems, dict, Any, str]]:
    """Steps 1-3 of the module doc for ``probe`` ("EMAP", "MM-SHAP", ...): per checkpoint (checkpoint, items, facts,
    tokenizer, ITM note); ``least`` the fewest items of distinct images the probe needs; ``keep``: only captions it
    accepts become items (``wanted`` says which, for the error when too few are found)."""
    from jaxvl.ablation.run import checkpoint_names, load_checkpoint
    from jaxvl.data.grain import open_split, tokenizer_for

    n_wanted = positive_int(cfg, "n_items", least)
    paths = [p for p in str(cfg.checkpoints).split(",") if p]
    if not paths:
        raise ValueError("config checkpoints is empty: give one or more jaxvl workdirs or VOLTA .bin files")
    names = checkpoint_names(cfg, paths)
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"config checkpoints: {path}: no such jaxvl workdir or VOLTA checkpoint file")
    checkpoints = [load_checkpoint(p, n, cfg) for p, n in zip(paths, names, strict=True)]
    for ckpt in checkpoints:
        if ckpt.model_cfg.fusion_method == "none" or "itm" not in ckpt.params.get("params", ckpt.params):
            raise ValueError(f"checkpoint {ckpt.path}: its model has no ITM head (fusion_method "
                             f"{ckpt.model_cfg.fusion_method!r}); {probe} scores the ITM logits")

    # ------------------------------------------------------------------------ items, per checkpoint
    os.makedirs(workdir, exist_ok=True)
    jobs, item_cache = [], {}
    for ckpt in checkpoints:
        info, run_dir = _run_info(ckpt.path)
        run_data = info.get("config", {}).get("data", {})
        dataset = _data_source(cfg, info, run_dir, ckpt.path, workdir)
        vocab_file = cfg.data.vocab_file or ("" if cfg.data.dataset else run_data.get("vocab_file", ""))
        max_len = int(cfg.data.max_seq_length or run_data.get("max_seq_length") or DEFAULT_MAX_SEQ_LENGTH)
        key = (dataset, vocab_file, max_len, ckpt.model_cfg.add_global_imgfeat)
        if key not in item_cache:
            source, ds_info = open_split(dataset, cfg.data.split)
            if len(source) == 0:
                raise ValueError(f"{dataset}: split {cfg.data.split!r} is empty (config data.split)")
            indices = select_items(source, n_wanted, cfg.seed, keep)
            if len(indices) < least:
                which = f" with {wanted}" if wanted else ""
                raise ValueError(f"{dataset}: split {cfg.data.split!r} holds {len(source)} record(s), captions{which} "
                                 f"of {len(indices)} image(s); {probe} needs items of >= {least} distinct images")
            tokenizer = tokenizer_for(ds_info, vocab_file or None)
            items, facts = build_items(source, tokenizer, indices, max_len, ckpt.model_cfg.add_global_imgfeat)
            facts.update(dataset=dataset, split=cfg.data.split, split_size=len(source), max_seq_length=max_len)
            item_cache[key] = (items, facts, tokenizer)
        items, facts, tokenizer = item_cache[key]
        _check_fits(ckpt.model_cfg, tokenizer, items, dataset, ckpt.name)
        objective = info.get("config", {}).get("objective", {}).get("objective")
        itm_note = ("its ITM head was never trained (pretrained with objective 2: no ITM negatives), so its ITM "
                    "logits are those of a random head" if objective == 2 else "")
        jobs.append((ckpt, items, facts, tokenizer, itm_note))
    return jobs


def probe_emap(cfg: ConfigDict, workdir: str) -> str:
    """Runs EMAP as the module doc says; returns the tables (also in ``<workdir>/table.md``)."""
    from tqdm import tqdm

    from jaxvl.ablation.report import write_rows
    from jaxvl.models.volta.model import VLBertForPreTraining
    from jaxvl.probes.emap import EmapResult
    from jaxvl.probes.pairs import PairProgram
    from jaxvl.probes.plots import plot_emap
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.sharding import make_mesh

    # ------------------------------------------------------------------- arguments and checkpoints
    if cfg.probe != "emap":
        raise ValueError(f"config probe={cfg.probe!r}: `jaxvl probe emap` runs probe 'emap'")
    text_block, image_block = positive_int(cfg, "text_block"), positive_int(cfg, "image_block")
    jobs = [(c, i, f, note) for c, i, f, _, note in load_jobs(cfg, workdir, "EMAP", 2)]

    # -------------------------------------------------- programs (block / mesh errors before any compile)
    mesh = make_mesh(**cfg.mesh.to_dict())
    options = FAST_COMPILE if cfg.fast_compile else None
    programs: dict[Any, PairProgram] = {}
    for ckpt, *_ in jobs:
        if ckpt.model_cfg not in programs:
            model = VLBertForPreTraining(ckpt.model_cfg)
            cache = bool(cfg.cache_prefix) and ckpt.model_cfg.unimodal_prefix > 0
            programs[ckpt.model_cfg] = PairProgram(model, mesh, text_block, image_block, cache_prefix=cache,
                                                   compiler_options=options)

    # ------------------------------------------------------------------------------- run, report
    tables, records = [], []
    for ckpt, items, facts, itm_note in jobs:
        program = programs[ckpt.model_cfg]
        start = time.perf_counter()
        with tqdm(total=items.n ** 2, desc=f"emap {ckpt.name}", unit="pair", disable=not cfg.progress) as bar:
            sums = program(ckpt.params, items, bar.update)
        seconds = time.perf_counter() - start
        result = EmapResult.from_sums(sums, ckpt.name, "ITM logits")
        out = os.path.join(workdir, ckpt.name)
        os.makedirs(out, exist_ok=True)
        prefix = "the unimodal prefix once per item" if program.cache_prefix else "the whole model per pair"
        order = "in split order" if cfg.seed < 0 else f"in an order drawn with seed {cfg.seed}"
        where = (f"Checkpoint {ckpt.path} ({ckpt.preset}). Items: {items.n} records of distinct images ({order}) of "
                 f"the {facts['split_size']} of split {facts['split']!r} of {facts['dataset']}; "
                 f"{facts['repeated_captions']} repeated captions, {facts['truncated_captions']} truncated to "
                 f"{facts['max_seq_length']} tokens; {facts['text_tokens_mean']:.1f} text tokens and "
                 f"{facts['regions_mean']:.1f} region rows per item on average. {items.n ** 2} pairs in "
                 f"{seconds:.1f} s (compilation included; {program.text_block} x {program.image_block} pairs per "
                 f"call, {prefix}).")
        table = "\n\n".join(p for p in (result.table(), where, f"Note: {itm_note}." if itm_note else "") if p)
        record = result.as_dict(bool(cfg.per_item))
        record.update(checkpoint=ckpt.path, preset=ckpt.preset, seconds=round(seconds, 3),
                      pairs_per_second=items.n ** 2 / seconds if seconds > 0 else math.nan,
                      text_block=program.text_block, image_block=program.image_block,
                      cache_prefix=program.cache_prefix, itm_trained=not itm_note, **facts)
        with open(os.path.join(out, "emap.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(record, indent=1) + "\n")
        if cfg.per_item:
            write_rows(emap_rows(record), os.path.join(out, "emap.csv"),
                       ("item", "image_id", "label", "predictor", "cls", "logit"))
        write_text(os.path.join(out, "table.md"), table)
        plot_emap(record, os.path.join(out, "emap.png"))
        tables.append(f"### {ckpt.name}\n\n{table}")
        records.append(record)
    if len(records) > 1:
        plot_emap(records, os.path.join(workdir, "emap.png"))
    combined = "\n\n".join(tables)
    write_text(os.path.join(workdir, "table.md"), combined)
    return combined


def emap_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows of an ``emap.json`` record with per-item logits: one per (item, predictor, class), the item's
    record index in the split and image id, its label (``match`` on the N x N design's diagonal; the labelled
    design's own label), the predictor (``full`` model or its ``emap`` projection) and the logit."""
    labelled = record.get("design") == "labelled"
    full = record.get("item_logits" if labelled else "matched_logits")
    if full is None:
        return []
    emap = record["item_emap_logits" if labelled else "matched_emap_logits"]
    labels = record.get("labels") or [0] * len(full)
    rows = []
    for i, (item, image) in enumerate(zip(record["item_index"], record["image_ids"], strict=True)):
        for predictor, logits in (("full", full[i]), ("emap", emap[i])):
            rows += [dict(item=item, image_id=image, label="match" if labels[i] == 0 else "mismatch",
                          predictor=predictor, cls=c, logit=v) for c, v in enumerate(logits)]
    return rows


def mmshap_rows(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Tidy rows of an ``mmshap.json`` record: one per (item, measure): T-SHAP and V-SHAP (fractions of the
    absolute Shapley mass on the text / the regions), f(all) and f(none) (the ITM match score of the whole input
    and of the empty coalition, logits), with the item's record index in the split and image id."""
    rows = []
    for example, item, image in zip(record.get("examples", []), record["item_index"], record["image_ids"],
                                    strict=False):
        t = example["t_shap"]
        for measure, value in (("t_shap", t), ("v_shap", None if t is None else 1.0 - t), ("f_all", example["full"]),
                               ("f_none", example["empty"])):
            rows.append(dict(item=item, image_id=image, measure=measure, value=value))
    return rows


def mean_region_feature(source: Sequence[Any], n_images: int) -> np.ndarray:
    """float32 [D]: the dataset-mean region feature (the ablation's convention, ``jaxvl.ablation.data``): the mean
    over up to ``n_images`` distinct images (split order) of each image's mean real region feature."""
    from jaxvl.data.builders.common import decode_regions

    total, count = None, 0
    for i in select_items(source, n_images):
        feats = decode_regions(source[int(i)]).features
        if len(feats):
            mean = np.asarray(feats, np.float64).mean(0)
            total, count = (mean if total is None else total + mean), count + 1
    if not count:
        raise ValueError("no image of the split has a detector region: removal 'mean' needs region features")
    return (total / count).astype(np.float32)


def probe_mmshap(cfg: ConfigDict, workdir: str) -> str:
    """``jaxvl probe mmshap`` (``jaxvl/configs/probes.py``, ``jaxvl.probes.mmshap``): checkpoints and items as for
    EMAP (steps 1-3), then per checkpoint the MM-SHAP of every item, ``<workdir>/<name>/mmshap.json``, ``table.md``
    and ``mmshap.png`` (``jaxvl.probes.plots.plot_mmshap``: the per-item T-SHAP histogram), all tables in
    ``<workdir>/table.md``; returns the tables."""
    from tqdm import tqdm

    from jaxvl.ablation.report import write_rows
    from jaxvl.data.grain import open_split
    from jaxvl.models.volta.model import VLBertForPreTraining
    from jaxvl.probes.mmshap import REMOVALS, MMShapProgram
    from jaxvl.probes.plots import plot_mmshap
    from jaxvl.runtime.compile import FAST_COMPILE
    from jaxvl.runtime.sharding import make_mesh

    if cfg.probe != "mmshap":
        raise ValueError(f"config probe={cfg.probe!r}: `jaxvl probe mmshap` runs probe 'mmshap' "
                         "(--config probes:mmshap)")
    permutations, chunk = positive_int(cfg, "permutations"), positive_int(cfg, "chunk")
    items_per_call = positive_int(cfg, "items_per_call")
    if cfg.removal not in REMOVALS:
        raise ValueError(f"config removal={cfg.removal!r}: expected one of {', '.join(REMOVALS)}")
    mean_items = positive_int(cfg, "mean_items")
    jobs = load_jobs(cfg, workdir, "MM-SHAP", 1)
    # ------------------------------------------------ programs (chunk / mesh errors before any compile)
    mesh = make_mesh(**cfg.mesh.to_dict())
    options = FAST_COMPILE if cfg.fast_compile else None
    means: dict[tuple[str, str], np.ndarray] = {}
    programs: dict[Any, MMShapProgram] = {}
    for ckpt, _, facts, tokenizer, _ in jobs:
        where = (facts["dataset"], facts["split"])
        if cfg.removal == "mean" and where not in means:
            means[where] = mean_region_feature(open_split(*where)[0], mean_items)
        key = (ckpt.model_cfg, tokenizer.mask_id, where)
        if key not in programs:
            programs[key] = MMShapProgram(VLBertForPreTraining(ckpt.model_cfg), tokenizer.mask_id, cfg.removal,
                                          means.get(where), chunk=chunk, mesh=mesh, items_per_call=items_per_call,
                                          compiler_options=options)
    tables = []
    for ckpt, items, facts, tokenizer, itm_note in jobs:
        key = (ckpt.model_cfg, tokenizer.mask_id, (facts["dataset"], facts["split"]))
        start = time.perf_counter()
        with tqdm(total=items.n, desc=f"mmshap {ckpt.name}", unit="item", disable=not cfg.progress) as bar:
            result = programs[key](ckpt.params, items, permutations, max(cfg.seed, 0), bar.update)
        seconds = time.perf_counter() - start
        out = os.path.join(workdir, ckpt.name)
        os.makedirs(out, exist_ok=True)
        mean_note = f", the mean feature over {mean_items} images at most" if cfg.removal == "mean" else ""
        about = (f"Checkpoint {ckpt.path} ({ckpt.preset}). Items: {items.n} captions with their own images (distinct "
                 f"images) of split {facts['split']!r} of {facts['dataset']}{mean_note}; [MASK] id "
                 f"{tokenizer.mask_id}. {items.n * result.coalitions} coalitions in {seconds:.1f} s (compilation "
                 f"included; {chunk} per model batch).")
        table = "\n\n".join(p for p in (result.table(ckpt.name), about, f"Note: {itm_note}." if itm_note else "") if p)
        saved = result.save_json(os.path.join(out, "mmshap.json"), model=ckpt.name, checkpoint=ckpt.path,
                                 preset=ckpt.preset, mask_id=tokenizer.mask_id, seconds=round(seconds, 3),
                                 coalitions_per_second=items.n * result.coalitions / seconds if seconds > 0 else
                                 math.nan, chunk=chunk, itm_trained=not itm_note, **facts)
        with open(saved, encoding="utf-8") as f:
            saved_record = json.load(f)
        plot_mmshap(saved_record, os.path.join(out, "mmshap.png"))  # the plot shows what the record holds
        write_rows(mmshap_rows(saved_record), os.path.join(out, "mmshap.csv"), ("item", "image_id", "measure", "value"))
        write_text(os.path.join(out, "table.md"), table)
        tables.append(f"### {ckpt.name}\n\n{table}")
    combined = "\n\n".join(tables)
    write_text(os.path.join(workdir, "table.md"), combined)
    return combined


__all__ = ["build_items", "emap_rows", "load_jobs", "mean_region_feature", "mmshap_rows", "positive_int", "probe_emap",
           "probe_mmshap", "select_items", "write_text"]
