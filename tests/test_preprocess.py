"""End-to-end tests of the data engine's run(argv) on the real sample and built layouts."""
import collections
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from beam_jobs import preprocess
from beam_jobs.config import PreprocessConfig
from isicflow import imaging, schema
from tests import layout_builders as lb
from tests import near_copies


def read_records(root: pathlib.Path, manifest: dict, size: int) -> dict[str, list[dict]]:
    """All records of one size, per split, parsed with the shared schema."""
    import tensorflow as tf

    out = {}
    for split, info in manifest["datasets"][str(size)].items():
        records = []
        for shard in info["shards"]:
            ds = tf.data.TFRecordDataset(str(root / shard["path"]),
                                         compression_type=manifest["compression"])
            records += [schema.decode_example_py(r.numpy()) for r in ds]
        assert len(records) == info["records"]
        out[split] = records
    return out


def stored_pixels(record: dict) -> np.ndarray:
    import tensorflow as tf

    return imaging.decode_stored_image(tf.constant(record["image_encoded"]),
                                       tf.constant(record["image_format"]),
                                       record["height"], record["width"]).numpy()


@pytest.fixture(scope="module")
def real_run(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uda1")
    manifest = preprocess.run([f"--input={sample_dir}", f"--output={out}", "--image_size=128,64",
                               "--image_format=raw"])
    return out, manifest


def test_real_sample_counts(real_run, sample_dir):
    out, manifest = real_run
    # The 84 striped JPEGs the data README lists hold no picture: rejected as degenerate_image.
    assert manifest["totals"] == {"read": 440, "written": 356, "rejected": 84, "filtered": 0,
                                  "duplicates": 0}
    assert manifest["reasons"] == {"rejected:degenerate_image": 84}
    per_split = manifest["counts"]["per_split_label"]
    # 254 benign + 102 malignant, 70/20/10 per label (rounded by the group-aware assignment).
    assert per_split == {"train": {"benign": 177, "malignant": 72},
                         "validation": {"benign": 51, "malignant": 21},
                         "test": {"benign": 25, "malignant": 10}}
    assert manifest["near_duplicate_groups"] == []  # no two real images are near-identical
    for size in (128, 64):
        records = read_records(out, manifest, size)
        assert {s: len(r) for s, r in records.items()} == {"train": 249, "validation": 72, "test": 35}
        ids = [r["image_id"] for rs in records.values() for r in rs]
        assert len(ids) == len(set(ids)) == 356
        assert all(r["split"] == s for s, rs in records.items() for r in rs)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["image_id"] for r in rejects} == near_copies.degenerate_ids(sample_dir.parent)
    assert {(r["reason"], r["kind"]) for r in rejects} == {("degenerate_image", "rejected")}
    assert not (out / ".incomplete").exists()


def test_stored_images_match_independent_resize(real_run, sample_dir):
    """Every stored record decodes; each is its source resized within 2 levels of TensorFlow's
    antialiased bilinear (ScaleAndTranslate), an implementation independent of ours (Pillow's)."""
    import tensorflow as tf

    out, manifest = real_run
    records = read_records(out, manifest, 128)
    worst = 0
    for split_records in records.values():
        for record in split_records:
            pixels = stored_pixels(record)
            assert pixels.shape == (128, 128, 3)
            source = np.asarray(Image.open(sample_dir / f"{record['image_id']}.jpg").convert("RGB"))
            expected = tf.image.resize(source, [128, 128], "bilinear", antialias=True).numpy()
            expected = np.clip(np.round(expected), 0, 255).astype(int)
            worst = max(worst, int(np.abs(pixels.astype(int) - expected).max()))
    assert worst <= 2, f"max abs pixel difference {worst} > 2"


def test_manifest_sizes_and_checksums_match_the_shard_files(real_run):
    import hashlib

    out, manifest = real_run
    for per_split in manifest["datasets"].values():
        for info in per_split.values():
            for shard in info["shards"]:
                data = (out / shard["path"]).read_bytes()
                assert len(data) == shard["bytes"]
                assert hashlib.sha256(data).hexdigest() == shard["sha256"]


