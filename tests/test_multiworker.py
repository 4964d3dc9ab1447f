"""trainer.cnn on several workers (MultiWorkerMirroredStrategy): the cluster from flags or
TF_CONFIG, whole shard files per worker, the --num_shards refusal, and (slow) two worker
processes on 127.0.0.1 that end with identical weights and a checkpoint one process restores."""
import dataclasses
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import shard_fixtures
from tests.test_cnn_programs import _assert_user_error  # exit 2, one line besides TF's logs
from trainer.cnn import cli, config as config_lib, train
from trainer.core import input_pipeline, program, runtime

cli.define_flags()  # the CNN trainer's flags, --workers and --worker_index among them

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory, sample_dir):
    """Real images at 32 px, every split in 2 shard files (one per worker)."""
    return shard_fixtures.write_sample_dataset(
        tmp_path_factory.mktemp("two_shards"), sample_dir, SIZE,
        {"train": 16, "validation": 4, "test": 4}, num_shards=2)


# ---------------------------------------------------------------- the cluster, pure rules

def test_flags_give_a_tf_config_and_one_worker_is_one_process():
    assert runtime.cluster_config("a:1,b:2", 1, None) == {
        "cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    assert runtime.cluster_config("a:1", 0, None) is None
    assert runtime.cluster_config("", 0, None) is None
    tf_config = {"cluster": {"chief": ["c:1"], "worker": ["w:2"]},
                 "task": {"type": "worker", "index": 0}}
    assert runtime.cluster_config("", 0, json.dumps(tf_config)) == tf_config
    assert runtime.worker_position(tf_config) == (1, 2)  # the chief counts first
    assert runtime.worker_position(None) == (0, 1)


@pytest.mark.parametrize("workers, index, tf_config, words", [
    ("a:1,b:2", 0, '{"cluster": {"worker": ["a:1"]}}', "give it once"),
    ("a:1,b:2", 2, None, "--worker_index=2"),
    ("a:1,b", 0, None, "host:port"),
    ("a:1,a:1", 0, None, "twice"),
    ("", 1, None, "needs --workers"),
    ("", 0, "{not json", "TF_CONFIG"),
    ("", 0, '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "TF_CONFIG"),
])
def test_a_wrong_cluster_is_one_line_naming_it(workers, index, tf_config, words):
    with pytest.raises(ValueError, match=re.escape(words)) as e:
        runtime.cluster_config(workers, index, tf_config)
    assert "\n" not in str(e.value)


def test_the_program_refuses_flags_and_tf_config_together_as_a_user_error(monkeypatch):
    from absl import flags

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, '
                                    '"task": {"type": "worker", "index": 0}}')
    flags.FLAGS(["trainer.cnn", "--workers=a:1,b:2"])
    try:
        with pytest.raises(program.UserError, match="give it once"):
            cli.cluster_from_flags()
    finally:
        flags.FLAGS.unparse_flags()


# ---------------------------------------------------------------- shard files per worker

def test_each_worker_reads_its_own_whole_shard_files_as_tf_file_sharding_does(tmp_path):
    """worker_files (what a worker logs) is what tf.data's FILE auto-sharding reads, every
    epoch, and the workers' files are disjoint and cover the split."""
    from tensorflow.python.data.experimental.ops import distribute

    images = shard_fixtures.random_images(12, 8)
    root = shard_fixtures.write_tiny_dataset(tmp_path, {"train": images}, 8, num_shards=3)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    paths = [str(tmp_path / s["path"]) for s in manifest["datasets"]["8"]["train"]["shards"]]
    ds = input_pipeline.make_dataset(root, "train", image_size=8, batch_size=1, training=True,
                                     seed=0, as_uint8=True).unbatch()
    record_file = {}  # image bytes -> shard file, from reading each file alone
    for path in paths:
        for serialized in tf.data.TFRecordDataset(path):
            image, _ = input_pipeline.parse_and_decode(serialized, 8)
            record_file[image.numpy().tobytes()] = path
    seen = []
    for index in range(2):
        files = input_pipeline.worker_files(paths, index, 2)
        sharded = distribute._AutoShardDataset(input_pipeline.shard_by_file(ds), 2, index)
        for _ in range(2):  # the per-epoch file shuffle never moves a file to another worker
            read = {record_file[image.numpy().tobytes()] for image, _ in sharded}
            assert read == set(files)
        seen.append(set(files))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(paths)


def test_fewer_train_shards_than_workers_is_refused_naming_num_shards(tmp_path, sample_dir):
    root = shard_fixtures.write_sample_dataset(tmp_path / "data", sample_dir, SIZE,
                                               num_shards=1)
    config = train.TrainConfig(data_dir=root, workdir=str(tmp_path / "run"), image_size=SIZE,
                               batch_size=8, epochs=1, mixed_precision="off", verbose=0)
    manifest = config_lib.check_inputs(config)
    with pytest.raises(config_lib.DataError, match=r"1 shard file\(s\) for 2 workers.*"
                                                   r"--num_shards=2") as e:
        train.check_workers(config, manifest, 0, 2)
    assert isinstance(e.value, program.UserError)  # the program: one line, exit 2
    assert train.check_workers(config, manifest, 0, 1) == [
        os.path.join(root, f"{SIZE}/train/train-00000-of-00001.tfrecord")]
    with pytest.raises(config_lib.ConfigError, match="--max_train_minutes"):
        train.check_workers(dataclasses.replace(config, max_train_minutes=5.0), manifest, 0, 2)
    assert not (tmp_path / "run").exists()


def _run(program, *args, **env_extra):
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **env_extra)
    return subprocess.run([sys.executable, "-m", program, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_cnn_program_refuses_too_few_shards_with_one_line_before_any_cluster(
        tmp_path, sample_dir):
    """No worker is listening at these ports: the refusal comes before the strategy starts."""
    root = shard_fixtures.write_sample_dataset(tmp_path / "data", sample_dir, SIZE,
                                               num_shards=1)
    done = _run("trainer.cnn", "--flagfile=configs/cnn_tiny.flags", f"--data_dir={root}",
                f"--workdir={tmp_path / 'run'}", f"--image_size={SIZE}",
                "--workers=127.0.0.1:1,127.0.0.1:2", "--worker_index=1")
    _assert_user_error(done, "trainer.cnn:", "1 shard file(s) for 2 workers",
                            "--num_shards=2")
    assert not (tmp_path / "run").exists()


def test_the_gan_refuses_several_workers_with_one_line(tmp_path):
    args = (f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'run'}")
    done = _run("trainer.gan", *args, TF_CONFIG=json.dumps(
        {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}))
    _assert_user_error(done, "trainer.gan:", "one process only", "TF_CONFIG")
    _assert_user_error(_run("trainer.gan", *args, "--workers=a:1,b:2"), "workers")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- two worker processes

def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _trainer(args, **env_extra):
    """A trainer.cnn process started in the background (output: stdout and stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", **env_extra)
    return subprocess.Popen([sys.executable, "-m", "trainer.cnn", *args], cwd=REPO_ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _digest(output: str) -> str:
    return re.search(r"trained weights sha256 ([0-9a-f]{64})", output).group(1)


@pytest.mark.slow  # three TensorFlow processes: ~90 s on a busy 2-core machine
def test_two_workers_train_in_step_and_one_process_restores_the_chiefs_checkpoint(
        two_shards, tmp_path):
    workdir = tmp_path / "run"
    common = ["--flagfile=configs/cnn_tiny.flags", f"--data_dir={two_shards}",
              f"--workdir={workdir}", f"--image_size={SIZE}", "--batch_size=8",
              "--steps_per_epoch=2"]
    hosts = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    tf_config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 1}})
    scratch = tmp_path / "tmp"  # where a non-chief worker writes, and must clean up
    scratch.mkdir()
    workers = [_trainer([*common, f"--workers={','.join(hosts)}", "--worker_index=0"],
                        TMPDIR=str(scratch)),
               _trainer(common, TF_CONFIG=tf_config, TMPDIR=str(scratch))]  # both ways
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    digests = [_digest(out) for out in outputs]
    assert digests[0] == digests[1]  # identical weights on both workers
    files = [set(re.search(r"reads \d+ train shard file\(s\): (.*)", out).group(1).split(", "))
             for out in outputs]
    assert not files[0] & files[1]
    assert files[0] | files[1] == {"train-00000-of-00002.tfrecord",
                                   "train-00001-of-00002.tfrecord"}
    # only the chief wrote the run folder, and no worker left its scratch folder
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["workers"] == 2 and summary["weights_sha256"] == digests[0]
    assert "worker 1: done" in outputs[1] and not list(scratch.iterdir())
    # the chief evaluated and exported the model on its own, after the other worker left
    assert (workdir / "report.json").is_file()
    assert (workdir / "export" / "saved_model" / "saved_model.pb").is_file()

    # one process restores the chief's checkpoint (nothing left to train: its weights as they are)
    alone = _trainer([*common, "--noevaluate", "--noexport"])
    output = alone.communicate(timeout=300)[0]
    assert alone.returncode == 0, output
    resumed = json.loads((workdir / "train_summary.json").read_text())
    assert resumed["workers"] == 1 and resumed["epochs_done"] == 2
    assert resumed["weights_sha256"] == digests[0]


@pytest.mark.slow  # two clusters of two TensorFlow processes: ~3 min on a busy 2-core machine
def test_after_a_worker_is_killed_the_same_commands_resume_from_the_chiefs_backup(
        two_shards, tmp_path):
    workdir = tmp_path / "run"
    hosts = ",".join(f"127.0.0.1:{p}" for p in _free_ports(2))
    scratch = tmp_path / "tmp"
    scratch.mkdir()

    def start(index):
        return _trainer(["--flagfile=configs/cnn_tiny.flags", f"--data_dir={two_shards}",
                         f"--workdir={workdir}", f"--image_size={SIZE}", "--batch_size=8",
                         "--steps_per_epoch=2", "--epochs=4", "--noevaluate", "--noexport",
                         f"--workers={hosts}", f"--worker_index={index}"], TMPDIR=str(scratch))

    chief, worker = start(0), start(1)
    backup = workdir / "checkpoints" / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 400
    while not backup.exists():  # the chief has backed up epoch 1: kill the other worker
        assert time.monotonic() < deadline and chief.poll() is None, chief.communicate()[0]
        time.sleep(0.1)
    worker.kill()
    worker.communicate()
    try:  # the chief's next collective fails once the dead worker misses its heartbeats
        output = chief.communicate(timeout=180)[0]
    except subprocess.TimeoutExpired:
        chief.kill()
        output = chief.communicate()[0]
    assert chief.returncode != 0, output
    backed_up = json.loads(backup.read_text())["epoch"]
    assert 1 <= backed_up < 4

    chief, worker = start(0), start(1)  # the same two commands again
    outputs = [p.communicate(timeout=400)[0] for p in (chief, worker)]
    assert [chief.returncode, worker.returncode] == [0, 0], outputs
    for out in outputs:  # both restored the chief's backup and trained only what was left
        assert re.findall(r"^Epoch (\d+)/4", out, re.M) == [str(e) for e in
                                                             range(backed_up + 1, 5)]
    assert _digest(outputs[0]) == _digest(outputs[1])
    history = json.loads((workdir / "history.json").read_text())
    assert history["epoch"] == [1, 2, 3, 4]
