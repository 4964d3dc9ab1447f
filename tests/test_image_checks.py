"""isicflow.image_checks: hash, distance, grouping, degeneracy; and their measurement on every
real image of ../shared/data (recall, false merges, margins and cost are printed: pytest -s)."""
import random
import time

import numpy as np
import pytest
from PIL import Image

from beam_jobs import transforms
from beam_jobs.config import PreprocessConfig
from isicflow import image_checks as ic
from isicflow import imaging
from tests import near_copies

SETS = ("isic-uda1", "isic-acral-666", "isic-fullres-30")
CONFIG = PreprocessConfig(input=None, output="unused")  # the defaults: sizes 256,128, squash


def pipeline_luma(data: bytes) -> np.ndarray:
    """The thumbnail ProcessImage checks, made the way it makes it under the default flags."""
    decoded = imaging.decode_image(data, target=max(CONFIG.image_sizes))
    smallest = min(CONFIG.image_sizes)
    resized = {smallest: imaging.resize_pil(decoded.image, smallest, CONFIG.resize_mode)}
    return ic.luma_thumbnail(ic.thumbnail_source(decoded.image, resized, CONFIG.resize_mode))


# ---- pure unit tests -------------------------------------------------------------------------

def test_hamming():
    assert ic.hamming(0b1011, 0b0001) == 2 and ic.hamming(5, 5) == 0
    assert ic.hamming(1 << 255, 0) == 1


def test_candidate_pairs_is_exact():
    """Multi-index hashing finds exactly the pairs brute force finds, at every distance."""
    rng = random.Random(3)
    hashes = {}
    for base in range(150):
        h = rng.getrandbits(64)
        for copy in range(3):
            flipped = h
            for bit in rng.sample(range(64), rng.randint(0, 14)):
                flipped ^= 1 << bit
            hashes[f"{base:03d}-{copy}"] = flipped
    ids = sorted(hashes)
    for k in (0, 3, 7, 10, 13):
        brute = {(a, b) for i, a in enumerate(ids) for b in ids[i + 1:]
                 if ic.hamming(hashes[a], hashes[b]) <= k}
        assert ic.candidate_pairs(hashes, k) == brute, k
    assert ic.candidate_pairs(hashes, -1) == set()


def test_groups_are_transitive_sorted_and_order_free():
    h = ic.PerceptualHash
    far = (1 << 64) - 1
    hashes = {"c": h(0b111, 0b111), "a": h(0, 0), "b": h(0b1, 0b1), "z": h(far, (1 << 256) - 1),
              "y": h(far, (1 << 256) - 1), "lone": h(0xFFFF0000FFFF0000, 0xF0F0)}
    # a-b within 1 bit, b-c within 2: one group though a-c are 3 apart; y-z identical.
    assert ic.near_duplicate_groups(hashes, coarse_max=2, fine_max=2) == [["a", "b", "c"],
                                                                           ["y", "z"]]
    shuffled = dict(sorted(hashes.items(), key=lambda kv: random.Random(1).random()))
    assert ic.near_duplicate_groups(shuffled, 2, 2) == ic.near_duplicate_groups(hashes, 2, 2)
    # Both hashes must agree: close coarse hashes with far fine ones are not near-duplicates.
    assert ic.near_duplicate_groups({"p": h(0, 0), "q": h(0, (1 << 200) - 1)}) == []


def test_components_keep_the_smallest_member_first():
    groups = ic.components(["solo"], [("m", "z"), ("z", "b")])
    assert [g[0] for g in groups if "m" in g] == ["b"]  # the representative: smallest member
    assert groups == [["b", "m", "z"], ["solo"]]
    assert ic.components((), []) == []


def test_merge_groups_joins_lesion_groups_through_near_duplicates():
    group_of = {"i1": "L1", "i2": "L1", "i3": "L2", "i4": "L3", "i5": "i5"}
    merged = ic.merge_groups(group_of, [["i2", "i3"], ["gone", "i5"]])
    assert merged == {"i1": "L1", "i2": "L1", "i3": "L1", "i4": "L3", "i5": "i5"}


