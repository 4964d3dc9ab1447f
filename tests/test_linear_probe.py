"""benchmarks.linear_probe: an encoder's frozen features, one logistic regression, scored on
a held-out dataset."""
import json
import os

import keras
import numpy as np
import pytest

from benchmarks import linear_probe
from tests.shard_fixtures import source_items, write_tiny_dataset
from trainer.cnn import contrastive, models, pretrained_encoder

SIZE = 32


def test_parse_encoders_refuses_what_is_not_a_new_pair():
    assert linear_probe.parse_encoders("a=x,b=random:compact") == {"a": "x",
                                                                   "b": "random:compact"}
    for bad in ("a", "a=", "=x", "a=x,a=y", ""):
        with pytest.raises(ValueError, match="--encoders"):
            linear_probe.parse_encoders(bad)


def _levels(n, seed):
    """Flat images whose grey level says the label: benign dark, malignant bright."""
    items = source_items(n, "clinic", seed, SIZE)
    return [(np.full((SIZE, SIZE, 3), 40 if label == "benign" else 215, np.uint8), label, meta)
            for _, label, meta in items]


def test_the_program_scores_every_kind_of_encoder(tmp_path):
    train = write_tiny_dataset(tmp_path / "train", {"train": _levels(12, 0)}, SIZE)
    heldout = write_tiny_dataset(tmp_path / "heldout", {"train": _levels(6, 1),
                                                        "test": _levels(4, 2)}, SIZE)
    run = tmp_path / "pretrain"
    run.mkdir()
    keras.utils.set_random_seed(1)
    contrastive.build_encoder("compact", SIZE).save(run / pretrained_encoder.ENCODER_NAME)
    cnn = tmp_path / "cnn"  # a trainer.cnn run folder: its model cut at gap
    cnn.mkdir()
    models.build_model("compact", SIZE, dropout=0.2).save(cnn / "model.keras")
    out = tmp_path / "out"
    code = linear_probe.main([f"--encoders=random=random:compact,simclr={run},cnn={cnn}",
                              f"--train_data={train}", f"--heldout_data={heldout}",
                              f"--image_size={SIZE}", f"--output={out}", "--resamples=50"])
    assert code == 0
    result = json.loads((out / "linear_probe.json").read_text())
    assert result["train_images"] == 12 and result["heldout_images"] == 10
    assert [r["encoder"] for r in result["rows"]] == ["random", "simclr", "cnn"]
    for row in result["rows"]:  # a grey level any net's pooled features carry
        assert row["heldout_auc"] == 1.0 and row["features"] == 128
    assert os.path.isfile(out / "linear_probe.md")
    assert linear_probe.main([f"--encoders=x={tmp_path}", f"--train_data={train}",
                              f"--heldout_data={heldout}", f"--image_size={SIZE}",
                              f"--output={out}"]) == 2
