"""The model card (trainer.cnn.model_card): export/MODEL_CARD.md, built from the run's report.json,
the dataset's manifest and the serving config, with the real numbers."""
import json
import math

import pytest

from isicflow import dataset
from tests import shard_fixtures
from trainer.cnn import model_card

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

SIZE = 32
SECTIONS = ["Intended use", "Training data", "Validation and test metrics",
            "Per source and per subgroup", "Threshold", "Known failure modes and limits"]


def _source(i: int) -> str:
    return ("clinic_a", "clinic_b")[(i // 2) % 2]  # labels alternate: both classes per source


@pytest.fixture(scope="module")
def sourced_dataset(tmp_path_factory, sample_dir):
    """Real images, 8 train / 4 validation / 8 test, from two source collections, with sex, age
    and Fitzpatrick type; the manifest's counts as the engine writes them."""
    n_per_split = {"train": 8, "validation": 4, "test": 8}
    images, used, kept = {}, 0, []
    for split, n in n_per_split.items():
        items = []
        for i, (pixels, label) in enumerate(shard_fixtures.load_sample_images(sample_dir, n,
                                                                             offset=used)):
            extra = {"source_collection": _source(i), "sex": ("female", "male")[i % 3 % 2],
                     "age_approx": float(25 + 10 * i), "diagnosis": "melanoma"
                     if label == "malignant" else "nevus",
                     "fitzpatrick_skin_type": ("II", "IV")[(i // 4) % 2],
                     "extra_metadata_json": json.dumps(
                         {"dx_type": ("histo", "follow_up")[i % 2]} if i < 6 else {})}
            items.append((pixels, label, extra))
            kept.append({"split": split, "label": label, "diagnosis": extra["diagnosis"],
                         "source": extra["source_collection"],
                         "fitzpatrick": extra["fitzpatrick_skin_type"]})
        images[split] = items
        used += (n + 1) // 2
    root = shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("sourced"), images, SIZE)
    path = f"{root}/{dataset.MANIFEST_NAME}"
    manifest = json.load(open(path))
    manifest["counts"] = dataset.summarize_counts(kept)
    manifest["config"] = {"input": "/data/two-clinics", "image_types": ["dermoscopic"],
                          "label_policy": "benign_malignant", "min_original_size": 0}
    json.dump(manifest, open(path, "w"))
    return root


@pytest.fixture(scope="module")
def trained(sourced_dataset, tmp_path_factory):
    """A tiny training run (one step), evaluated and exported as trainer.cnn does."""
    from trainer.cnn import cli, train

    workdir = tmp_path_factory.mktemp("run")
    config = train.TrainConfig(data_dir=sourced_dataset, workdir=str(workdir), image_size=SIZE,
                               batch_size=8, epochs=1, steps_per_epoch=1, seed=0,
                               mixed_precision="off", verbose=0, model="compact")
    result = train.train_cnn(config)
    done = cli.evaluate_and_export(result.model, config, bootstrap=50,
                                   threshold_policy="youden")
    return workdir, done


def _num(value, digits=3):
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else f"{value:.{digits}f}"


def test_export_writes_the_card_with_the_reports_numbers(trained):
    workdir, done = trained
    path = workdir / "export" / model_card.MODEL_CARD_NAME
    assert done["export"]["model_card"] == str(path) and path.is_file()
    card = path.read_text()
    report = json.loads((workdir / "report.json").read_text())
    assert model_card.sections(card) == SECTIONS
    assert "**Not for clinical use.**" in card
    # training data: the dataset, the manifest's counts per split/label and per source
    assert report["data"]["data_dir"] in card and "/data/two-clinics" in card
    assert "| train | 4 | 4 | 8 |" in card  # benign, malignant, total
    assert "| clinic_a | 4 | 2 | 4 | 5 | 5 | 10 |" in card  # per split, per label, total
    assert "Diagnoses (all splits): nevus 10, melanoma 10." in card
    # validation/test metrics with their intervals, as report.json has them
    for split in ("validation", "test"):
        m = report["splits"][split]
        auc = m["bootstrap"]["intervals"]["auc"]
        row = f"| {split} | {m['cases']} | {m['malignant']} | {_num(m['auc'])}"
        if auc["low"] is not None:
            row += f" [{_num(auc['low'])}, {_num(auc['high'])}]"
        assert row in card, row
    # per source and per subgroup, from the report's breakdown of the test split
    fields = report["breakdown"]["fields"]
    assert set(fields) == {"source_collection", "diagnosis", "anatom_site", "sex", "age_approx",
                           "fitzpatrick_skin_type", "diagnosis_confirmation"}
    for source in ("clinic_a", "clinic_b"):
        g = fields["source_collection"]["groups"][source]
        assert g["cases"] == 4 and g["malignant"] == 2
        text = f"| {source} | 4 | 2 | {_num(g['auc'])}"
        if g.get("auc_interval", {}).get("low") is not None:
            text += f" [{_num(g['auc_interval']['low'])}, {_num(g['auc_interval']['high'])}]"
        assert text in card, text
    for title in ("### Source collection", "### Sex", "### Age (years)",
                  "### Fitzpatrick skin type"):
        assert title in card
    assert set(fields["fitzpatrick_skin_type"]["groups"]) == {"II", "IV"}
    # HAM10000's dx_type codes in the ISIC archive's words; test records 6-7 record none
    confirmed = fields["diagnosis_confirmation"]["groups"]
    assert {n: g["cases"] for n, g in confirmed.items()} == {
        "histopathology": 3, "serial imaging showing no change": 3, "(missing)": 2}
    assert "### How the diagnosis was confirmed" in card
    assert f"| histopathology | 3 | {confirmed['histopathology']['malignant']} |" in card
    assert "Lesions that were excised are harder" in card
    assert set(fields["age_approx"]["groups"]) <= {"<30", "30-49", "50-69", ">=70"}
    # the threshold and how it was chosen
    threshold = report["threshold"]
    assert f"**{threshold['threshold']:.4f}**" in card
    assert f"policy `{threshold['policy']}`" in card and threshold["reason"] in card
    # failure modes
    assert "Trained on the listed sources only** (clinic_a, clinic_b)" in card
    assert "see docs/results" in card and "Dermoscopic images only" in card
    assert "rejected: <reason>" in card and "below 32 px" in card


def test_build_card_is_pure_and_says_what_it_lacks():
    serving = {"image_size": 64, "threshold": 0.5, "threshold_source": "default 0.5",
               "tta": False, "min_image_side": 32}
    card = model_card.build_card(report=None, manifest=None, serving_config=serving)
    assert model_card.sections(card) == SECTIONS
    assert "Not evaluated: the run folder holds no report.json." in card
    assert "holds no per-group breakdown" in card and "default 0.5" in card
    assert card == model_card.build_card(report=None, manifest=None, serving_config=serving)
    report = {"task": "diagnosis", "config": {"architecture": "recipe", "seed": 3},
              "splits": {"test": {"n": 10, "balanced_accuracy": 0.61, "accuracy": 0.7,
                                  "per_class_recall": {"mel": 0.5, "nevus": 0.9}}}}
    diagnosis = model_card.build_card(report=report, manifest=None, serving_config={
        "task": "diagnosis", "classes": ["mel", "nevus"], "image_size": 64})
    assert "| test | 10 | 0.610 | 0.700 |" in diagnosis and "mel 0.500" in diagnosis
    assert "most probable class is reported" in diagnosis and "`recipe`" in diagnosis


def test_card_says_when_the_engine_remapped_labels():
    """--dx_map=bcc:benign,akiec:benign makes "malignant" mean melanoma: the card must say so,
    and a plain benign/malignant dataset must not carry the warning."""
    serving = {"image_size": 64, "threshold": 0.5, "threshold_source": "default 0.5"}
    engine = {"input": "/data/ham", "image_types": ["dermoscopic"],
              "label_policy": "benign_malignant"}
    plain = model_card.build_card(report=None, manifest={"config": engine},
                                  serving_config=serving)
    remapped = model_card.build_card(
        report=None, manifest={"config": {**engine, "dx_map": "bcc:benign,akiec:benign"}},
        serving_config=serving)
    assert "Labels remapped" not in plain
    assert "`--dx_map=bcc:benign,akiec:benign`" in remapped and "melanoma vs rest" in remapped


def test_card_names_a_pretrained_encoder_and_only_then():
    """Images that pretrained the encoder (trainer.cnn.pretrain) trained the model too, without
    labels: the card points at the run that lists them."""
    serving = {"image_size": 64, "threshold": 0.5, "threshold_source": "default 0.5"}
    plain = model_card.build_card(report=None, manifest=None, serving_config=serving,
                                  run_config={"image_size": 64})
    pretrained = model_card.build_card(report=None, manifest=None, serving_config=serving,
                                       run_config={"image_size": 64,
                                                   "init_encoder": "out/pretrain/run"})
    assert "pretrained on unlabelled images" not in plain
    assert "started from `out/pretrain/run`, pretrained on unlabelled images" in pretrained
    assert model_card.sections(pretrained) == SECTIONS
