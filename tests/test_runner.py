"""Which runner --runner picks, and the worker-process environment."""
import os

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

from beam_jobs import preprocess


def test_direct_runner_is_the_fn_api_runner_never_prism():
    for args in ([], ["--runner=DirectRunner"], ["--runner=direct"]):
        assert isinstance(preprocess.make_runner(PipelineOptions(args)), FnApiRunner), args
    for other in ("DataflowRunner", "FlinkRunner", "PrismRunner"):
        assert preprocess.make_runner(PipelineOptions([f"--runner={other}"])) is None
    with pytest.raises(ValueError, match="batch job"):
        preprocess.make_runner(PipelineOptions(["--streaming"]))


def test_worker_processes_get_single_threaded_tensorflow_and_the_env_comes_back(monkeypatch):
    names = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # a user's own setting wins and survives
    processes = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    with preprocess.single_threaded_worker_ops(processes):
        assert [os.environ.get(n) for n in names] == ["1", "1", "7"]
    assert [os.environ.get(n) for n in names] == [None, None, "7"]
    threads = PipelineOptions(["--direct_num_workers=2", "--direct_running_mode=multi_threading"])
    with preprocess.single_threaded_worker_ops(threads):
        assert os.environ.get("TF_NUM_INTRAOP_THREADS") is None
