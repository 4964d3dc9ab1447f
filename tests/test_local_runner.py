"""make_runner's FnApiRunner under multi_threading: no output element cut in two by Beam's timed
flush (docs/engine.md#the-local-runners-timed-flush-race)."""
import dataclasses
import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import preprocess

ELEMENTS = 5000


@dataclasses.dataclass(frozen=True)
class _Key:
    index: int


class _YieldingCoder(beam.coders.Coder):
    """Runs bytecode in the middle of an element, as any Python-level encoding does (the
    engine's records, and its keys before they crossed the plan's shuffle as plain tuples),
    and yields the GIL there, so that the race is near-certain."""

    def encode(self, value):
        time.sleep(0)
        return beam.coders.PickleCoder().encode(value)

    def decode(self, encoded):
        return beam.coders.PickleCoder().decode(encoded)

    def is_deterministic(self):
        return True


def test_grouped_elements_survive_a_frequent_timed_flush(monkeypatch):
    """With Beam's timed flush every 1 ms instead of 1 s (the race made frequent), two worker
    threads grouping 5,000 values failed 5 runs in 5 without whole_element_flushes ("Invalid
    PaneInfoEncoding"): make_runner must turn the timed flush off before the workers start."""
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    runner = preprocess.make_runner(options)
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 0
    beam.coders.registry.register_coder(_Key, _YieldingCoder)
    with beam.Pipeline(runner=runner, options=options) as p:
        indices = (p
                   | beam.Create(range(8))
                   | beam.Reshuffle()
                   | beam.FlatMap(lambda c: range(c * ELEMENTS // 8, (c + 1) * ELEMENTS // 8))
                   | beam.Map(lambda i: (None, _Key(i))).with_output_types(
                       beam.typehints.Tuple[None, _Key])
                   | beam.GroupByKey()
                   | beam.Map(lambda kv: sorted(key.index for key in kv[1])))
        assert_that(indices, equal_to([list(range(ELEMENTS))]))


def test_a_beam_without_the_flush_setting_fails_fast(monkeypatch):
    """The setting is private to Beam 2.77: a Beam without it must stop the job with a message
    naming the version, not run with the race back."""
    monkeypatch.delattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS")
    with pytest.raises(RuntimeError, match=r"apache-beam 2\.77.*DATA_BUFFER_TIME_LIMIT_MS"):
        preprocess.whole_element_flushes()
