"""Build each real ISIC layout in a temporary folder around the real sample images.

Images are symlinked (copied where links are not possible), never re-encoded; the metadata is
written in each layout's published header format, with labels, ages and sexes taken from the real
legacy sidecars. Other tests import these builders:

    images = sample_images(sample_dir, every=11)        # 42 real images, both labels
    root = BUILDERS["ham10000"](tmp_path / "ham", images)
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import shutil
from typing import Callable, Optional, Sequence

# Diagnosis codes used where a layout needs one; the two benign sample images with a null
# diagnosis get a benign code other than nevus so the label survives the dx table.
DX_CODE = {"melanoma": "mel", "nevus": "nv", None: "bkl"}
ONE_HOT_2019 = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")


@dataclasses.dataclass(frozen=True)
class SampleImage:
    """One real image of the sample with the fields its legacy sidecar gives."""

    image_id: str
    image_path: pathlib.Path
    sidecar_path: pathlib.Path
    label: str                 # benign | malignant
    diagnosis: Optional[str]   # 'nevus', 'melanoma' or None
    age_approx: Optional[float]
    sex: Optional[str]         # 'male', 'female' or None
    image_type: str
    width: int
    height: int


def sample_images(sample_dir: os.PathLike, every: int = 1, include_null_diagnosis: bool = True
                  ) -> list[SampleImage]:
    """The real sample (every `every`-th image by id), plus the null-diagnosis images if asked."""
    images = []
    for index, sidecar in enumerate(sorted(pathlib.Path(sample_dir).glob("ISIC_*.json"))):
        data = json.loads(sidecar.read_text(encoding="utf-8"))
        clinical, acquisition = data["meta"]["clinical"], data["meta"]["acquisition"]
        wanted = index % every == 0 or (include_null_diagnosis and clinical["diagnosis"] is None)
        if not wanted:
            continue
        age = clinical.get("age_approx")
        images.append(SampleImage(
            image_id=sidecar.stem, image_path=sidecar.with_suffix(".jpg"), sidecar_path=sidecar,
            label=clinical["benign_malignant"], diagnosis=clinical["diagnosis"],
            age_approx=None if age is None else float(age), sex=clinical.get("sex"),
            image_type=acquisition["image_type"], width=acquisition["pixelsX"],
            height=acquisition["pixelsY"]))
    return images


def place_image(image: SampleImage, folder: pathlib.Path, name: Optional[str] = None) -> pathlib.Path:
    """Link (or copy) the real JPEG into `folder` as `name` (default `<id>.jpg`)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / (name or f"{image.image_id}.jpg")
    try:
        os.symlink(image.image_path.resolve(), target)
    except OSError:
        shutil.copyfile(image.image_path, target)
    return target


