"""run() end to end: near-identical copies never straddle splits (--near_duplicates=group, the
default), drop keeps one per group with the totals adding up, off looks for nothing; degenerate
images are rejected by default and kept with --keep_degenerate."""
import dataclasses
import json
import random

import pytest
from PIL import Image

from beam_jobs import preprocess
from tests import layout_builders as lb
from tests import near_copies
from tests.test_preprocess import read_records

COPIES = {"ISIC_9900001": (0, "all"), "ISIC_9900002": (4, "resize"),
          "ISIC_9900003": (6, "jpeg"), "ISIC_9900004": (8, "crop")}  # copy id -> (source, edit)


@pytest.fixture(scope="module")
def corpus(sample_dir, tmp_path_factory):
    """A HAM10000 layout: 16 real images, 4 near-identical copies of 4 of them under new ids, 3
    of the sample's degenerate images. Lesion ids: originals 0 and 1 share one lesion; the
    copy of 0 shares another lesion with original 2, so group mode must join all four."""
    tmp = tmp_path_factory.mktemp("near-dups")
    listed = near_copies.degenerate_ids(sample_dir.parent)
    every = lb.sample_images(sample_dir, include_null_diagnosis=False)
    # Ordinary lesion photos: from ISIC_0000150 on (ISIC_0000101..149 are vertically smeared).
    normal = [i for i in every if i.image_id >= "ISIC_0000150"][::15][:16]
    degenerate = [i for i in every if i.image_id in listed][:3]
    rng = random.Random(7)
    copies = []
    for copy_id, (source, kind) in COPIES.items():
        path = tmp / "copies" / f"{copy_id}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(near_copies.make_copy(Image.open(normal[source].image_path), kind, rng))
        copies.append(dataclasses.replace(normal[source], image_id=copy_id, image_path=path))
    lesion = {i.image_id: f"HAM_{n:07d}" for n, i in enumerate(normal + degenerate + copies)}
    lesion[normal[1].image_id] = lesion[normal[0].image_id]
    lesion[normal[2].image_id] = lesion["ISIC_9900001"]
    root = tmp / "src"
    rows = []
    for image in normal + degenerate + copies:
        lb.place_image(image, root / "HAM10000_images_part_1")
        rows.append([lesion[image.image_id], image.image_id, lb.DX_CODE[image.diagnosis], "histo",
                     lb.age_cell(image), lb.sex_cell(image, "unknown"), "back"])
    lb.write_csv(root / "HAM10000_metadata.csv",
                 ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    return root, tmp, normal, degenerate


def _run(corpus, name, *flags):
    root, tmp, _, _ = corpus
    out = tmp / name
    manifest = preprocess.run([f"--input={root}", f"--output={out}", "--image_size=32", *flags])
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    t = manifest["totals"]
    assert t["read"] == t["written"] + t["rejected"] + t["filtered"] + t["duplicates"] == 23
    return out, manifest, rejects


def test_group_keeps_near_duplicates_and_their_lesions_in_one_split(corpus):
    _, _, normal, degenerate = corpus
    out, manifest, rejects = _run(corpus, "group")
    expected_groups = sorted([normal[source].image_id, copy_id]
                             for copy_id, (source, _) in COPIES.items())
    assert manifest["near_duplicate_groups"] == expected_groups
    assert manifest["near_duplicates"]["groups"] == 4
    assert manifest["near_duplicates"]["images"] == 8
    # Degenerate images: rejected by default, with the test that fired and its score.
    assert manifest["totals"]["written"] == 20 and manifest["totals"]["rejected"] == 3
    assert sorted(r["image_id"] for r in rejects) == sorted(i.image_id for i in degenerate)
    assert all(r["reason"] == "degenerate_image" and "rows score 0.000" in r["detail"]
               for r in rejects)
    split_of = {r["image_id"]: split for split, records in read_records(out, manifest, 32).items()
                for r in records}
    joined = [normal[0].image_id, normal[1].image_id, normal[2].image_id, "ISIC_9900001"]
    assert len({split_of[i] for i in joined}) == 1, {i: split_of[i] for i in joined}
    for group in expected_groups:
        assert len({split_of[i] for i in group}) == 1, group
    assert len(set(split_of.values())) == 3  # the groups did not all pile into one split


def test_drop_keeps_the_smallest_id_of_each_group(corpus):
    _, _, normal, degenerate = corpus
    out, manifest, rejects = _run(corpus, "drop", "--near_duplicates=drop", "--keep_degenerate")
    t = manifest["totals"]
    assert (t["written"], t["rejected"], t["duplicates"]) == (19, 0, 4)
    assert manifest["reasons"] == {"duplicate:near_duplicate": 4}
    dropped = {r["image_id"]: r for r in rejects}
    assert set(dropped) == set(COPIES)
    for copy_id, (source, _) in COPIES.items():
        assert dropped[copy_id]["kind"] == "duplicate"
        assert normal[source].image_id in dropped[copy_id]["detail"]
    assert len(manifest["near_duplicate_groups"]) == 4  # reported, dropped ones included
    written = {r["image_id"] for rs in read_records(out, manifest, 32).values() for r in rs}
    assert {i.image_id for i in degenerate} <= written  # kept by --keep_degenerate


def test_off_looks_for_nothing(corpus):
    _, manifest, _ = _run(corpus, "off", "--near_duplicates=off")
    assert manifest["near_duplicate_groups"] == []
    assert manifest["totals"]["written"] == 20
    assert manifest["config"]["near_duplicates"] == "off"
