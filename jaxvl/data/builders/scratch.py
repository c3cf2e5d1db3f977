"""A temp directory of jaxvl's own for TFDS and Beam, removed afterwards.

Both leave directories in the system's temp directory and never remove them: TFDS's
``DatasetInfo.initialize_from_bucket`` makes a ``tmp*tfds`` directory each time a builder is created for a
dataset not yet prepared (it would copy GCS metadata there; offline it finds none), and Beam's DirectRunner
makes a ``beam-temp*`` directory per pipeline for a job server. Without ``own_temp_dir`` every ``jaxvl
prepare`` left two to six of them behind.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def own_temp_dir(active: bool = True, remove_at_exit: bool = False) -> Iterator[str | None]:
    """Points Python's ``tempfile`` at a fresh directory for the block (``active`` False: nothing changes).

    The directory, with whatever was left in it, is removed when the block ends, or with ``remove_at_exit`` when
    the process exits: around Beam pipelines, whose job servers may outlive the pipeline and remove their own
    directory in Beam's exit handlers (which run before this one: handlers run last-registered first). The
    setting is process-wide: use it around builder creation and pipeline runs, not around a training loop.
    Yields the directory (None when inactive)."""
    if not active:
        yield None
        return
    scratch, before = tempfile.mkdtemp(prefix="jaxvl-tmp-"), tempfile.tempdir
    if remove_at_exit:
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    tempfile.tempdir = scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = before
        if not remove_at_exit:
            shutil.rmtree(scratch, ignore_errors=True)
