"""Beam's own DaskRunner suite (apache_beam/runners/dask/dask_runner_test.py, installed with
apache-beam 2.77) run against beam_jobs.dask_runner, on one shared local cluster: every test
that passes on the stock runner passes on ours."""
import pytest

distributed = pytest.importorskip("distributed")

from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402
from apache_beam.runners.dask import dask_runner as stock  # noqa: E402
from apache_beam.runners.dask import dask_runner_test as beam_suite  # noqa: E402
from apache_beam.testing import test_pipeline  # noqa: E402

from beam_jobs import dask_runner  # noqa: E402

pytestmark = pytest.mark.slow  # ~25 pipelines
ADDRESS = {}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One LocalCluster for every test (Beam's tests would start one per pipeline)."""
    with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                  host="127.0.0.1", dashboard_address=None) as local:
        ADDRESS["scheduler"] = local.scheduler_address
        yield local
    ADDRESS.clear()


def on_cluster(runner):
    options = PipelineOptions([f"--dask_client_address={ADDRESS['scheduler']}"])
    return test_pipeline.TestPipeline(runner=runner, options=options)


class TestBeamOptions(beam_suite.DaskOptionsTest):
    """Runner-independent: DaskOptions parsing, which ours inherits."""


class TestBeamSuiteOnOurs(beam_suite.DaskRunnerRunPipelineTest):
    def setUp(self):
        self.pipeline = on_cluster(dask_runner.DaskRunner())


class TestBeamSuiteOnStock(beam_suite.DaskRunnerRunPipelineTest):
    def setUp(self):
        self.pipeline = on_cluster(stock.DaskRunner())