def test_perceptual_hash_ignores_brightness_offset_and_tells_images_apart():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(size=(32, 32)), 0), 1)
    luma = (100 + 40 * (smooth - smooth.mean()) / smooth.std()).astype(np.float32)
    assert ic.perceptual_hash(luma) == ic.perceptual_hash(luma + 20)  # only DC moves
    other = ic.perceptual_hash(luma.T.copy())
    assert ic.hamming(ic.perceptual_hash(luma).fine, other.fine) > ic.FINE_MAX_DISTANCE


@pytest.mark.parametrize("kind, test", [("vertical", "rows"), ("horizontal", "columns"),
                                        ("flat", "rows")])
def test_degeneracy_flags_stripes_and_flat_images(kind, test, tmp_path):
    stripes = np.linspace(0, 255, 300).astype(np.uint8)
    pixels = {"vertical": np.tile(stripes[None, :, None], (200, 1, 3)),
              "horizontal": np.tile(stripes[:200, None, None], (1, 300, 3)),
              "flat": np.full((200, 300, 3), 77, np.uint8)}[kind]
    path = tmp_path / "img.jpg"
    Image.fromarray(pixels).save(path, quality=70)  # through a real JPEG round trip
    found = ic.degeneracy(pipeline_luma(path.read_bytes()))
    assert found is not None and found[0] == test and found[1] < ic.DEGENERATE_THRESHOLD
    noisy = np.random.default_rng(1).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    assert ic.degeneracy(ic.luma_thumbnail(Image.fromarray(noisy))) is None


# ---- measurement on every real image of ../shared/data ---------------------------------------

@pytest.fixture(scope="module")
def real(sample_dir):
    """{(set, image id): (path, pipeline thumbnail)} for all 1136 real images, and the 84 ids
    the data README lists as degenerate."""
    data_dir = sample_dir.parent
    images = {}
    for name in SETS:
        for path in sorted((data_dir / name).glob("ISIC_*.jpg")):
            images[(name, path.stem)] = (path, pipeline_luma(path.read_bytes()))
    listed = near_copies.degenerate_ids(data_dir)
    assert len(images) == 1136 and len(listed) == 84
    return images, listed


def test_degenerate_images_are_exactly_the_84_listed(real):
    images, listed = real
    flagged = {image_id for (_, image_id), (_, luma) in images.items() if ic.degeneracy(luma)}
    assert flagged == listed
    scores = {key: ic.degeneracy_scores(luma) for key, (_, luma) in images.items()}
    worst_listed = max(min(s.values()) for (_, i), s in scores.items() if i in listed)
    worst_real = min((min(s.values()), i, min(s, key=s.get)) for (_, i), s in scores.items()
                     if i not in listed)
    print(f"\ndegeneracy threshold {ic.DEGENERATE_THRESHOLD}: listed images score at most "
          f"{worst_listed:.3f}; lowest other real image {worst_real[1]} scores "
          f"{worst_real[0]:.3f} ({worst_real[2]}), {worst_real[0] / ic.DEGENERATE_THRESHOLD:.1f}x "
          "the threshold")
    for name in SETS:
        lowest = min(min(s.values()) for (n, i), s in scores.items()
                     if n == name and i not in listed)
        print(f"  {name}: lowest score of a non-listed image {lowest:.3f}")
    assert worst_listed == 0.0
    assert worst_real[0] > 3 * ic.DEGENERATE_THRESHOLD