def write_csv(path: pathlib.Path, header: Sequence[str],
              rows: Sequence[Sequence[object]]) -> pathlib.Path:
    """A CSV as the csv module writes it (quotes cells holding commas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def age_cell(image: SampleImage, missing: str = "") -> str:
    return missing if image.age_approx is None else str(int(image.age_approx))


def sex_cell(image: SampleImage, missing: str = "") -> str:
    return image.sex or missing


def build_legacy_json(root: pathlib.Path, images: Sequence[SampleImage],
                      collection: Optional[str] = None) -> pathlib.Path:
    """Image + sidecar pairs; with `collection`, nested as `ISIC-images/<collection>/` (gallery)."""
    folder = root / "ISIC-images" / collection if collection else root
    for image in images:
        place_image(image, folder)
        shutil.copyfile(image.sidecar_path, folder / image.sidecar_path.name)
    return root


def build_isic_cli(root: pathlib.Path, images: Sequence[SampleImage]) -> pathlib.Path:
    """`isic image download`: metadata.csv (fixed first three columns, then sorted keys) + images."""
    header = ["isic_id", "attribution", "copyright_license", "age_approx", "anatom_site_general",
              "benign_malignant", "diagnosis", "image_type", "sex"]
    rows = [[i.image_id, "Anonymous", "CC-0", age_cell(i), "", i.label, i.diagnosis or "",
             i.image_type, sex_cell(i)] for i in images]
    for image in images:
        place_image(image, root)
    write_csv(root / "metadata.csv", header, rows)
    (root / "attribution.txt").write_text("Anonymous\n", encoding="utf-8")
    (root / "licenses").mkdir(exist_ok=True)
    (root / "licenses" / "CC-0.txt").write_text("CC0 1.0\n", encoding="utf-8")
    return root


def build_ham10000(root: pathlib.Path, images: Sequence[SampleImage]) -> pathlib.Path:
    """HAM10000_metadata.csv + images alternating between the two part folders."""
    rows = [[f"HAM_{i.image_id[-7:]}", i.image_id, DX_CODE[i.diagnosis], "histo",
             age_cell(i), sex_cell(i, "unknown"), "unknown"] for i in images]
    for number, image in enumerate(images):
        place_image(image, root / f"HAM10000_images_part_{number % 2 + 1}")
    write_csv(root / "HAM10000_metadata.csv",
              ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"], rows)
    return root


def one_hot_2019(image: SampleImage) -> list[int]:
    code = DX_CODE[image.diagnosis].upper()
    return [int(column == code) for column in ONE_HOT_2019]


def build_isic2019(root: pathlib.Path, images: Sequence[SampleImage],
                   with_metadata: bool = True) -> pathlib.Path:
    """One-hot ground truth (+ the metadata CSV) with images in ISIC_2019_Training_Input/."""
    for image in images:
        place_image(image, root / "ISIC_2019_Training_Input")
    write_csv(root / "ISIC_2019_Training_GroundTruth.csv", ("image",) + ONE_HOT_2019,
              [[i.image_id] + one_hot_2019(i) for i in images])
    if with_metadata:
        write_csv(root / "ISIC_2019_Training_Metadata.csv",
                  ["image", "age_approx", "anatom_site_general", "lesion_id", "sex"],
                  [[i.image_id, age_cell(i), "", "", sex_cell(i)] for i in images])
    return root


def build_isic2020(root: pathlib.Path, images: Sequence[SampleImage], csv_name: str = "train.csv",
                   image_folder: str = "jpeg/train") -> pathlib.Path:
    """SIIM-ISIC 2020 `train.csv` with images under `jpeg/train/` (Kaggle copy)."""
    header = ["image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
              "diagnosis", "benign_malignant", "target"]
    rows = [[i.image_id, f"IP_{i.image_id[-7:]}", sex_cell(i), age_cell(i), "",
             i.diagnosis or "unknown", i.label, int(i.label == "malignant")] for i in images]
    for image in images:
        place_image(image, root / image_folder)
    write_csv(root / csv_name, header, rows)
    return root


ATTRIBUTION_2024 = "Memorial Sloan Kettering Cancer Center, New York, NY"


def build_isic2024(root: pathlib.Path, images: Sequence[SampleImage]) -> pathlib.Path:
    """SLICE-3D train-metadata.csv (attribution with quoted commas) + train-image/image/."""
    header = ["isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
              "image_type", "attribution", "copyright_license", "lesion_id", "iddx_full", "iddx_1"]
    rows = [[i.image_id, int(i.label == "malignant"), f"IP_{i.image_id[-7:]}", age_cell(i),
             sex_cell(i), "", "TBP tile: close-up", ATTRIBUTION_2024, "CC-BY", "",
             i.label.capitalize(), i.label.capitalize()] for i in images]
    for image in images:
        place_image(image, root / "train-image" / "image")
    write_csv(root / "train-metadata.csv", header, rows)
    return root


def build_isic2017(root: pathlib.Path, images: Sequence[SampleImage]) -> pathlib.Path:
    """Part 3 ground truth (flags as 0.0/1.0, as published) + the age/sex file in the image folder."""
    rows = [[i.image_id, "1.0" if i.label == "malignant" else "0.0", "0.0"] for i in images]
    for image in images:
        place_image(image, root / "ISIC-2017_Training_Data")
    write_csv(root / "ISIC-2017_Training_Part3_GroundTruth.csv",
              ["image_id", "melanoma", "seborrheic_keratosis"], rows)
    write_csv(root / "ISIC-2017_Training_Data" / "ISIC-2017_Training_Data_metadata.csv",
              ["image_id", "age_approximate", "sex"],
              [[i.image_id, age_cell(i, "unknown"), sex_cell(i, "unknown")] for i in images])
    return root


def build_isic2016(root: pathlib.Path, images: Sequence[SampleImage],
                   values: Sequence[str] = ("benign", "malignant")) -> pathlib.Path:
    """ISBI 2016 Part 3: no header line; `benign`/`malignant` (training) or `0.0`/`1.0` (test)."""
    for image in images:
        place_image(image, root / "ISBI2016_ISIC_Part3_Training_Data")
    path = root / "ISBI2016_ISIC_Part3_Training_GroundTruth.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i.image_id},{values[i.label == 'malignant']}\n" for i in images),
                    encoding="utf-8")
    return root


def build_class_folders(root: pathlib.Path, images: Sequence[SampleImage]) -> pathlib.Path:
    """`<root>/benign/*.jpg` and `<root>/malignant/*.jpg`, as Keras loaders expect."""
    for image in images:
        place_image(image, root / image.label)
    return root


BUILDERS: dict[str, Callable[[pathlib.Path, Sequence[SampleImage]], pathlib.Path]] = {
    "legacy_json": build_legacy_json, "isic_cli": build_isic_cli, "ham10000": build_ham10000,
    "isic2019": build_isic2019, "isic2020": build_isic2020, "isic2024": build_isic2024,
    "isic2017": build_isic2017, "isic2016": build_isic2016, "class_folders": build_class_folders,
}
