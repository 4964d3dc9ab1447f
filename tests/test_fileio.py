"""The engine's file access (Beam's file systems, TensorFlow's for other schemes), and the
promise it serves: the pipeline's steps run without importing TensorFlow."""
import gzip
import os
import pathlib
import subprocess
import sys
import textwrap

from isicflow import fileio

# Subprocesses import this checkout, not whatever checkout the environment installed.
_ENV = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1])}


def test_local_write_read_rename_delete(tmp_path):
    path = str(tmp_path / "a" / "b" / "x.bin")
    fileio.write_bytes(path, b"hello")  # parents created
    assert fileio.read_bytes(path) == b"hello" and fileio.exists(path)
    moved = str(tmp_path / "c" / "y.bin")
    fileio.write_bytes(moved, b"old")
    fileio.rename(path, moved)  # replaces, creates nothing it should not
    assert fileio.read_bytes(moved) == b"hello" and not fileio.exists(path)
    fileio.delete_tree(str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    fileio.delete_tree(str(tmp_path / "never-made"))  # absent: nothing to do


def test_tensorflow_only_scheme_falls_back_to_gfile():
    root = "ram://isicflow-fileio-test"
    fileio.write_bytes(f"{root}/d/x.bin", b"abc")
    fileio.rename(f"{root}/d/x.bin", f"{root}/e/y.bin")
    assert fileio.read_bytes(f"{root}/e/y.bin") == b"abc"
    fileio.delete_tree(f"{root}/e")
    assert not fileio.exists(f"{root}/e/y.bin")


def test_gzip_writer_is_deterministic_and_standard(tmp_path):
    outputs = []
    for name in ("one.gz", "two.gz"):
        with fileio.open_write(str(tmp_path / name)) as raw:
            with fileio.gzip_writer(raw) as out:
                out.write(b"payload" * 100)
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    assert gzip.decompress(outputs[0]) == b"payload" * 100


def test_pipeline_steps_run_without_tensorflow(tmp_path, sample_dir):
    """Decode, resize, encode, spool, plan and shard writing in a fresh interpreter: TensorFlow
    is never imported, so worker processes skip its ~3 s import and ~0.5 GB."""
    code = textwrap.dedent(f"""
        import sys
        from beam_jobs.config import PreprocessConfig
        from beam_jobs.transforms import ProcessImage, plan_shards
        from beam_jobs.writing import WriteShard
        from isicflow.metadata import LesionRecord
        config = PreprocessConfig(input="x", output={str(tmp_path)!r}, image_sizes=(64,))
        step = ProcessImage(config)
        step.setup()
        record = LesionRecord(image_id="ISIC_0000157", label="benign",
                              image_path={str(sample_dir / "ISIC_0000157.jpg")!r})
        images = list(step.process(record))
        step.finish_bundle()
        shards = [s for s in plan_shards(images, config) if isinstance(s, tuple)]
        written = [w for s in shards for w in WriteShard(config).process(s)]
        assert written and written[0]["records"] == 1, written
        assert "tensorflow" not in sys.modules, "a pipeline step imported TensorFlow"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path.parent), env=_ENV)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]


def test_launcher_file_access_on_local_paths_needs_no_tensorflow(tmp_path, sample_dir):
    """Reading a local layout and preparing a local --output (with --overwrite) go through os and
    Beam, never TensorFlow."""
    out = tmp_path / "out"
    (out / "128").mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    code = textwrap.dedent(f"""
        import sys
        from beam_jobs import layouts, preprocess
        from beam_jobs.config import PreprocessConfig
        result = layouts.read_layout({str(sample_dir)!r})
        assert len(result.records) == 440, len(result.records)
        preprocess.prepare_output(PreprocessConfig(input="x", output={str(out)!r}, overwrite=True))
        preprocess.prepare_output(PreprocessConfig(input="x", output={str(out / "new")!r}))
        assert "tensorflow" not in sys.modules, "the launcher imported TensorFlow"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=str(tmp_path.parent), env=_ENV)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["new"]