def test_near_duplicates_recall_and_no_false_merges(real, tmp_path):
    images, listed = real
    distinct = {image_id: ic.perceptual_hash(luma) for (_, image_id), (_, luma) in images.items()
                if image_id not in listed}
    assert len(distinct) == 1052
    # 0 false merges among the distinct real images (the threshold's margin is printed).
    assert ic.near_duplicate_groups(distinct) == []
    candidates = ic.candidate_pairs({i: h.coarse for i, h in distinct.items()},
                                    ic.COARSE_MAX_DISTANCE)
    closest = min(ic.hamming(distinct[a].fine, distinct[b].fine) for a, b in candidates)
    # Copies, written to disk and read back as the job would: sources from the two sets of
    # ordinary size (copies of the 30 full-resolution ones would take seconds each to make).
    rng = random.Random(2021)
    sources = sorted((i, p) for (n, i), (p, _) in images.items()
                     if n != "isic-fullres-30" and i not in listed)
    picked = rng.sample(sources, 500)
    copies, origin = {}, {}
    for index, (image_id, path) in enumerate(picked):
        kind = (near_copies.KINDS + (near_copies.ALL,))[index % 5]
        copy_path = tmp_path / f"{image_id}-{kind}.jpg"
        copy_path.write_bytes(near_copies.make_copy(Image.open(path), kind, rng))
        key = f"copy/{kind}/{image_id}"
        copies[key] = ic.perceptual_hash(pipeline_luma(copy_path.read_bytes()))
        origin[key] = image_id
    started = time.perf_counter()
    pairs = ic.near_duplicate_pairs({**distinct, **copies})
    seconds = time.perf_counter() - started
    found = {b for a, b in pairs if b in origin and origin[b] == a}
    false = [(a, b) for a, b in pairs if origin.get(a, a) != origin.get(b, b)]
    recall = {kind: (sum(1 for k in origin if k.split("/")[1] == kind and k in found),
                     sum(1 for k in origin if k.split("/")[1] == kind))
              for kind in near_copies.KINDS + (near_copies.ALL,)}
    single = [recall[k] for k in near_copies.KINDS]
    single_recall = sum(f for f, _ in single) / sum(n for _, n in single)
    print(f"\nnear-duplicates (coarse <= {ic.COARSE_MAX_DISTANCE}, fine <= "
          f"{ic.FINE_MAX_DISTANCE} bits): recall {single_recall:.3f} over "
          f"{sum(n for _, n in single)} single-edit copies; per edit "
          + ", ".join(f"{k} {f}/{n}" for k, (f, n) in recall.items())
          + f"; false merges {len(false)} among {len(distinct)} distinct real images + "
          f"{len(copies)} copies; closest distinct pair {closest} fine bits; "
          f"grouping {len(distinct) + len(copies)} hashes took {seconds * 1e3:.0f} ms")
    assert not false
    assert single_recall >= 0.95
    f, n = recall[near_copies.ALL]
    assert f / n >= 0.85  # all four edits at once: the hard case, reported above


def test_cost_of_the_checks_next_to_the_decode_step(real):
    """Not a timed assertion: prints what the checks add to ProcessImage's work per image."""
    images, _ = real
    print()
    for name in SETS:
        datas = [p.read_bytes() for (n, _), (p, _) in sorted(images.items()) if n == name][:20]

        def decode_step(data):
            decoded = imaging.decode_image(data, target=max(CONFIG.image_sizes))
            resized = {s: imaging.resize_pil(decoded.image, s) for s in CONFIG.image_sizes}
            for image in resized.values():
                imaging.encode_image(image, "jpeg", 95)
            return decoded, resized

        outs = [decode_step(d) for d in datas]  # also warms every code path up
        lumas = [ic.luma_thumbnail(ic.thumbnail_source(dec.image, res, CONFIG.resize_mode))
                 for dec, res in outs]

        def per_image(work, items):  # the best of 3 passes: other processes share the cores
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                for item in items:
                    work(item)
                best = min(best, time.perf_counter() - started)
            return best / len(items)

        step = per_image(decode_step, datas)
        bare = per_image(lambda d: imaging.decode_image(d, target=max(CONFIG.image_sizes)), datas)
        thumb = per_image(lambda o: ic.luma_thumbnail(
            ic.thumbnail_source(o[0].image, o[1], CONFIG.resize_mode)), outs)
        phash = per_image(ic.perceptual_hash, lumas)
        degen = per_image(ic.degeneracy, lumas)
        step, bare, thumb, phash, degen = (t * 1e3 for t in (step, bare, thumb, phash, degen))
        print(f"  {name}: decode step (decode, resize, encode) {step:.2f} ms/image; thumbnail "
              f"{thumb * 1e3:.0f} us + hash {phash * 1e3:.0f} us = {(thumb + phash) / step:.1%} "
              f"of it ({(thumb + phash) / bare:.1%} of the bare decode, {bare:.2f} ms); "
              f"degeneracy {degen * 1e3:.0f} us = {degen / step:.1%}")
