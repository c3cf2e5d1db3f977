"""Reading a pair-layout (``tf.Example``) split with protobuf < 7 names the cost once per process: protobuf 6
turns a float list into numpy element by element, several times slower per ctrl-size pair (BENCHMARKS.md, "Feeding
an accelerator"), and apache-beam (the ``beam`` extra) pins it.
"""

from __future__ import annotations

import importlib.metadata
import logging

from jaxvl.data import grain as data_grain


def test_old_protobuf_is_named_once_when_a_pair_split_is_read(monkeypatch, caplog):
    for installed, slow in (("6.33.6", True), ("7.36.2", False)):
        data_grain.warn_slow_protobuf.cache_clear()
        monkeypatch.setattr(importlib.metadata, "version", lambda dist, v=installed: v)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jaxvl.data.grain"):
            assert data_grain.warn_slow_protobuf() is slow
            data_grain.warn_slow_protobuf()
        assert len([r for r in caplog.records if "protobuf" in r.getMessage()]) == int(slow)
    data_grain.warn_slow_protobuf.cache_clear()
