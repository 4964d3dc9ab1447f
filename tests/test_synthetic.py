"""The embedded default dataset must make a usable dataset on its own: distinct pictures."""
import numpy as np
from PIL import Image

from beam_jobs import synthetic
from isicflow import image_checks


def test_synthetic_pictures_are_not_near_duplicates_of_each_other():
    """Version 1 drew centred ellipses on flat skin: the near-duplicate check grouped about half
    of them together, and `make demo` got a 133/14/5 split with no benign test image."""
    rng = np.random.default_rng(0)
    hashes = {}
    for i in range(60):
        pixels = synthetic.draw_lesion(rng, 320, 240, malignant=bool(i % 3 == 0))
        thumb = image_checks.luma_thumbnail(Image.fromarray(pixels).resize((128, 128)))
        hashes[i] = image_checks.perceptual_hash(thumb)
        assert image_checks.degeneracy(thumb) is None, i
    assert image_checks.near_duplicate_groups(hashes) == []
