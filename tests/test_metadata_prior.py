"""benchmarks.metadata_prior: per-source age AUC and site shares from a metadata table."""
from __future__ import annotations

import json

import pytest

from benchmarks import metadata_prior

HEADER = "image_id,dx,age,sex,localization,dataset"


def _table(tmp_path, lines):
    path = tmp_path / "meta.csv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def test_age_ranks_melanoma_in_one_clinic_and_inverts_in_another(tmp_path):
    # Clinic "old": melanomas older than the rest (age AUC 1.0); clinic "young": younger (0.0).
    lines = [f"a{i},nv,{30 + i},male,back,old" for i in range(4)]
    lines += [f"b{i},mel,{70 + i},male,back,old" for i in range(2)]
    lines += [f"c{i},nv,{60 + i},female,trunk,young" for i in range(3)]
    lines += ["d0,mel,20,female,trunk,young", "d1,mel,,female,trunk,young"]
    out = tmp_path / "out"
    assert metadata_prior.main([f"--metadata_csv={_table(tmp_path, lines)}",
                                f"--output={out}"]) == 0
    result = json.loads((out / "metadata_prior.json").read_text())
    old, young = result["age"]["old"], result["age"]["young"]
    assert old["age_auc"] == pytest.approx(1.0) and young["age_auc"] == pytest.approx(0.0)
    assert young["no_age"] == 1 and young["positives"] == 2
    assert old["age_positive"] == pytest.approx(70.5) and young["age_other"] == pytest.approx(61)
    assert result["sites"]["trunk"] == {"old": 0.0, "young": 1.0}
    assert "| young | 5 (2) | 0.000 |" in (out / "metadata_prior.md").read_text()


def test_missing_columns_and_an_absent_positive_label_are_refused(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("image_id,dx\nx,nv\n")
    assert metadata_prior.main([f"--metadata_csv={path}", f"--output={tmp_path}"]) == 2
    assert "needs the columns" in capsys.readouterr().err
    table = _table(tmp_path, ["a,nv,40,male,back,s"])
    assert metadata_prior.main([f"--metadata_csv={table}", f"--output={tmp_path}",
                                "--positive=melanoma"]) == 2
    assert "no row has it" in capsys.readouterr().err
