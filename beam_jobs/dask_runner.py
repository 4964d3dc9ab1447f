"""The data engine on a Dask cluster: Beam's DaskRunner with the defects that break it fixed.

    python -m beam_jobs.preprocess --runner=beam_jobs.dask_runner.DaskRunner \
        --dask_client_address=tcp://SCHEDULER:8786 --input=DIR --output=DIR

Written against apache-beam 2.77.0 and dask/distributed 2026.8.0 (pinned in constraints.txt):
it reuses Beam's private DaskRunner pieces and worker internals, so any other Beam minor
release or dask release is refused at run time (one line). What it changes, all in the
translation of the pipeline to dask bags (docs/dask-runner-bugs.py reproduces each on the stock
runner):

- bags are keyed by PCollection, not by the producing transform, and a multi-output ParDo's
  bundle emits (tag, value) pairs, so every tagged output is its own bag (stock: all outputs of
  a ParDo, and the side inputs read from them, are one merged bag);
- every leaf is computed, in one graph (stock: only the last transform visited);
- a side input is one task per PCollection whose result dask hands to every bundle that reads
  it (stock: `list(bag)`, a nested compute of its whole upstream, per bundle and per read);
- Reshuffle deals its elements round-robin into many partitions (stock: identity, so one
  Create'd file's records stay one bundle on one worker thread);
- each bundle runs in a MetricsContainer and returns its updates, which `result.metrics()`
  commits (stock: NotImplementedError); finish_bundle's outputs are kept (stock: dropped).

Elements stay in the global window, as on the stock runner (WindowInto is a no-op there too).
Output files: the engine writes its own (writing.WriteShard, writing.finalize); Beam's
WriteToText works once the above is fixed (tests/test_dask_runner.py).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from importlib import metadata
from typing import Optional

import apache_beam as beam
# Private Beam APIs, each for one reason:
# pickler: how Beam itself ships a DoFn with its arguments to a worker;
from apache_beam.internal import pickler
# MetricsContainer, Receiver, DirectMetrics: how Beam's runners collect a step's Metrics and its
# outputs, and the DirectRunner's aggregation of bundles' metric updates into MetricResults;
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import Receiver
# the stock runner itself: its options, its overrides' primitives (_Create, _GroupByKeyOnly,
# _Flatten, _Reshuffle) which this translation matches, and its GroupByKey bag operation.
try:
    import dask.distributed  # noqa: F401  (Beam's dask modules need it; say which extra)
except ImportError as error:
    raise ImportError(f"{error}: the Dask runner needs isicflow's dask extra "
                      "(pip install -c constraints.txt '.[dask]')") from error
from apache_beam.runners.dask import dask_runner as stock
from apache_beam.runners.dask import overrides, transform_evaluator
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.window import GlobalWindows

# The releases this module was written and tested against: prefixes of the installed versions.
SUPPORTED = {"apache-beam": "2.77.", "dask": "2026.8.", "distributed": "2026.8."}
METRICS_TAG = "__isicflow_dask_metrics__"  # a bundle's MetricUpdates, beside its outputs
RESHUFFLE_PARTITIONS_PER_THREAD = 4  # Reshuffle's partitions when --dask_npartitions is unset
MIN_RESHUFFLE_PARTITIONS = 8  # a cluster that scales up later still gets several bundles
CREATE_PARTITION_SIZE = 128  # stock DaskRunner's default elements per Create partition


def check_versions() -> None:
    """RuntimeError (one line) unless the installed releases are the ones in SUPPORTED."""
    found = {name: metadata.version(name) for name in SUPPORTED}
    wrong = {name: v for name, v in found.items() if not v.startswith(SUPPORTED[name])}
    if wrong:
        raise RuntimeError(
            f"beam_jobs.dask_runner was written against {SUPPORTED} (it uses private Beam "
            f"internals), found {wrong}; install the versions in constraints.txt")


@dataclasses.dataclass(frozen=True)
class _ParDoSpec:
    """What a bundle needs to run one ParDo: Beam-pickled (fn, args, kwargs, windowing, side
    input views), so each bundle gets a fresh DoFn as Beam's own workers do."""

    label: str
    payload: bytes


class _Receivers(dict):
    """tag -> receiver appending (tag, value) to one list: _OutputHandler looks tags up here."""

    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        receiver = self[tag] = _TagReceiver(tag, self.out)
        return receiver


