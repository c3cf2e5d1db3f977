"""Benchmark jaxvl's input path against a training step: ``python scripts/bench_data.py --help``.

A thin wrapper of ``jaxvl.benchmarks.data`` (the same as ``jaxvl bench data``), e.g.::

    python scripts/bench_data.py --markdown --out bench_data.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxvl.benchmarks.data import main

if __name__ == "__main__":  # the guard matters: Grain's worker processes re-import this module
    main()
