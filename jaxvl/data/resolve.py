"""Where a trainer's data comes from: a prepared dataset directory, or a source string prepared on first use.

``resolve_dataset("synthetic:num_images=256", ...)`` builds the source's datasets under the prepare
directory once (JAX process 0 writes; every process waits for it on multi-host runs) and returns the
version directory of the one of the wanted kind; a path that already holds ``dataset_info.json`` is
returned as it is.
"""

from __future__ import annotations

import os

import jax


def resolve_dataset(spec: str, prepare_dir: str, workdir: str, kind: type) -> str:
    """The version directory of the dataset of builder class ``kind`` (e.g. ``PretrainPairs``,
    ``CaptionImages``) named by ``spec``: a prepared directory, or a ``jaxvl prepare`` source string
    prepared under ``prepare_dir`` (default ``<workdir>/data``)."""
    if not spec:
        raise ValueError("config data.dataset is empty: point it at a dataset prepared by `jaxvl prepare` "
                         "(its version directory) or give a source string such as 'synthetic:num_images=256'")
    if os.path.isfile(os.path.join(spec, "dataset_info.json")):
        return spec
    from jaxvl.data.sources import build_source, parse_source

    try:
        parse_source(spec)
    except ValueError as e:  # an unknown source name, or no source at all
        raise FileNotFoundError(f"config data.dataset={spec!r} is neither a prepared dataset directory (with "
                                f"dataset_info.json) nor a source ({e})") from e
    out = prepare_dir or os.path.join(workdir, "data")
    builders = [b for b in build_source(spec, out).builders if isinstance(b, kind)]
    if not builders:
        raise ValueError(f"config data.dataset={spec!r} gives no {kind.__name__} dataset")
    builder = builders[0]
    if jax.process_index() == 0 and not os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")):
        print(f"preparing {spec!r} under {out}", flush=True)
        builder.download_and_prepare()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxvl: dataset prepared")
    return builder.data_dir