def test_record_metadata_comes_from_sidecars(real_run, sample_dir):
    out, manifest = real_run
    by_id = {r["image_id"]: r for rs in read_records(out, manifest, 64).values() for r in rs}
    sidecar = json.loads((sample_dir / "ISIC_0000157.json").read_text())["meta"]
    record = by_id["ISIC_0000157"]  # ISIC_0000000 is a degenerate image: not written
    assert record["label_name"] == sidecar["clinical"]["benign_malignant"]
    assert record["label"] == {"benign": 0, "malignant": 1}[record["label_name"]]
    assert record["age_approx"] == sidecar["clinical"]["age_approx"]
    assert record["sex"] == sidecar["clinical"]["sex"]
    assert record["image_type"] == "dermoscopic"
    assert (record["original_width"], record["original_height"]) == (250, 250)


def test_two_runs_are_byte_identical(sample_dir, tmp_path):
    images = lb.sample_images(sample_dir, every=8)
    source = lb.build_legacy_json(tmp_path / "src", images)
    outputs = []
    # --profile_phases changes what is printed, never what is written.
    for name, extra in (("a", []), ("b", ["--direct_num_workers=2", "--profile_phases",
                                          "--direct_running_mode=multi_threading"])):
        out = tmp_path / name
        preprocess.run([f"--input={source}", f"--output={out}", "--image_size=48",
                        "--compression=gzip", "--num_shards=3"] + extra)
        outputs.append(out)
    files = [sorted(p.relative_to(o) for p in o.rglob("*") if p.is_file()) for o in outputs]
    assert files[0] == files[1]
    assert len([f for f in files[0] if f.suffix == ".gz"]) == 9  # 3 splits x 3 shards
    for rel in files[0]:
        assert (outputs[0] / rel).read_bytes() == (outputs[1] / rel).read_bytes(), rel


