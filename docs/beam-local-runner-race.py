"""A data race in Apache Beam 2.77's FnApiRunner (the DirectRunner's local runner) under
--direct_running_mode=multi_threading: the timed flush of a data-channel output stream.

Needs only `pip install apache-beam==2.77.0`. Each run groups N small values under one key with
two worker threads and checks that all N come back:

    python docs/beam-local-runner-race.py            # flush every 1 ms: fails almost every run
    python docs/beam-local-runner-race.py 1000       # Beam's own period (1 s): rarely, on a busy machine
    python docs/beam-local-runner-race.py 0          # timed flush off: passes

What happens: the in-process SDK harness (EmbeddedGrpcWorkerHandler) gets
data_buffer_time_limit_ms = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS (1000; a config's 0 falls
back to it), so each output stream is a TimeBasedBufferingClosableOutputStream whose timer thread
(data_plane.PeriodicThread) calls flush() every second. flush() takes a lock that only other
flushes take; the bundle thread encoding into the stream (DataOutputOperation.process:
encode_to_stream, then maybe_flush) takes none. When the element's encoding runs Python code (a
Python coder, or FastPrimitivesCoder's pickle fallback for an object, e.g. a slots dataclass's
__getstate__), the timer thread can take the GIL mid-element and send the first part as one
Elements.Data. The runner decodes each Data message on its own (GroupingBuffer.append, and the SDK
side's DataInputOperation for ListBuffer inputs), so the rest is read as a new element:
`NotImplementedError: Invalid PaneInfoEncoding: N`, or its first bytes as a window count (up to
2**31) of GlobalWindows, which take no bytes to decode: a list that fills all memory (a 22 GB
process was killed by the kernel at the default period). flush() also clears the buffer after
its callback (Python code that can yield the GIL): what is written in between is lost.

The race window is small at 1 s; this script widens it by setting the period (argument 1, in
ms) and by a value coder that yields the GIL mid-element (time.sleep(0)), as any Python-level
encoding may. Found while running isicflow's data engine on HAM10000 (5,984 images, 2 threads).
"""
import dataclasses
import resource
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import fn_runner, worker_handlers
from apache_beam.testing.util import assert_that, equal_to

N = 5000


@dataclasses.dataclass(frozen=True)
class Key:
    index: int


class YieldingCoder(beam.coders.Coder):
    """Pickles, after yielding the GIL: Python code in the middle of an element."""

    def encode(self, value):
        time.sleep(0)
        return beam.coders.PickleCoder().encode(value)

    def decode(self, encoded):
        return beam.coders.PickleCoder().decode(encoded)

    def is_deterministic(self):
        return True


def main(period_ms: int) -> None:
    # A garbage window count can take all memory: fail with MemoryError instead (Linux).
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = period_ms  # read when each worker starts
    beam.coders.registry.register_coder(Key, YieldingCoder)
    options = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    with beam.Pipeline(runner=fn_runner.FnApiRunner(), options=options) as p:
        indices = (p
                   | beam.Create(range(8))
                   | beam.Reshuffle()
                   | beam.FlatMap(lambda c: range(c * N // 8, (c + 1) * N // 8))
                   | beam.Map(lambda i: (None, Key(i))).with_output_types(
                       beam.typehints.Tuple[None, Key])
                   | beam.GroupByKey()
                   | beam.Map(lambda kv: sorted(key.index for key in kv[1])))
        assert_that(indices, equal_to([list(range(N))]))
    print(f"ok: {N} values grouped whole with a {period_ms} ms timed flush")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
