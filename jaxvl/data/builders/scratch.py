"""A temp directory of jaxvl's own for TFDS and Beam, removed afterwards.

Both leave empty directories in the system's temp directory and never remove them: TFDS's
``DatasetInfo.initialize_from_bucket`` makes a ``tmp*tfds`` directory each time a builder is created for a
dataset not yet prepared (it would copy GCS metadata there; offline it finds none), and Beam's
multi-processing DirectRunner starts a job server per pipeline with a ``beam-temp*`` directory. Without
``own_temp_dir`` every ``jaxvl prepare`` left two to six of them behind.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def own_temp_dir(active: bool = True) -> Iterator[str | None]:
    """Points Python's ``tempfile`` at a fresh directory for the block and removes it, with whatever was left in
    it, afterwards (``active`` False: nothing changes). The setting is process-wide: use it around builder
    creation and pipeline runs, not around a training loop. Yields the directory (None when inactive)."""
    if not active:
        yield None
        return
    scratch, before = tempfile.mkdtemp(prefix="jaxvl-prepare-"), tempfile.tempdir
    tempfile.tempdir = scratch
    try:
        yield scratch
    finally:
        tempfile.tempdir = before
        shutil.rmtree(scratch, ignore_errors=True)
