"""``jaxvl prepare``: write a data source as TFDS ArrayRecord datasets for the Grain pipelines.

    jaxvl prepare --source synthetic --out data/
    jaxvl prepare --source synthetic:num_images=1024,vision_to_language=0.5,val_images=64 --out data/
    jaxvl prepare --source volta-cc:data/conceptual_captions,num_regions=36 --out data/
    jaxvl prepare --source tsv:feats.tsv,captions=caption_train.json --out data/ --skip-bad
    jaxvl prepare --source flickr30k-entities:flickr30k_entities,features=flickr30k_feat.lmdb --out data/
    jaxvl prepare --source synthetic-captions:num_images=1024,grounding=0.5 --out data/
    jaxvl prepare --source coco-karpathy:dataset_coco.json,features=cocobu_att --out data/

Sources (``jaxvl.data.sources``, which documents each one and the region options in full):

- ``synthetic[:key=value,...]``: the embedded synthetic world (``jaxvl.data.synthetic``). Keys are
  ``WorldConfig`` fields (``num_images`` train images, ``num_regions``, ``feature_dim``,
  ``num_classes``, ``vision_to_language``, ``ambiguous_fraction``, ``seed``, ...; tuples as
  ``image_size=240x320``), plus ``val_images`` (held-out images, default 16) and ``name`` (the config
  name; default: the non-default knobs). Writes ``jaxvl_synthetic_pretrain`` (one example per
  image-caption pair) and ``jaxvl_synthetic_ablation`` (one example per grounded phrase), each with
  ``train`` and ``val`` splits, under ``<out>/<dataset>/<config>/1.0.0``.
- ``volta-cc:LMDB_DIR_OR_FILE[,val=LMDB]``: VOLTA's Conceptual Captions LMDBs -> ``jaxvl_pretrain_pairs``
  (``train``, and ``val`` from ``val=`` or a ``validation_feat_all.lmdb`` next to the train LMDB); captions
  are the ones stored in the LMDB records (VOLTA's caption json files are not read).
- ``tsv:FEATURES.tsv,captions=CAPTIONS.json[,val=VAL.tsv,val_captions=VAL.json]``: a bottom-up-attention
  TSV and VOLTA's caption json -> ``jaxvl_pretrain_pairs``.
- ``flickr30k-entities:ROOT,features=FEATURE_LMDB|TSV|NPZ_DIR[,split=val]``: Flickr30k Entities phrases
  with their images' regions -> ``jaxvl_ablation_phrases`` (split named after ``split``).
- ``synthetic-captions[:key=value,...]``: the synthetic captioning world (``jaxvl.data.synthetic.captions``:
  5 captions per image generated from its objects and their spatial relations) ->
  ``jaxvl_synthetic_captions`` (``train``, ``val``, ``test``); knobs as for ``synthetic`` plus the
  caption knobs (``grounding``, ``relation_prob``, ...), ``test_images`` and ``max_length``.
- ``coco-karpathy:dataset_coco.json,features=FEATURE_LMDB|TSV|NPZ_DIR[,fold_restval=1|0,...]``:
  Karpathy's COCO captions (one example per image, every caption encoded with a vocabulary built from
  the training split, ORT's threshold and length) with their regions -> ``jaxvl_caption_images``.

The file sources take ``name=``, ``num_regions=`` (R; default the most boxes among the first records,
VOLTA uses 36), ``feature_dim=``, ``num_classes=K|none`` and ``probe=N|all``; the region sizes are read
off the first records. A bad record stops the run (exit status 1, the message names the file and the
record) unless ``--skip-bad``, which skips and counts bad records and prints the counts.

An existing dataset is reused unless ``--overwrite``. Preparing needs no TensorFlow, but for one case: TFDS's
in-process writer spills a split of more than 1,000 MiB (about 1,990 pairs at VOLTA's ctrl shapes) to disk
through ``tf.io.gfile``, and stops with one line without TensorFlow; the parallel build below (even ``--workers
1``) has Beam shuffle instead, and ``layout=images`` does not use that writer.

In parallel (``synthetic``, ``volta-cc`` and ``tsv``; needs ``apache-beam``, the ``beam`` extra): the splits are
cut into shards that Beam workers read by key (``jaxvl.data.prepare_shards``) and TFDS writes the same records as the
single-process build (``synthetic`` and ``volta-cc`` pairs keep its keys, so even its order; a TSV's are keyed
by line)::

    jaxvl prepare --source volta-cc:data/conceptual_captions --out data/ --workers 8     # 8 local processes
    jaxvl prepare --source volta-cc:/shared/cc --out /shared/data/ --beam-runner FlinkRunner \
        --beam-option flink_master=HOST:8081 --beam-option parallelism=32 --beam-option sdk_container_image=IMAGE

``--workers N`` runs Beam's DirectRunner with N processes; ``--beam-runner`` names any Beam runner
(DataflowRunner, FlinkRunner, SparkRunner, ...), configured by its own pipeline options given as
``--beam-option key=value`` (BENCHMARKS.md lists them for Dataflow, Flink and Spark). The runner's workers must
have jaxvl installed and reach ``--out`` and the source files (an LMDB needs a local or mounted file). A bad
record fails the pipeline with the same one-line error; ``--skip-bad`` counts skips as Beam counters, reported in
the summary and saved as ``skipped`` in the metadata.

With ``layout=images`` each worker writes its shards' files itself (``jaxvl.data.builders.images_shards``: one
pair of tables per shard of ``--shard-size`` pairs, default 1,024; nothing is grouped in the runner), so
``--out`` must be a filesystem every worker writes to (local or mounted, not ``gs://``); the pairs read back
exactly as the single-process store's, in the same order::

    jaxvl prepare --source volta-cc:data/conceptual_captions,layout=images,features_dtype=float16 --out data/ \
        --workers 8
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any

from jaxvl.data.builders.beam import DIRECT_RUNNER, bad_record_in
from jaxvl.data.builders.scratch import own_temp_dir
from jaxvl.data.imagestore.layout import is_file
from jaxvl.data.sources import SOURCES, SourceError, build_source, parse_source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--source``, ``--out``, ``--overwrite``, ``--skip-bad`` and ``--quiet``, and lists the sources below."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "sources:\n" + "\n".join(f"  {entry.usage}\n      {entry.doc}" for entry in SOURCES.values())
    parser.epilog += ("\n  file sources also take name=, num_regions=R (VOLTA: 36), feature_dim=D, num_classes=K|none,"
                      "\n  probe=N|all; see jaxvl.data.sources")
    parser.add_argument("--source", default="synthetic",
                        help="what to prepare, NAME[:PATH][,key=value,...] (default synthetic; sources below)")
    parser.add_argument("--out", required=True, help="data directory the datasets are written under (TFDS data_dir)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild datasets that already exist")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad records (and examples whose image has no features), count them in the summary")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parallel = parser.add_argument_group("in parallel (Apache Beam; sources synthetic, volta-cc, tsv)")
    parallel.add_argument("--workers", type=int, metavar="N",
                          help="prepare with N local worker processes (Beam's DirectRunner, multi_processing)")
    parallel.add_argument("--beam-runner", metavar="RUNNER",
                          help="prepare as a Beam pipeline on RUNNER (DirectRunner, DataflowRunner, FlinkRunner, "
                               "SparkRunner, ...); default DirectRunner with --workers")
    parallel.add_argument("--beam-option", action="append", default=[], metavar="KEY=VALUE",
                          help="a Beam pipeline option for the runner, repeatable (e.g. project=P, region=R, "
                               "temp_location=gs://B/tmp for Dataflow; flink_master=H:P; spark_master_url=URL)")
    parallel.add_argument("--shard-size", type=int, metavar="N",
                          help="examples per shard (a worker's unit of work; with layout=images also one pair of "
                               "files per shard): default 64 for the pair layout, 1024 for layout=images")


def run(args: argparse.Namespace) -> int:
    """Prepares every dataset of ``args.source`` under ``args.out`` and prints where each went.

    Returns 0. A bad source string or unusable input files raise ``SourceError`` / ``ValueError`` /
    ``OSError``, a bad record without ``--skip-bad`` ``BadRecord`` (the message names the file and the
    record); ``jaxvl prepare`` prints them as one ``jaxvl: error:`` line and exits 2. The summary gives
    each dataset's splits, region sizes and, with ``--skip-bad``, what was skipped.
    """
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    from jaxvl.data.records import BadRecord

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns about every custom config
    out = args.out if "://" in args.out else os.path.abspath(args.out)  # gs://... for a cluster runner's workers
    if "://" in out:
        is_file(out)  # ValueError naming the URL when no file-system backend reads its scheme here (gcsfs, ...)
    skip_bad = getattr(args, "skip_bad", False)
    hint = "" if skip_bad else " (--skip-bad skips and counts bad records)"
    try:
        prepared = build_source(args.source, out, skip_bad=skip_bad)  # reads the first records for the regions
    except BadRecord as e:
        raise BadRecord(f"{e}{hint}") from e
    builders = prepared.builders
    mode = tfds.GenerateMode.FORCE_REDOWNLOAD if args.overwrite else tfds.GenerateMode.REUSE_DATASET_IF_EXISTS
    config = tfds.download.DownloadConfig(download_mode=mode, try_download_gcs=False,
                                          **parallel_config(args, builders, skip_bad))
    if args.quiet:
        tfds.disable_progress_bar()
    start = time.perf_counter()
    beam_scratch = own_temp_dir(bool(config.beam_runner), remove_at_exit=True)  # TFDS's and Beam's temp dirs
    with beam_scratch, tqdm(builders, desc="datasets", unit="dataset", disable=args.quiet) as bar:
        for builder in bar:
            bar.set_postfix_str(builder.name)
            try:
                builder.download_and_prepare(download_config=config, download_dir=os.path.join(out, "downloads"))
            except ModuleNotFoundError as e:
                if e.name != "tensorflow":
                    raise
                raise ValueError(  # one line from `jaxvl prepare`
                    f"{builder.name}/{builder.builder_config.name}: a split above 1,000 MiB is spilled to disk by "
                    "TFDS's in-process writer through TensorFlow, which is not installed: use --workers 1 (Beam, the "
                    "beam extra), the source option layout=images (one record per image, no TFDS writer), or "
                    "`pip install tensorflow`") from e
            except Exception as e:  # a Beam runner reports a worker's BadRecord as its own error
                bad = bad_record_in(e)
                if bad is None:
                    raise
                raise BadRecord(f"{builder.name}/{builder.builder_config.name}: {bad}{hint}") from e
    how = f" on {config.beam_runner}" if config.beam_runner else ""
    print(f"prepared {len(builders)} datasets from {args.source!r}{how} in {time.perf_counter() - start:.1f} s:")
    for builder in builders:
        splits = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
        regions = builder.info.metadata.get("regions", {})
        print(f"  {builder.data_dir}\n    {splits} examples; regions R={regions.get('num_regions')} "
              f"D={regions.get('feature_dim')} K={regions.get('num_classes')}")
        # the counts live in the dataset's metadata: this run's, or those of the run that built a reused dataset
        for split, stats in (builder.info.metadata.get("caption_stats") or {}).items():
            print(f"    {split}: {stats['captions']} captions (per image: {stats['captions_per_image']}), "
                  f"{stats['truncated_captions']} truncated, {stats['unk_tokens']} of {stats['tokens']} tokens UNK")
        skipped = builder.info.metadata.get("skipped") or {}
        if skip_bad or skipped:
            print(f"    skipped {sum(skipped.values())} (--skip-bad){':' if skipped else ''}")
            for what, n in skipped.items():
                print(f"      {n} {what}")
    return 0


def parallel_config(args: argparse.Namespace, builders: list[Any], skip_bad: bool) -> dict[str, Any]:
    """The ``DownloadConfig`` fields of a parallel build (``beam_runner``, ``beam_options``), each builder sharded;
    none without ``--workers`` / ``--beam-runner`` / ``--beam-option``. ``ValueError`` for unusable flags (a
    ``SourceError`` naming the ``beam`` extra without Apache Beam), before anything is written."""
    workers, runner = getattr(args, "workers", None), getattr(args, "beam_runner", None)
    options, shard_size = getattr(args, "beam_option", None) or [], getattr(args, "shard_size", None)
    if workers is None and runner is None and not options:
        if shard_size is not None:
            raise ValueError("--shard-size sets the shards of a parallel build: add --workers N or --beam-runner")
        return {}
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    logging.disable(logging.WARNING)  # apache_beam warns on import about Google Cloud clients it does not need here
    try:
        import apache_beam  # noqa: F401 - only to fail early with the install hint
    except ImportError as e:
        raise SourceError("--workers / --beam-runner need Apache Beam: pip install 'jaxvl[beam]' "
                          "(or pip install apache-beam)") from e
    finally:
        logging.disable(logging.NOTSET)
    from jaxvl.data.builders.beam import pipeline_options
    from jaxvl.data.prepare_shards import shard_plans

    runner = runner or DIRECT_RUNNER
    # a failed pipeline raises with the worker's error (one line below); Beam would also log every traceback
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
    beam_options = pipeline_options(runner, workers, options)
    for builder, plan in zip(builders, shard_plans(parse_source(args.source), builders, skip_bad, shard_size),
                             strict=True):
        builder.shard(plan)
    return {"beam_runner": runner, "beam_options": beam_options}
