"""Issue #10, 'no silent failure': what the data engine says for each kind of bad root.

Input problems before the pipeline: exit 2, one line `preprocess: error: PATH: ...`, no traceback.
No record written / train or validation empty: exit 3, one error line on stderr and the diagnosis
on stdout after the summary; --allow_empty: exit 0.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from beam_jobs import preprocess
from tests import layout_builders as lb
from tests.conftest import REPO_ROOT
from tests.test_downloads import split_by_label


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines()
            if line.startswith("preprocess: error:")]


def diagnosis_run(capsys) -> str:
    """An exit-3 run's output: stdout (summary, diagnosis) then stderr, which must be the one
    error line."""
    captured = capsys.readouterr()
    assert len(captured.err.splitlines()) == 1 and captured.err.startswith("preprocess: error:")
    return captured.out + captured.err


def test_forced_wrong_layout_is_one_line_exit_2(tmp_path):
    """Case 3 of the issue, as a user runs it: a process, its exit status and stderr."""
    split_by_label(tmp_path / "src", every=30)
    done = subprocess.run([sys.executable, "-m", "beam_jobs.preprocess", "--layout=isic_cli",
                           f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"preprocess: error: --layout=isic_cli does not fit: no isic_cli "
                           f"metadata CSV directly under {tmp_path / 'src'}")
    assert "benign/ (isic_cli), malignant/ (isic_cli)" in last
    assert not (tmp_path / "out").exists()  # nothing written before the input was checked


@pytest.mark.parametrize("make,needle", [
    (lambda root: None, "is not a directory"),
    (lambda root: root.mkdir(), "no ISIC layout recognised under"),
    (lambda root: (root.mkdir(), (root / "train.csv").write_bytes(b"image_name,patient_id\nI,\xff\n")),
     "train.csv: not UTF-8"),
    (lambda root: (root.mkdir(), (root / "ISIC_1.jpg").write_bytes(b"x"),
                   (root / "labels.csv").write_text("file,class\nISIC_1,benign\n")),
     "'labels.csv': 'unrecognised header file,class'}, 0 JSON files (0 named like images), "
     "folders []; for another images-plus-table dataset pass --metadata_csv=PATH"),
])
def test_bad_roots_exit_2_with_one_line(tmp_path, capsys, make, needle):
    root = tmp_path / "src"
    make(root)
    assert preprocess.main([f"--input={root}", f"--output={tmp_path / 'out'}"]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and needle in lines[0] and str(root) in lines[0]


def test_metadata_csv_with_absent_column_exit_2_naming_the_columns(tmp_path, capsys, sample_dir):
    table = lb.write_csv(tmp_path / "labels.csv", ["file", "class"], [["ISIC_0000000", "1"]])
    assert preprocess.main([f"--input={sample_dir}", f"--output={tmp_path / 'out'}",
                            f"--metadata_csv={table}", "--id_column=file",
                            "--label_column=target"]) == 2
    assert error_lines(capsys) == [
        f"preprocess: error: {table}: no column --label_column=target; the file has columns "
        "['file', 'class']"]


def test_escape_hatch_flags_need_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        preprocess.run([f"--output={tmp_path}", "--input=x", "--metadata_csv=a.csv"])
    assert "--metadata_csv needs --id_column and --label_column" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        preprocess.run([f"--output={tmp_path}", "--input=x", "--label_column=a"])
    assert "only go with --metadata_csv" in capsys.readouterr().err


def unrecognised_root(root, sample_dir):
    """Images in a folder with a table no layout knows: read as one class folder, label unknown."""
    images = lb.sample_images(sample_dir, every=40, include_null_diagnosis=False)
    for image in images:
        lb.place_image(image, root / "photos")
    lb.write_csv(root / "photos" / "labels.csv", ["file", "dx_label"],
                 [[i.image_id, i.label] for i in images])
    return images


def test_zero_records_exit_3_with_diagnosis(tmp_path, capsys, sample_dir):
    images = unrecognised_root(tmp_path / "src", sample_dir)
    code = preprocess.main([f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out'}",
                            "--image_size=32"])
    err = diagnosis_run(capsys)
    assert code == 3
    assert f"preprocess: error: no usable dataset from {tmp_path / 'src'}: 0 records written" in err
    assert f"read {len(images)} = written 0 + rejected 0 + filtered {len(images)}" in err
    assert f"top reasons: filtered:filtered_label {len(images)}" in err
    assert ("photos/labels.csv: unused - unrecognised header (no known ISIC layout has these "
            "columns) header file,dx_label") in err
    assert "--metadata_csv=PATH" in err and "--allow_empty" in err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metadata_files"][0]["header"] == ["file", "dx_label"]

    # the escape hatch the diagnosis points to reads the same root
    manifest = preprocess.run([f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out2'}",
                               "--image_size=32", f"--metadata_csv={tmp_path / 'src/photos/labels.csv'}",
                               "--id_column=file", "--label_column=dx_label",
                               "--malignant_values=malignant",
                               "--keep_degenerate"])  # every image, striped ones too
    assert manifest["layout"] == "metadata_csv"
    assert manifest["totals"]["written"] == len(images)
    assert manifest["metadata_files"][0]["role"] == "layout"


def test_most_inputs_rejected_exits_3(tmp_path, capsys, sample_dir):
    """Half the sidecars gone: a run that writes far less than it read says why, non-zero."""
    images = [i for i in lb.sample_images(sample_dir, every=20) if i.image_id != "ISIC_0000000"]
    lb.build_legacy_json(tmp_path / "src", images)
    for image in images[::2]:
        (tmp_path / "src" / image.sidecar_path.name).unlink()
    code = preprocess.main([f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out'}",
                            "--image_size=32", "--keep_degenerate"])
    err = diagnosis_run(capsys)
    assert code == 3
    assert f"{len(images[::2])} of {len(images)} inputs rejected (more than 33%)" in err
    assert f"rejected:missing_metadata {len(images[::2])}" in err


def test_allow_empty_exits_0_with_a_warning(tmp_path, capsys, sample_dir, caplog):
    unrecognised_root(tmp_path / "src", sample_dir)
    assert preprocess.main([f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out'}",
                            "--image_size=32", "--allow_empty"]) == 0
    assert "--allow_empty: no usable dataset" in caplog.text
    assert error_lines(capsys) == []


def test_empty_validation_split_exit_3(tmp_path, capsys, sample_dir):
    images = lb.sample_images(sample_dir, every=60, include_null_diagnosis=False)
    root = lb.build_isic_cli(tmp_path / "src", images)
    args = [f"--input={root}", "--image_size=32", "--split=100,0,0"]
    # a split asked to be empty is not a problem ...
    assert preprocess.main(args + [f"--output={tmp_path / 'ok'}"]) == 0
    # ... one left empty by too few groups is
    capsys.readouterr()
    assert preprocess.main(args[:-1] + ["--split=99,1,0", f"--output={tmp_path / 'out'}"]) == 3
    assert "split validation is empty" in diagnosis_run(capsys)


def test_two_downloads_end_to_end(tmp_path, capsys):
    """Case 1 of the issue through the whole job: per-download counts, one diagnosis vocabulary."""
    parts = split_by_label(tmp_path / "src", every=10, names=("search-1", "search-2"))
    manifest = preprocess.run([f"--input={tmp_path / 'src'}", f"--output={tmp_path / 'out'}",
                               "--image_size=32"])
    assert manifest["layout"] == "downloads"
    n1, n2 = len(parts["search-1"]), len(parts["search-2"])
    assert manifest["totals"]["written"] == n1 + n2
    assert manifest["downloads"] == {
        "search-1": {"layout": "isic_cli", "records": n1, "rejections": 0, "written": n1},
        "search-2": {"layout": "isic_cli", "records": n2, "rejections": 0, "written": n2}}
    assert manifest["counts"]["per_download_label"] == {"search-1": {"benign": n1},
                                                        "search-2": {"malignant": n2}}
    assert manifest["counts"]["diagnosis"] == {"melanoma": n2, "nevus": n1}
    assert [m["role"] for m in manifest["metadata_files"]] == ["layout", "layout"]
    out = capsys.readouterr().out
    assert f"download search-1/: isic_cli, read {n1} records, written {n1}" in out
