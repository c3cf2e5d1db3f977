"""Benchmark caption decoding and the XE / SCST training steps: ``python scripts/bench_caption.py --help``.

A thin wrapper of ``jaxvl.benchmarks.caption`` (the same as ``jaxvl bench caption``), e.g.::

    python scripts/bench_caption.py --sizes tiny,ort --out caption.json
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from jaxvl.benchmarks.caption import main

if __name__ == "__main__":
    main()
