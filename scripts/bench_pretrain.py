"""Benchmark the pretraining step of the five jaxvl presets: ``python scripts/bench_pretrain.py --help``.

A thin wrapper of ``jaxvl.benchmarks.pretrain`` (the same as ``jaxvl bench pretrain``), e.g.::

    python scripts/bench_pretrain.py --sizes tiny,ctrl --presets uniter,lxmert --out pretrain.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxvl.benchmarks.pretrain import main

if __name__ == "__main__":
    main()