def _ham_lesions_of_four(sample_dir, root):
    """Every second sample image in a HAM10000 layout at root, four images to a lesion id:
    (the images, root)."""
    images = lb.sample_images(sample_dir, every=2)
    rows = []
    for index, image in enumerate(images):
        lb.place_image(image, root / "HAM10000_images_part_1")
        rows.append([f"HAM_{index // 4:07d}", image.image_id, lb.DX_CODE[image.diagnosis],
                     "histo", lb.age_cell(image), lb.sex_cell(image, "unknown"), "back"])
    lb.write_csv(root / "HAM10000_metadata.csv",
                 ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    return images, root


def test_groups_never_cross_splits(sample_dir, tmp_path):
    """HAM10000 lesion ids shared by 4 images each: every lesion stays in one split."""
    images, root = _ham_lesions_of_four(sample_dir, tmp_path / "src")
    # --keep_degenerate: every sampled image is written, the striped ones too.
    manifest = preprocess.run([f"--input={root}", f"--output={tmp_path / 'out'}",
                               "--image_size=32", "--keep_degenerate"])
    splits_of_lesion = collections.defaultdict(set)
    for split, records in read_records(tmp_path / "out", manifest, 32).items():
        for r in records:
            splits_of_lesion[r["lesion_id"]].add(split)
    assert len(splits_of_lesion) == (len(images) + 3) // 4
    assert {len(s) for s in splits_of_lesion.values()} == {1}
    assert manifest["totals"]["written"] == len(images)


def test_train_fraction_writes_a_nested_share_of_train_and_the_same_held_out_splits(
        sample_dir, tmp_path):
    """A learning curve's sets: on a HAM layout with lesions of 4 images, --train_fraction
    leaves validation and test record for record as they were, keeps whole lesions, about the
    share of each label, each smaller share inside the larger, and records every image it left
    out as filtered (not lost)."""
    images, root = _ham_lesions_of_four(sample_dir, tmp_path / "src")
    ids, lesions, labels = {}, {}, {}
    for fraction in (1.0, 0.5, 0.25):
        out = tmp_path / f"f{fraction}"
        manifest = preprocess.run([f"--input={root}", f"--output={out}", "--image_size=32",
                                   "--keep_degenerate", f"--train_fraction={fraction}"])
        records = read_records(out, manifest, 32)
        ids[fraction] = {split: {r["image_id"] for r in rs} for split, rs in records.items()}
        lesions[fraction] = collections.Counter(r["lesion_id"] for r in records["train"])
        labels[fraction] = collections.Counter(r["label"] for r in records["train"])
        rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
        left_out = {r["image_id"] for r in rejects if r["reason"] == "filtered_train_fraction"}
        assert {r["kind"] for r in rejects if r["image_id"] in left_out} <= {"filtered"}
        assert len(left_out) + len(ids[fraction]["train"]) == len(ids[1.0]["train"])
        assert not left_out & ids[fraction]["train"]
        assert manifest["config"]["train_fraction"] == fraction
    for fraction in (0.5, 0.25):
        for split in ("validation", "test"):
            assert ids[fraction][split] == ids[1.0][split]
        for lesion, n in lesions[fraction].items():
            assert n == lesions[1.0][lesion]  # a lesion's images go or stay together
        for label, n in labels[1.0].items():
            assert abs(labels[fraction][label] - fraction * n) <= 4  # one lesion of 4 images
    assert ids[0.25]["train"] < ids[0.5]["train"] < ids[1.0]["train"]


def test_a_cross_validation_fold_that_tests_nothing_is_not_a_usable_dataset():
    """More folds than patient/lesion groups leaves a fold's test split empty: refused (exit 3
    unless --allow_empty), where a fixed split's empty test is not a problem."""
    manifest = {"totals": {"written": 3, "rejected": 0, "read": 3},
                "datasets": {"32": {"train": {"records": 2}, "validation": {"records": 1},
                                    "test": {"records": 0}}}}
    folds = PreprocessConfig(input="in", output="out", folds=5, fold=4,
                             split_fractions=(0.6, 0.2, 0.2))
    assert preprocess.empty_problems(manifest, folds) == [
        "split test is empty (--folds=5 --fold=4: fewer patient/lesion groups than folds?)"]
    assert preprocess.empty_problems(manifest, PreprocessConfig(input="in", output="out")) == []


@pytest.mark.parametrize("builder", ["build_isic_cli", "build_class_folders", "build_isic2020"])
def test_layouts_give_the_same_dataset(builder, sample_dir, tmp_path):
    images = lb.sample_images(sample_dir, every=11)
    legacy = lb.build_legacy_json(tmp_path / "legacy", images)
    other = getattr(lb, builder)(tmp_path / "other", images)
    results = []
    for name, source in (("legacy", legacy), ("other", other)):
        manifest = preprocess.run([f"--input={source}", f"--output={tmp_path / ('out-' + name)}",
                                   "--image_size=32", "--image_types=all", "--keep_degenerate"])
        records = read_records(tmp_path / ("out-" + name), manifest, 32)
        results.append(sorted((r["image_id"], r["label_name"], r["image_encoded"])
                              for rs in records.values() for r in rs))
    assert len(results[0]) == len(images)
    assert results[0] == results[1]


def test_refuses_non_empty_output_without_overwrite(sample_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [f"--input={sample_dir}", f"--output={out}", "--image_size=32"]
    with pytest.raises(preprocess.OutputNotEmpty, match="--overwrite"):
        preprocess.run(args)
    with pytest.raises(preprocess.OutputNotEmpty, match="did not write"):
        preprocess.run(args + ["--overwrite"])
    assert (out / "notes.txt").read_text() == "mine"


def test_killed_run_leaves_no_manifest_and_overwrite_recovers(sample_dir, tmp_path, monkeypatch):
    images = lb.sample_images(sample_dir, every=20)
    source = lb.build_legacy_json(tmp_path / "src", images)
    out = tmp_path / "out"
    args = [f"--input={source}", f"--output={out}", "--image_size=32", "--keep_degenerate"]

    def killed(*_args, **_kwargs):
        raise RuntimeError("simulated kill before the final step")

    monkeypatch.setattr(preprocess.writing, "finalize", killed)
    with pytest.raises(Exception, match="simulated kill"):
        preprocess.run(args)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("32/*/*.tfrecord")), "no shard may look complete"
    monkeypatch.undo()
    with pytest.raises(preprocess.OutputNotEmpty):
        preprocess.run(args)
    manifest = preprocess.run(args + ["--overwrite"])
    assert manifest["totals"]["written"] == len(images)
    assert not (out / ".incomplete").exists()


def test_bad_flags_fail_with_the_value(tmp_path, capsys):
    for bad, needle in (("--image_size=0", "image sizes"), ("--split=50,50", "--split"),
                        ("--jpeg_quality=0", "jpeg_quality"), ("--resize_mode=zoom", "zoom"),
                        ("--train_fraction=0", "--train_fraction must be in (0, 1], got 0.0"),
                        ("--train_fraction=1.5", "got 1.5"),
                        ("--folds=2", "--folds must be 0 (off) or >= 3"),
                        ("--fold=1", "--fold=1 needs --folds"),
                        ("--folds=5 --fold=5", "--fold must be in 0..4"),
                        ("--folds=5 --split=80,10,10", "it does not take --split=80,10,10")):
        with pytest.raises(SystemExit):
            preprocess.run([f"--output={tmp_path}", *bad.split()])
        assert needle in capsys.readouterr().err
