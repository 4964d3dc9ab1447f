"""A hostile corpus: the job exits normally, and every bad input is recorded with its reason."""
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from beam_jobs import preprocess
from tests import hostile_images as hi
from tests import layout_builders as lb
from tests.test_preprocess import read_records, stored_pixels


def _sidecar(template: dict, image_id: str, **clinical) -> dict:
    data = json.loads(json.dumps(template))
    data["name"] = image_id
    data["meta"]["clinical"].update(clinical)
    return data


def test_hostile_legacy_corpus(sample_dir, tmp_path):
    good = lb.sample_images(sample_dir, every=40)
    root = lb.build_legacy_json(tmp_path / "src", good)
    template = json.loads(good[0].sidecar_path.read_text())
    pixels = np.asarray(Image.open(good[1].image_path).convert("RGB"))
    hostile = {  # id -> (file bytes or None for no image, sidecar or None, expected reason)
        "ISIC_9000001": (hi.truncated_jpeg(hi.gradient(600, 400)), "corrupt_image"),
        "ISIC_9000002": (b"", "empty_file"),
        "ISIC_9000003": (b"<html>not an image</html>", "not_an_image"),
        "ISIC_9000004": (hi.png_with_huge_header(), "too_many_pixels"),
        "ISIC_9000005": (good[2].image_path.read_bytes(), "duplicate_content"),
        "ISIC_9000006": (hi.jpeg_bytes(pixels), "filtered_label"),
        "ISIC_9000007": (hi.jpeg_bytes(pixels[::-1]), "filtered_image_type"),
        "ISIC_9000008": (hi.jpeg_bytes(pixels[:, ::-1]), "filtered_collection"),
        "ISIC_9000009": (hi.jpeg_bytes(pixels), "malformed_metadata"),
        "ISIC_9000010": (hi.jpeg_bytes(pixels), "missing_metadata"),
    }
    accepted = {  # unusual but valid: decoded by content and written
        "ISIC_9000020": hi.png_bytes(Image.fromarray(pixels)),  # a PNG named .jpg
        "ISIC_9000021": hi.cmyk_jpeg(pixels),
        "ISIC_9000022": hi.grayscale_jpeg(pixels),
        "ISIC_9000023": hi.exif_rotated_jpeg(pixels[:, :200], orientation=6),
        "ISIC_9000024": hi.palette_png_with_transparency(pixels),
    }
    for image_id, data in [(k, v[0]) for k, v in hostile.items()] + list(accepted.items()):
        (root / f"{image_id}.jpg").write_bytes(data)
        reason = hostile.get(image_id, (None, ""))[1]
        sidecar = _sidecar(template, image_id)
        if reason == "filtered_label":
            sidecar = _sidecar(template, image_id, benign_malignant="indeterminate")
        if reason == "filtered_image_type":
            sidecar["meta"]["acquisition"]["image_type"] = "clinical"
        if reason == "filtered_collection":
            sidecar["dataset"] = {"name": "SONIC"}
        text = json.dumps(sidecar)
        if reason == "malformed_metadata":
            text = text[:-7]
        if reason != "missing_metadata":
            (root / f"{image_id}.json").write_text(text)

    out = tmp_path / "out"
    # --keep_degenerate: the sampled "good" images include striped ones (tested elsewhere).
    manifest = preprocess.run([f"--input={root}", f"--output={out}", "--image_size=64",
                               "--keep_degenerate"])

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    reason_of = {r["image_id"]: r["reason"] for r in rejects}
    for image_id, (_, reason) in hostile.items():
        assert reason_of.get(image_id) == reason, (image_id, reason_of.get(image_id))
    assert all(r["path"] and r["reason"] for r in rejects)
    assert len(rejects) == len(hostile)
    totals = manifest["totals"]
    assert totals["written"] == len(good) + len(accepted)
    assert totals["read"] == (totals["written"] + totals["rejected"] + totals["filtered"]
                              + totals["duplicates"])
    assert (totals["rejected"], totals["filtered"], totals["duplicates"]) == (6, 3, 1)

    records = {r["image_id"]: r for rs in read_records(out, manifest, 64).values() for r in rs}
    assert set(accepted) <= set(records)
    rotated = records["ISIC_9000023"]
    assert (rotated["original_width"], rotated["original_height"]) == (pixels.shape[0], 200)
    gray = stored_pixels(records["ISIC_9000022"]).astype(int)
    assert np.abs(gray[..., 0] - gray[..., 1]).max() <= 3  # grey stays grey in RGB


def test_hostile_csv_ids(sample_dir, tmp_path):
    """isic-cli metadata with an id holding a path separator and a row without its image."""
    good = lb.sample_images(sample_dir, every=60)
    root = lb.build_isic_cli(tmp_path / "src", good)
    with open(root / "metadata.csv", "a") as f:
        f.write("../etc/passwd,Anonymous,CC-0,50,,benign,nevus,dermoscopic,male\n")
        f.write("ISIC_9999999,Anonymous,CC-0,50,,benign,nevus,dermoscopic,male\n")
    shutil.copyfile(good[0].image_path, root / "ISIC_8888888.jpg")  # image without a row
    out = tmp_path / "out"
    manifest = preprocess.run([f"--input={root}", f"--output={out}", "--image_size=32",
                               "--keep_degenerate"])
    reasons = sorted(json.loads(line)["reason"]
                     for line in (out / "rejects.jsonl").read_text().splitlines())
    assert reasons == ["invalid_id", "missing_image", "missing_metadata"]
    assert manifest["totals"]["written"] == len(good)
    assert manifest["totals"]["read"] == len(good) + 3


@pytest.mark.parametrize("case", ["all_filtered", "all_corrupt", "no_image"])
def test_nothing_left_to_write_still_gives_a_manifest(tmp_path, case):
    """Every input filtered, every image corrupt, or no image at all: with --allow_empty, an empty
    dataset whose totals add up (the plan step never runs when no image survives decoding);
    without it, the same manifest but EmptyDataset (exit 3, tests/test_input_errors.py)."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(0 if case == "no_image" else 3):
        image_id = f"ISIC_000000{i}"
        if case == "all_corrupt":
            (src / f"{image_id}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
        else:
            Image.new("RGB", (40, 30), (i * 50, 10, 10)).save(src / f"{image_id}.jpg")
        image_type = "clinical" if case == "all_filtered" else "dermoscopic"
        (src / f"{image_id}.json").write_text(json.dumps({
            "name": image_id, "meta": {"clinical": {"benign_malignant": "benign"},
                                       "acquisition": {"image_type": image_type}}}))
    if case == "no_image":  # a sidecar whose image is missing
        (src / "ISIC_0000000.json").write_text(json.dumps({"name": "ISIC_0000000", "meta": {}}))
    manifest = preprocess.run([f"--input={src}", f"--output={tmp_path / 'out'}",
                               "--image_size=32", "--layout=legacy_json", "--allow_empty"])
    totals = manifest["totals"]
    assert totals["written"] == 0
    assert totals["read"] == totals["rejected"] + totals["filtered"] + totals["duplicates"] > 0
    assert all(info["records"] == 0 and not info["shards"]
               for info in manifest["datasets"]["32"].values())
    assert not (tmp_path / "out" / ".incomplete").exists()
