"""Benchmark the five jaxvl presets against the PyTorch originals: ``python scripts/bench_models.py --help``.

A thin wrapper of ``jaxvl.benchmarks.models`` (the same as ``jaxvl bench models``), e.g.::

    python scripts/bench_models.py --sizes tiny ctrl --markdown --out bench.json
"""

from __future__ import annotations

import os
import sys

# Before JAX starts: leave GPU memory to torch too (JAX would otherwise take 75% of it up front).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxvl.benchmarks.models import main

if __name__ == "__main__":
    main()
