"""Which runner --runner picks."""
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
