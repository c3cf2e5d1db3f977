"""jaxvl: controlled vision-and-language transformer experiments in JAX/Flax.

Packages by what a researcher does, over one shared runtime:

- ``jaxvl.models``: the shared attention and layers; ``models.volta`` (the five V&L BERTs: one encoder,
  five plans) and ``models.ort`` (the geometry-aware captioner);
- ``jaxvl.runtime``: mesh, placement, state, compile, loop, the stage runner, checkpoints, metrics;
- ``jaxvl.pretrain``, ``jaxvl.caption``, ``jaxvl.ablation``: one folder per task (data pipeline, loss,
  trainer or run, report, analyses);
- ``jaxvl.data`` (readers, records, tokenizer, TFDS builders, synthetic worlds), ``jaxvl.convert``
  (PyTorch checkpoints both ways), ``jaxvl.metrics`` (caption metrics), ``jaxvl.configs`` (the packaged
  configs), ``jaxvl.benchmarks`` (``jaxvl bench``) and ``jaxvl.cli`` (the ``jaxvl`` command).
"""

from jaxvl import compat
from jaxvl.runtime.platforms import prefer_local_platforms

__version__ = "0.2.0"

prefer_local_platforms()  # before JAX starts: no libtpu warnings on a machine without TPUs (runtime.platforms)
compat.install()
