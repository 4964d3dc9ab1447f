"""benchmarks.learning_curve: the slope of held-out AUC per doubling of the training set, on
fake protocol workdirs whose scores get better with more data (or do not)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import learning_curve
from tests.test_protocol import _fake_protocol

LABELS = np.r_[np.zeros(150), np.ones(50)]


def _point(root, fraction, train_images, signal, rng, sources=("north",), engine=()):
    """A protocol workdir of one training-set size: 3 seeds whose held-out scores carry
    `signal` x label, its protocol.json naming the --train_fraction, and each source's
    without_<source> manifest with train_images training records."""
    workdir = _fake_protocol(root, [], {s: (LABELS, [signal * LABELS + rng.uniform(
        0, 1, LABELS.size) for _ in range(3)]) for s in sources}, engine_flags=engine)
    result = json.loads((root / "protocol.json").read_text())
    result["train_engine_flags"] = [f"--train_fraction={fraction}"] if fraction < 1 else []
    for source in sources:
        result["rows"][source]["in_source_validation"] = {"auc": {"mean": 0.9, "sd": 0.01}}
        data = root / "data" / f"without_{source}"
        data.mkdir(parents=True)
        (data / "manifest.json").write_text(json.dumps(
            {"datasets": {"64": {"train": {"records": train_images}}},
             "config": {"train_fraction": fraction}}))
    (root / "protocol.json").write_text(json.dumps(result))
    return workdir


def test_slope_per_doubling_and_doublings_to_a_target(tmp_path, capsys):
    rng = np.random.default_rng(0)
    workdirs = [_point(tmp_path / f"p{k}", f, n, signal, rng, sources=("north", "south"))
                for k, (f, n, signal) in enumerate([(0.25, 400, 0.1), (0.5, 800, 0.3),
                                                    (1.0, 1600, 0.5)])]
    assert learning_curve.main([f"--workdirs={','.join(workdirs)}", "--resamples=200",
                                f"--output={tmp_path / 'out'}", "--target=0.99"]) == 0
    result = json.loads((tmp_path / "out" / "learning_curve.json").read_text())
    north = result["rows"]["north"]
    assert [p["train_images"] for p in north["points"]] == [400, 800, 1600]
    assert [p["train_fraction"] for p in north["points"]] == [0.25, 0.5, 1.0]
    means = [p["heldout_auc"]["mean"] for p in north["points"]]
    assert means[0] < means[1] < means[2]
    # the least-squares slope through all nine runs, and its interval clear of 0
    x = np.repeat(np.log2([400, 800, 1600]), 3)
    y = [a for p in north["points"] for a in p["heldout_auc"]["per_seed"]]
    assert north["slope_per_doubling"] == pytest.approx(np.polyfit(x, y, 1)[0])
    assert north["slope_ci"][0] > 0
    assert north["doublings_to_target"] == pytest.approx(
        (0.99 - means[2]) / north["slope_per_doubling"])
    mean = result["mean over sources"]
    assert mean["slope_per_doubling"] == pytest.approx(np.mean(
        [result["rows"][s]["slope_per_doubling"] for s in ("north", "south")]))
    assert "| north | 0.25 | 400 |" in (tmp_path / "out" / "learning_curve.md").read_text()


def test_doublings_along_a_straight_line_and_never_for_a_flat_one():
    assert learning_curve.doublings_to(0.88, 0.70, 0.0) == math.inf
    assert learning_curve.doublings_to(0.88, 0.90, 0.01) == 0.0
    assert learning_curve.doublings_to(0.88, 0.70, 0.02) == pytest.approx(9.0)
    with pytest.raises(ValueError, match=">= 2 training-set sizes"):
        learning_curve.log2_slope([10.0, 10.0], [0.7, 0.8])
    assert learning_curve.finite_or_none(math.inf) is None


def test_workdirs_that_scored_other_images_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(2)
    a = _point(tmp_path / "a", 0.5, 800, 0.3, rng)
    b = _point(tmp_path / "b", 1.0, 1600, 0.3, rng, engine=["--dx_map=bcc:benign"])
    assert learning_curve.main([f"--workdirs={a},{b}", f"--output={tmp_path / 'o'}"]) == 1
    assert "engine flags differ" in capsys.readouterr().err
    c = _point(tmp_path / "c", 1.0, 1600, 0.3, rng)
    for csv in (tmp_path / "c" / "runs").glob("north/seed_*/protocol/heldout/predictions.csv"):
        # another image under an id that sorts where the first did: same labels, other ids
        csv.write_text(csv.read_text().replace("ISIC_0000000,", "ISIC_0000000b,"))
    assert learning_curve.main([f"--workdirs={a},{c}", f"--output={tmp_path / 'o'}"]) == 1
    assert "north: " in (err := capsys.readouterr().err) and "scored other held-out images" in err
