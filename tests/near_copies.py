"""Near-identical copies of real images, as ISIC republishes them, and the sample's damaged ids.

    make_copy(Image.open(path), "crop", random.Random(0)) -> JPEG bytes

Each copy is re-encoded as JPEG at a random quality in 60..95 after its edit: `jpeg` (only the
re-encode), `resize` (0.5x..2x), `crop` (up to 5% of each side length removed, split at random
between the two edges), `brightness` (x0.9..1.1), or `all` four edits at once.
"""
from __future__ import annotations

import io
import pathlib
import random
import re

from PIL import Image, ImageEnhance

KINDS = ("jpeg", "resize", "crop", "brightness")
ALL = "all"


def make_copy(image: Image.Image, kind: str, rng: random.Random) -> bytes:
    img = image.convert("RGB")
    if kind in ("resize", ALL):
        f = rng.uniform(0.5, 2.0)
        img = img.resize((max(8, round(img.width * f)), max(8, round(img.height * f))),
                         Image.BICUBIC)
    if kind in ("crop", ALL):
        w, h = img.size
        fx, fy, ax, ay = rng.uniform(0, .05), rng.uniform(0, .05), rng.random(), rng.random()
        img = img.crop((round(w * fx * ax), round(h * fy * ay),
                        w - round(w * fx * (1 - ax)), h - round(h * fy * (1 - ay))))
    if kind in ("brightness", ALL):
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.9, 1.1))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=rng.randint(60, 95))
    return buf.getvalue()


def degenerate_ids(data_dir: pathlib.Path) -> set[str]:
    """The isic-uda1 JPEGs that ../shared/data/README.md lists as degenerate (all rows equal)."""
    text = (data_dir / "README.md").read_text(encoding="utf-8")
    section = text.split("degenerate as published")[1].split("## ")[0]
    return set(re.findall(r"ISIC_\d{7}", section))