class _TagReceiver(Receiver):
    def __init__(self, tag, out: list):
        super().__init__()
        self.tag, self.out = tag, out

    def receive(self, windowed_value) -> None:
        self.out.append((self.tag, windowed_value.value))


def _run_bundle(elements, spec: _ParDoSpec, *side_values) -> list:
    """One dask partition through one ParDo: [(tag, value), ..., (METRICS_TAG, updates)]."""
    # Private Beam APIs: DoFnRunner and the state sampler are how Beam's own runners execute a
    # DoFn and scope its Metrics to a step; there is no public way to run a DoFn.
    from apache_beam.runners.common import DoFnRunner
    from apache_beam.runners.worker import statesampler
    from apache_beam.transforms.sideinputs import SideInputMap
    from apache_beam.utils.counters import CounterFactory

    fn, args, kwargs, windowing, views = pickler.loads(spec.payload)
    side_maps = [SideInputMap(view_class, options, [GlobalWindows.windowed_value(v) for v in values])
                 for (view_class, options), values in zip(views, side_values)]
    out: list = []
    runner = DoFnRunner(fn, args, kwargs, side_maps, windowing, _Receivers(out),
                        step_name=spec.label)
    container = MetricsContainer(spec.label)
    sampler = statesampler.StateSampler("", CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(spec.label, "process", metrics_container=container):
            runner.setup()
            runner.start()
            for element in elements:
                runner.process(GlobalWindows.windowed_value(element))
            runner.finish()  # outputs of finish_bundle land in `out` too
            runner.teardown()
    finally:
        statesampler.set_current_tracker(previous)
    out.append((METRICS_TAG, container.get_cumulative()))
    return out


def _select(partition, tag) -> list:
    """One tag's values, fused into its reader's task; a rescan per tag: <1% of a no-op ParDo."""
    return [value for t, value in partition if t == tag]


def _drain(partition) -> list:
    """Runs a leaf partition for its effects; nothing of it travels to the client."""
    for _ in partition:
        pass
    return []


def _concat(parts) -> list:
    return list(itertools.chain.from_iterable(parts))


def _deal(elements, n: int, start: int) -> tuple:
    """Round-robin into n lists, starting at `start` so that small partitions spread too."""
    hands: list[list] = [[] for _ in range(n)]
    for i, element in enumerate(elements):
        hands[(start + i) % n].append(element)
    return tuple(hands)


def reshuffle(bag, n: int):
    """A bag's elements dealt into n partitions (a fusion break: each one its own task)."""
    import dask
    import dask.bag as db

    parts = bag.to_delayed(optimize_graph=False)  # unoptimised: keys shared with the graph
    dealt = [dask.delayed(_deal, nout=n, pure=True)(part, n, i % n)
             for i, part in enumerate(parts)]
    return db.from_delayed([dask.delayed(_concat, pure=True)([d[k] for d in dealt])
                            for k in range(n)])


class _Translator(PipelineVisitor):
    """Beam primitives -> dask bags, one bag per PCollection."""

    def __init__(self, bag_kwargs: dict, reshuffle_partitions: int):
        self.bag_kwargs = bag_kwargs
        self.reshuffle_partitions = reshuffle_partitions
        self.bags: dict = {}  # PCollection -> Bag
        self.consumed: set = set()  # PCollections some transform reads (main or side)
        self.sides: dict = {}  # PCollection -> Delayed list, one per PCollection
        self.metrics: list = []  # bags of MetricUpdates, one per ParDo

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = [p for p in node.inputs if isinstance(p, beam.pvalue.PCollection)]
        self.consumed.update(inputs)
        bags = [self.bags[p] for p in inputs]
        kind = type(transform)
        if kind is overrides._Create:  # the stock overrides' Create, kept
            out = {None: self._create(transform.values)}
        elif kind is beam.ParDo:  # subclasses (WindowInto, GroupAlsoByWindow) pass through
            out = self._pardo(node, bags[0])
        elif kind is overrides._GroupByKeyOnly:
            out = {None: transform_evaluator.GroupByKey(node).apply(bags[0])}
        elif kind is overrides._Flatten:
            out = {None: self._flatten(bags)}
        elif kind is overrides._Reshuffle:
            out = {None: reshuffle(bags[0], self.reshuffle_partitions)}
        else:  # as stock: any other primitive passes its input through
            out = {None: bags[0] if bags else self._create(())}
        for tag, pcoll in node.outputs.items():
            self.bags[pcoll] = out[tag]

    def _create(self, values):
        import dask.bag as db

        values = list(values)
        npartitions = self.bag_kwargs.get("npartitions")
        size = self.bag_kwargs.get("partition_size")
        if not npartitions and not size:
            size = max(CREATE_PARTITION_SIZE, math.ceil(math.sqrt(len(values)) / 10))
        if not values:
            return db.from_sequence([], npartitions=1)
        return db.from_sequence(values, partition_size=size, npartitions=npartitions)

    def _flatten(self, bags):
        import dask.bag as db

        return db.concat(bags) if bags else self._create(())

    def _side(self, pcoll):
        """One task holding the whole PCollection as a list, shared by all its readers."""
        import dask

        if pcoll not in self.sides:
            parts = self.bags[pcoll].to_delayed(optimize_graph=False)
            self.sides[pcoll] = dask.delayed(_concat, pure=True)(parts)
        return self.sides[pcoll]

    def _pardo(self, node: AppliedPTransform, bag) -> dict:
        transform = node.transform
        side_inputs = list(node.side_inputs)
        self.consumed.update(si.pvalue for si in side_inputs)
        windowing = node.inputs[0].windowing
        views = [(type(si), si._view_options()) for si in side_inputs]  # private: how Beam's
        # runners build a SideInputMap; the view options carry AsSingleton's default
        payload = pickler.dumps((transform.fn, transform.args, transform.kwargs, windowing, views))
        tagged = bag.map_partitions(_run_bundle, _ParDoSpec(node.full_label, payload),
                                    *[self._side(si.pvalue) for si in side_inputs])
        self.metrics.append(tagged.map_partitions(_select, METRICS_TAG))
        return {tag: tagged.map_partitions(_select, tag) for tag in node.outputs}

    def final_bag(self):
        """Every leaf, drained, and every bundle's metrics: the one thing to compute."""
        import dask.bag as db

        leaves = [bag.map_partitions(_drain) for pcoll, bag in self.bags.items()
                  if pcoll not in self.consumed]
        return db.concat(leaves + self.metrics)


class DaskRunnerResult(PipelineResult):
    """The computation's future; `metrics()` answers once it is done."""

    def __init__(self, client, future, owns_client: bool = True):
        super().__init__(PipelineState.RUNNING)
        self.client, self.future, self.owns_client = client, future, owns_client
        self._metrics: Optional[DirectMetrics] = None

    def wait_until_finish(self, duration: Optional[int] = None) -> str:
        if self._state in (PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED):
            return self._state
        try:
            updates = self.future.result(timeout=None if duration is None else duration / 1000)
        except Exception:
            self._state = PipelineState.FAILED
            self._close()
            raise
        metrics = DirectMetrics()
        for bundle, update in enumerate(updates):
            metrics.commit_physical(bundle, update)
            metrics.commit_logical(bundle, update)
        self._metrics, self._state = metrics, PipelineState.DONE
        self._close()
        return self._state

    def cancel(self) -> str:
        self.future.cancel()
        self._state = PipelineState.CANCELLED
        self._close()
        return self._state

    def metrics(self) -> DirectMetrics:
        if self._metrics is None:
            raise RuntimeError("metrics are known once wait_until_finish() has returned")
        return self._metrics

    def _close(self) -> None:
        if self.owns_client and self.client is not None:
            self.client.close()  # with no --dask_client_address, also its LocalCluster
            self.client = None


class DaskRunner(stock.DaskRunner):
    """Beam's DaskRunner with tagged outputs, all leaves, side inputs once, Reshuffle and
    metrics fixed. Options: Beam's DaskOptions (--dask_client_address, --dask_npartitions)."""

    def run_pipeline(self, pipeline, options) -> DaskRunnerResult:
        check_versions()
        import dask.distributed as ddist

        dask_options = options.view_as(stock.DaskOptions).get_all_options(
            drop_default=True, current_only=True)
        bag_kwargs = stock.DaskOptions._extract_bag_kwargs(dask_options)  # private: the stock
        # runner's own split of its options into Client and bag arguments
        client = ddist.Client(**dask_options)
        try:
            threads = sum(client.nthreads().values())
            partitions = bag_kwargs.get("npartitions") or max(
                MIN_RESHUFFLE_PARTITIONS, RESHUFFLE_PARTITIONS_PER_THREAD * threads)
            pipeline.replace_all(overrides.dask_overrides())
            translator = _Translator(bag_kwargs, partitions)
            pipeline.visit(translator)
            future = client.compute(translator.final_bag())
        except Exception:
            client.close()
            raise
        return DaskRunnerResult(client, future)
