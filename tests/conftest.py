"""Shared fixtures: the real sample lives beside the checkout, never inside it."""
import os
import pathlib
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT.parent / "shared" / "data" / "isic-uda1"


@pytest.hookimpl(tryfirst=True)  # before the fixtures: a module fixture that trains runs eagerly too
def pytest_runtest_setup(item):
    """Tests marked `eager_steps` run tf.functions (Keras' train/test/predict steps, the GAN's
    step) eagerly: they check what one to three steps compute, and tracing those steps cost
    them more than running them (2 of the fast suite's 22 summed test minutes). `graph`
    keeps a test traced inside such a module. The program tests, which run the trainers in a
    subprocess as users do, always trace; tf.data functions always trace."""
    tf = sys.modules.get("tensorflow")
    if tf is not None:  # a test module that never imported TensorFlow has nothing to switch
        eager = item.get_closest_marker("eager_steps") and not item.get_closest_marker("graph")
        tf.config.run_functions_eagerly(bool(eager))


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    """../shared/data/isic-uda1: 440 real ISIC images with legacy JSON sidecars."""
    if not SAMPLE_DIR.is_dir():
        pytest.fail(f"real sample missing at {SAMPLE_DIR}; CI and dev machines must have it")
    return SAMPLE_DIR


@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    """tests.shard_fixtures.write_two_source_dataset at 32 px (the source-aware trainers)."""
    from tests import shard_fixtures

    return shard_fixtures.write_two_source_dataset(tmp_path_factory.mktemp("sources"), 32)

