"""``jaxvl prepare``: write a data source as TFDS ArrayRecord datasets for the Grain pipelines.

    jaxvl prepare --source synthetic --out data/
    jaxvl prepare --source synthetic:num_images=1024,vision_to_language=0.5,val_images=64 --out data/

Sources (only those listed here work):

- ``synthetic[:key=value,...]``: the embedded synthetic world (``jaxvl.data.synthetic``). Keys are
  ``WorldConfig`` fields (``num_images`` train images, ``num_regions``, ``feature_dim``,
  ``num_classes``, ``vision_to_language``, ``ambiguous_fraction``, ``seed``, ...; tuples as
  ``image_size=240x320``), plus ``val_images`` (held-out images, default 16) and ``name`` (the config
  name; default: the non-default knobs). Writes ``jaxvl_synthetic_pretrain`` (one example per
  image-caption pair) and ``jaxvl_synthetic_ablation`` (one example per grounded phrase), each with
  ``train`` and ``val`` splits, under ``<out>/<dataset>/<config>/1.0.0``.

An existing dataset is reused unless ``--overwrite``. Preparing needs no TensorFlow.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

SOURCES = {
    "synthetic": "the embedded synthetic world; synthetic:key=value,... sets WorldConfig knobs and val_images",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--source``, ``--out``, ``--overwrite`` and ``--quiet`` to the ``prepare`` sub-command."""
    listing = "; ".join(f"{name}: {doc}" for name, doc in SOURCES.items())
    parser.add_argument("--source", default="synthetic",
                        help=f"what to prepare, NAME[:key=value,...] (default synthetic). Sources: {listing}")
    parser.add_argument("--out", required=True, help="data directory the datasets are written under (TFDS data_dir)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild datasets that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _builders(source: str, out: str) -> list:
    """The TFDS builders of ``source`` (``NAME[:knobs]``) writing under ``out``."""
    name, _, knobs = source.partition(":")
    if name == "synthetic":
        from jaxvl.data.builders.synthetic import parse_knobs, synthetic_builders, synthetic_config

        return synthetic_builders(synthetic_config(**parse_knobs(knobs)), out)
    raise ValueError(f"unknown --source {name!r}; available: {', '.join(SOURCES)}")


def run(args: argparse.Namespace) -> int:
    """Prepares every dataset of ``args.source`` under ``args.out`` and prints where each went.

    Returns 0, or 2 (with a message on stderr) for an unknown source or knob.
    """
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    logging.getLogger("absl").setLevel(logging.ERROR)  # tfds warns about every custom config
    out = os.path.abspath(args.out)
    try:
        builders = _builders(args.source, out)
    except (ValueError, TypeError) as e:
        print(f"jaxvl prepare: {e}", file=sys.stderr)
        return 2
    mode = tfds.GenerateMode.FORCE_REDOWNLOAD if args.overwrite else tfds.GenerateMode.REUSE_DATASET_IF_EXISTS
    config = tfds.download.DownloadConfig(download_mode=mode, try_download_gcs=False)
    if args.quiet:
        tfds.disable_progress_bar()
    start = time.perf_counter()
    with tqdm(builders, desc="datasets", unit="dataset", disable=args.quiet) as bar:
        for builder in bar:
            bar.set_postfix_str(builder.name)
            builder.download_and_prepare(download_config=config, download_dir=os.path.join(out, "downloads"))
    print(f"prepared {len(builders)} datasets from {args.source!r} in {time.perf_counter() - start:.1f} s:")
    for builder in builders:
        splits = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
        regions = builder.info.metadata.get("regions", {})
        print(f"  {builder.data_dir}\n    {splits} examples; regions R={regions.get('num_regions')} "
              f"D={regions.get('feature_dim')} K={regions.get('num_classes')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jaxvl.data.prepare``: the same command without the ``jaxvl`` entry point."""
    parser = argparse.ArgumentParser(prog="jaxvl prepare", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
