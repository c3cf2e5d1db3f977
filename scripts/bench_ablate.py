"""Benchmark the compiled ablation sweep against a per-condition loop: ``python scripts/bench_ablate.py --help``.

A thin wrapper of ``jaxvl.benchmarks.ablate`` (the same as ``jaxvl bench ablate``), e.g.::

    python scripts/bench_ablate.py --sizes tiny,ctrl --presets uniter,lxmert --models 1,4 --out ablate.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxvl.benchmarks.ablate import main

if __name__ == "__main__":
    main()
