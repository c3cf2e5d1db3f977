"""Preparing a dataset in parallel with Apache Beam, the engine TFDS itself uses for large datasets.

A builder's split becomes a ``ShardedSplit``: a list of small picklable shard descriptions (index ranges,
image ids, ...) and a module-level ``read(shard, count)`` that yields that shard's ``(key, example)`` pairs
(the stored fields, as the builder's ``_generate_examples`` yields them) and reports skipped bad records
through ``count(what, n)``. ``examples_transform`` turns it into the ``beam.PTransform`` that TFDS accepts
from ``_generate_examples`` (TFDS docs, "beam_datasets")::

    shards -> Create -> Reshuffle (spread over the workers) -> FlatMap(read) -> (TFDS) encode, shuffle, write

Each worker reads only its shards' records, by key. Keys must be unique and deterministic (TFDS orders the
records by their hash), so the output is the same whatever the runner or the number of workers. Skips are
Beam counters in the ``SKIP_NAMESPACE`` namespace (``skip_counts`` reads them back); a bad record without
``skip_bad`` fails the pipeline, and ``bad_record_in`` recovers its one-line message from the runner's
error. ``pipeline_options`` builds the runner's ``PipelineOptions`` (DirectRunner with N local processes,
or any runner with its own flags). ``apache_beam`` is imported only when a pipeline is built.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from jaxvl.data.records import BadRecord

SKIP_NAMESPACE = "jaxvl.skipped"
"""Beam counter namespace of skipped bad records; a counter's name says what was skipped."""

Key = int | str
Count = Callable[[str, int], None]
"""``count(what, n)``: ``n`` more skipped records of kind ``what`` (e.g. "train: bad records in X.lmdb")."""
ShardReader = Callable[[Any, Count], Iterable[tuple[Key, dict[str, Any]]]]
"""``read(shard, count)``: the ``(key, example)`` pairs of one shard (picklable: a module-level function or
a ``functools.partial`` of one over picklable arguments)."""


@dataclasses.dataclass(frozen=True)
class ShardedSplit:
    """One split as independent shards: ``shards`` (picklable descriptions) and the ``read`` of one shard."""

    shards: Sequence[Any]
    read: ShardReader

    def __post_init__(self):
        if not self.shards:
            raise ValueError("a sharded split needs at least one shard")


def index_ranges(n: int, per_shard: int) -> list[tuple[int, int]]:
    """``[0, n)`` cut into ``[start, stop)`` ranges of at most ``per_shard`` items (none for ``n == 0``)."""
    if per_shard < 1:
        raise ValueError(f"per_shard={per_shard} must be >= 1")
    return [(start, min(start + per_shard, n)) for start in range(0, n, per_shard)]


def _read_counted(shard: Any, read: ShardReader) -> Iterable[tuple[Key, dict[str, Any]]]:
    """One shard's examples, its skips added to the Beam counters of ``SKIP_NAMESPACE``."""
    import apache_beam as beam

    def count(what: str, n: int = 1) -> None:
        if n:
            beam.metrics.Metrics.counter(SKIP_NAMESPACE, what).inc(n)

    yield from read(shard, count)


def examples_transform(split: str, sharded: ShardedSplit) -> Any:
    """The ``beam.PTransform`` (pipeline -> PCollection of ``(key, example)``) of one split."""
    import apache_beam as beam

    shards, read = list(sharded.shards), sharded.read

    @beam.ptransform_fn
    def read_shards(pipeline):
        return (pipeline
                | f"{split}_shards" >> beam.Create(shards)
                | f"{split}_spread" >> beam.Reshuffle()
                | f"{split}_read" >> beam.FlatMap(_read_counted, read))

    return read_shards()  # pylint: disable=no-value-for-parameter


def skip_counts(pipeline_result: Any) -> dict[str, int]:
    """What the finished pipeline skipped: counter name -> committed count (``SKIP_NAMESPACE`` only)."""
    from apache_beam.metrics.metric import MetricsFilter

    counters = pipeline_result.metrics().query(MetricsFilter().with_namespace(SKIP_NAMESPACE))["counters"]
    out: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return {what: n for what, n in sorted(out.items()) if n}


_BAD_RECORD = re.compile(r"BadRecord: (.+?)(?: \[while running|\n|$)")


def bad_record_in(error: BaseException) -> BadRecord | None:
    """The ``BadRecord`` that failed a pipeline, recovered from the runner's error (which carries the worker's
    traceback as text), or None when ``error`` is not one."""
    if isinstance(error, BadRecord):
        return error
    match = _BAD_RECORD.search(str(error))
    return BadRecord(match.group(1).strip()) if match else None


DIRECT_RUNNER = "DirectRunner"


def pipeline_options(runner: str, workers: int | None, options: Iterable[str]) -> Any:
    """``PipelineOptions`` for ``runner``: ``options`` are Beam's own flags as ``key=value`` (``--`` optional).

    ``workers`` (DirectRunner only) runs that many local processes (``direct_num_workers``,
    ``direct_running_mode=multi_processing``). Raises ``ValueError`` for an option without ``=``, or
    ``workers`` with another runner (whose flags set its parallelism: ``num_workers``, ``parallelism``, ...).
    """
    from apache_beam.options.pipeline_options import PipelineOptions

    flags = []
    for option in options:
        key, sep, value = option.removeprefix("--").partition("=")
        if not sep or not key:
            raise ValueError(f"--beam-option {option!r} must be key=value (a Beam pipeline option)")
        flags.append(f"--{key}={value}")
    if workers is not None:
        if runner != DIRECT_RUNNER:
            raise ValueError(f"--workers runs local processes with the {DIRECT_RUNNER}; with --beam-runner {runner} "
                             "set the runner's own parallelism with --beam-option (e.g. num_workers=, parallelism=)")
        if workers < 1:
            raise ValueError(f"--workers {workers} must be >= 1")
        flags += [f"--direct_num_workers={workers}",
                  f"--direct_running_mode={'multi_processing' if workers > 1 else 'in_memory'}"]
    if not any(flag.startswith("--default_sdk_harness_log_level=") for flag in flags):
        flags.append("--default_sdk_harness_log_level=WARNING")  # no INFO lines per bundle
    return PipelineOptions(flags)


def sharded_generators(name: str, sharded: Mapping[str, ShardedSplit], splits: Iterable[str]) -> dict[str, Any]:
    """Split -> ``examples_transform`` for every split of ``splits``; ``ValueError`` naming a split without shards."""
    splits = list(splits)
    missing = [s for s in splits if s not in sharded]
    if missing or set(sharded) - set(splits):
        raise ValueError(f"{name}: sharded splits {sorted(sharded)} do not match the dataset's splits {splits}")
    return {split: examples_transform(split, sharded[split]) for split in splits}
