"""Where a trainer's data comes from: a prepared dataset directory, or a source string prepared on first use.

``resolve_dataset("synthetic:num_images=256", ...)`` builds the source's datasets under the prepare
directory once (JAX process 0 writes; every process waits for it on multi-host runs) and returns the
version directory of the one of the wanted kind; a path that already holds ``dataset_info.json`` is
returned as it is once its kind is checked: an ablation dataset handed to pretraining is an error naming
what the directory holds, not a ``KeyError`` inside Grain (an image store, ``jaxvl.data.imagestore``, holds
``PretrainPairs`` records). A path that does not exist is reported as such, not as an unknown source. A
source string read in place for the task's kind (``volta-cc:PATH`` for pretraining,
``flickr30k-entities:ROOT,features=LMDB`` for the ablation: ``jaxvl.data.inplace``) is returned unchanged,
nothing written: ``open_split`` opens it.
"""

from __future__ import annotations

import json
import os

import jax


def _builder_names(kind: type) -> set[str]:
    """The TFDS names of builder class ``kind`` and of every subclass of it (e.g. the synthetic world's)."""
    names, todo = set(), [kind]
    while todo:
        cls = todo.pop()
        names.add(cls.name)
        todo.extend(cls.__subclasses__())
    return names


def _stored_name(path: str) -> str | None:
    """The builder name a prepared dataset's ``dataset_info.json`` records; None when it cannot be read
    (``open_split`` then reports the damaged file)."""
    try:
        with open(os.path.join(path, "dataset_info.json"), encoding="utf-8") as f:
            name = json.load(f).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _reader_of(name: str) -> str | None:
    """What a dataset called ``name`` is and which command reads it, when a jaxvl builder writes it."""
    from jaxvl.data.builders import AblationPhrases, PretrainPairs
    from jaxvl.data.builders.captions import CaptionImages

    commands = {PretrainPairs: "jaxvl pretrain", AblationPhrases: "jaxvl ablate", CaptionImages: "jaxvl caption"}
    return next((f"{kind.__name__}, read by `{command}`" for kind, command in commands.items()
                 if name in _builder_names(kind)), None)


def _check_image_store_kind(path: str, kind: type) -> None:
    """``ValueError`` unless the image store at ``path`` (``PretrainPairs`` records) serves datasets of ``kind``."""
    from jaxvl.data.builders.images import ImagePairsBuilder
    from jaxvl.data.imagestore import MANIFEST

    stands_for = ImagePairsBuilder.stands_for
    if issubclass(stands_for, kind):
        return
    raise ValueError(f"config data.dataset={path!r} holds an image store ({MANIFEST}: {stands_for.__name__} "
                     f"records, read by `jaxvl pretrain`), not the {kind.__name__} dataset this task reads "
                     f"({', '.join(sorted(_builder_names(kind)))})")


def check_dataset_kind(path: str, kind: type) -> None:
    """``ValueError`` unless the prepared dataset at ``path`` was written by builder class ``kind`` or a subclass
    (the name its ``dataset_info.json`` records; an image store holds ``PretrainPairs`` records), naming what the
    directory holds and the command that reads it."""
    from jaxvl.data.imagestore.layout import is_image_store

    if is_image_store(path):
        _check_image_store_kind(path, kind)
        return
    name = _stored_name(path)
    if name is None or name in _builder_names(kind):
        return
    what = _reader_of(name)
    holds = f"a {name} dataset" + (f" ({what})" if what else "")
    raise ValueError(f"config data.dataset={path!r} holds {holds}, not the {kind.__name__} dataset this task reads "
                     f"({', '.join(sorted(_builder_names(kind)))})")


def _not_a_dataset(spec: str, source_error: ValueError) -> Exception:
    """The error for a ``data.dataset`` that is neither a prepared dataset nor a valid source string: the source's
    own error when ``spec`` names a known source, else what is wrong with it as a path."""
    from jaxvl.data.sources import SOURCES

    if spec.partition(":")[0].strip() in SOURCES:
        return ValueError(f"config data.dataset={spec!r}: {source_error}")
    if os.path.isdir(spec):
        return FileNotFoundError(f"config data.dataset={spec!r} is neither a prepared dataset directory (it holds no "
                                 "dataset_info.json: give the version directory `jaxvl prepare` wrote, "
                                 "OUT/NAME/CONFIG/VERSION) nor a source string")
    if os.path.exists(spec):
        return FileNotFoundError(f"config data.dataset={spec!r} is a file, not a prepared dataset directory")
    return FileNotFoundError(f"config data.dataset={spec!r}: no such dataset directory (nor a source string: "
                             f"sources are {', '.join(SOURCES)})")


def resolve_dataset(spec: str, prepare_dir: str, workdir: str, kind: type) -> str:
    """The version directory of the dataset of builder class ``kind`` (e.g. ``PretrainPairs``,
    ``CaptionImages``) named by ``spec``: a prepared directory (or image store), a source string read in place
    (returned as it is, for ``open_split``), or a ``jaxvl prepare`` source string prepared under ``prepare_dir``
    (default ``<workdir>/data``; with ``layout=images`` its image store). A prepared directory of another kind, a
    path that does not exist and a bad source string are ``ValueError`` / ``FileNotFoundError`` naming the cause."""
    if not spec:
        raise ValueError("config data.dataset is empty: point it at a dataset prepared by `jaxvl prepare` "
                         "(its version directory) or give a source string such as 'synthetic:num_images=256'")
    from jaxvl.data.imagestore.layout import is_file, is_image_store

    if is_file(os.path.join(spec, "dataset_info.json")) or is_image_store(spec):
        check_dataset_kind(spec, kind)
        return spec
    from jaxvl.data.sources import build_source, parse_source

    try:
        parse_source(spec)
    except ValueError as e:  # a bad source string, an unknown source name, or no source at all
        raise _not_a_dataset(spec, e) from e
    from jaxvl.data.inplace import reads_in_place

    if reads_in_place(spec, kind):
        return spec  # open_split reads it in place: nothing to prepare
    out = prepare_dir or os.path.join(workdir, "data")
    builders = [b for b in build_source(spec, out).builders
                if isinstance(b, kind) or issubclass(getattr(b, "stands_for", type(None)), kind)]
    if not builders:
        raise ValueError(f"config data.dataset={spec!r} gives no {kind.__name__} dataset")
    builder = builders[0]
    written = os.path.isfile(os.path.join(builder.data_dir, "dataset_info.json")) or is_image_store(builder.data_dir)
    if jax.process_index() == 0 and not written:
        print(f"preparing {spec!r} under {out}", flush=True)
        builder.download_and_prepare()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("jaxvl: dataset prepared")
    return builder.data_dir
