"""Pure checks on a decoded image: a perceptual hash for near-duplicates, and a degeneracy test.

Both work on the image the data engine has already decoded (at its reduced DCT scale) and
resized, so they cost no second decode, and both start from one 32x32 luma thumbnail, so they
cost little next to the decode (~0.1 ms an image; see the tests for the measured figure).

* `perceptual_hash`: a DCT hash (pHash) at two resolutions. Luma is squashed to 32x32 (Pillow,
  box filters), its 2-D DCT-II taken (scipy's basis), and the lowest frequencies, DC excluded,
  compared with their median, one bit each: the 8x8 block gives a 64-bit coarse hash, the 16x16 block a
  256-bit fine one. Re-encoding, resizing, brightness changes and a few percent of cropping
  move few bits; distinct images differ in about half.
* `near_duplicate_groups`: images whose hashes are within both distances, joined into
  connected components (scipy.sparse.csgraph); candidates come from multi-index hashing of the coarse
  hash (vectorised), so not every pair is compared.
* `degeneracy`: an image that decodes but holds no picture: every row (nearly) the same,
  every column the same, or the whole image (nearly) one colour.
"""
from __future__ import annotations

import collections
import itertools
from typing import Hashable, Iterable, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from PIL import Image
from scipy.fft import dct
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

THUMB = 32              # both checks look at a 32x32 luma thumbnail
COARSE_SIZE, FINE_SIZE = 8, 16  # low-frequency DCT blocks: 8x8 -> 64 bits, 16x16 -> 256 bits
COARSE_BITS, FINE_BITS = COARSE_SIZE ** 2, FINE_SIZE ** 2
# Near-duplicates: coarse hashes within COARSE_MAX_DISTANCE bits AND fine hashes within
# FINE_MAX_DISTANCE bits. Measured on the real samples (tests/test_image_checks.py prints the
# figures): distinct images of ../shared/data are >= 64 fine bits apart (the coarse hash alone
# puts hundreds of distinct pairs within 10 bits: every image is a blob on skin); re-encoded,
# resized and brightened copies stay within ~30 fine bits, copies cropped by up to 5% mostly
# within 54.
COARSE_MAX_DISTANCE = 10
FINE_MAX_DISTANCE = 54
# The 84 damaged sample images score exactly 0.0 (every row identical); the lowest other real
# image scores ~1 (a vertically smeared one), lesion photos far more (measured on all of
# ../shared/data: tests/test_image_checks.py prints the margin).
DEGENERATE_THRESHOLD = 0.25

# DCT-II basis (orthonormal), its FINE_SIZE lowest frequencies: scipy's transform of the
# identity, so the 2-D DCT of the thumbnail's low frequencies is two small matrix products.
_DCT = dct(np.eye(THUMB), norm="ortho", axis=0)[:FINE_SIZE].astype(np.float32)


class PerceptualHash(NamedTuple):
    """A DCT hash at two resolutions, from the same 32x32 luma DCT: `coarse` (8x8 lowest
    frequencies, 64 bits) finds candidates cheaply, `fine` (16x16, 256 bits) tells distinct
    dermoscopy images apart, which the 64-bit hash alone does not."""

    coarse: int
    fine: int


def luma_thumbnail(image: Image.Image) -> np.ndarray:
    """THUMB x THUMB float32 luma of a Pillow image, squashed (aspect ignored) by box filters:
    an integer `reduce` first (Pillow's fastest path), then a box resize for the remainder.
    The data engine passes its smallest squash-resized output, so this costs ~20 us."""
    factor = max(1, min(image.size) // THUMB)
    small = image.reduce(factor) if factor > 1 else image
    if small.size != (THUMB, THUMB):
        small = small.resize((THUMB, THUMB), Image.BOX)
    return np.asarray(small.convert("L"), dtype=np.float32)


def _median_bits(block: np.ndarray) -> int:
    flat = block.ravel()[1:]  # without DC, which only brightness moves; an odd count, so
    middle = flat.size // 2   # the median is the middle element
    bits = np.empty(flat.size + 1, dtype=bool)
    bits[0] = False
    np.greater(flat, np.partition(flat, middle)[middle], out=bits[1:])
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def perceptual_hash(luma: np.ndarray) -> PerceptualHash:
    """DCT perceptual hash (pHash) of a `luma_thumbnail`: 2-D DCT-II; each low-frequency
    coefficient above its block's median gives a 1 bit."""
    coeffs = _DCT @ luma @ _DCT.T  # the FINE_SIZE x FINE_SIZE lowest frequencies
    return PerceptualHash(_median_bits(coeffs[:COARSE_SIZE, :COARSE_SIZE]), _median_bits(coeffs))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _flip_masks(bits: int, radius: int) -> list[int]:
    """Every mask of at most `radius` set bits among `bits`."""
    return [sum(1 << p for p in positions)
            for r in range(radius + 1) for positions in itertools.combinations(range(bits), r)]


_POPCOUNT8 = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint8)


def _popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy 1.26 has no bitwise_count)."""
    return _POPCOUNT8[values.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.int64)


def candidate_pairs(hashes: Mapping[Hashable, int], max_distance: int, bits: int = COARSE_BITS,
                    bands: int = 4) -> set[tuple]:
    """Pairs (a, b), a < b, whose hashes (at most 64 bits) differ in at most max_distance
    bits; exact (tests compare it with brute force).

    Multi-index hashing: the hash is cut into `bands` bands; if two hashes differ in at most k
    bits, some band differs in at most r = k // bands bits (pigeonhole). For each band and each
    of the P = sum_{i<=r} C(bits/bands, i) ways to flip at most r of its bits (137 for r = 2
    and 16-bit bands), the hashes whose band equals a flipped band are looked up in a table
    indexed by band value, and only those candidates are compared, all vectorised in numpy.
    Cost: O(bands * P * n) for the look-ups, plus one XOR-popcount per candidate: for
    uniformly spread hashes a fraction bands * P / 2^(bits/bands) of all pairs (0.8% at the
    default k = 10: 4 x 137 / 65536), i.e. ~120x fewer comparisons than all pairs (real
    dermoscopy hashes cluster, so somewhat more); 50,000 random hashes take ~2.5 s here,
    200,000 ~25 s. Still quadratic in the limit: archives far beyond a million images would
    want more bands of a longer hash.
    """
    ids = sorted(hashes)
    n = len(ids)
    if max_distance < 0 or n < 2:
        return set()
    if bits > 64 or -(-bits // bands) > 24:
        raise ValueError(f"candidate_pairs handles hashes of at most 64 bits in bands of at "
                         f"most 24, got {bits} bits in {bands} bands")
    values = np.array([hashes[i] for i in ids], dtype=np.uint64)
    band_bits = -(-bits // bands)
    flips = np.array(_flip_masks(band_bits, max_distance // bands), dtype=np.int64)
    chunk = max(1, 100_000 // len(flips))  # rows per batch of queries: bounded memory
    found = []
    for b in range(bands):
        band = ((values >> np.uint64(b * band_bits)) & np.uint64((1 << band_bits) - 1)
                ).astype(np.int64)
        order = np.argsort(band, kind="stable")  # hashes grouped by band value...
        count_of = np.bincount(band, minlength=1 << band_bits)
        first_of = np.cumsum(count_of) - count_of  # ...each value's run starts here in `order`
        for start in range(0, n, chunk):
            rows = np.arange(start, min(n, start + chunk))
            wanted = (band[rows, None] ^ flips[None, :]).ravel()
            lo, counts = first_of[wanted], count_of[wanted]
            total = int(counts.sum())
            if not total:
                continue
            left = np.repeat(np.repeat(rows, len(flips)), counts)
            starts = np.repeat(lo - (np.cumsum(counts) - counts), counts)
            right = order[starts + np.arange(total)]
            keep = left < right
            left, right = left[keep], right[keep]
            close = _popcount64(values[left] ^ values[right]) <= max_distance
            found.append(left[close] * n + right[close])
    if not found:
        return set()
    return {(ids[int(p) // n], ids[int(p) % n]) for p in np.unique(np.concatenate(found))}


def near_duplicate_pairs(hashes: Mapping[Hashable, PerceptualHash],
                         coarse_max: int = COARSE_MAX_DISTANCE,
                         fine_max: int = FINE_MAX_DISTANCE) -> set[tuple]:
    """Pairs (a, b), a < b, within coarse_max bits on the coarse hash and fine_max on the fine:
    candidates from the coarse hashes (candidate_pairs), confirmed on the fine ones."""
    coarse = {i: h.coarse for i, h in hashes.items()}
    return {(a, b) for a, b in candidate_pairs(coarse, coarse_max)
            if hamming(hashes[a].fine, hashes[b].fine) <= fine_max}


def components(nodes: Iterable[Hashable], edges: Iterable[tuple]) -> list[list]:
    """Connected components of a graph (scipy's connected_components), singletons included:
    each sorted, the list sorted by first member, so its first member is the smallest (a
    deterministic representative) whatever the order of nodes and edges."""
    index = {node: i for i, node in enumerate(sorted(set(nodes).union(*map(set, edges))))}
    pairs = np.array([(index[a], index[b]) for a, b in edges], dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
                       shape=(len(index), len(index)))
    _, labels = connected_components(graph, directed=False)
    out: dict = collections.defaultdict(list)
    for node, i in index.items():  # sorted nodes: each component comes out sorted
        out[labels[i]].append(node)
    return sorted(out.values())


def near_duplicate_groups(hashes: Mapping[Hashable, PerceptualHash],
                          coarse_max: int = COARSE_MAX_DISTANCE,
                          fine_max: int = FINE_MAX_DISTANCE) -> list[list]:
    """Connected components (2+ members) of the near-duplicate relation; each sorted, the list
    sorted: the same result for the same hashes whatever their order."""
    pairs = near_duplicate_pairs(hashes, coarse_max, fine_max)
    return [c for c in components((), pairs) if len(c) > 1]


def merge_groups(group_of: Mapping[Hashable, str], components_: Sequence[Sequence]) -> dict:
    """Existing groups (image id -> patient/lesion/image group key) joined through near-duplicate
    components: returns image id -> merged group key, the smallest key of its merged set, so
    that no near-duplicate component and no original group can straddle splits."""
    edges = []
    for component in components_:
        keys = [group_of[i] for i in component if i in group_of]
        edges += [(keys[0], other) for other in keys[1:]]
    smallest = {key: c[0] for c in components(group_of.values(), edges) for key in c}
    return {i: smallest[key] for i, key in group_of.items()}


def degeneracy_scores(luma: np.ndarray) -> dict[str, float]:
    """How much picture a `luma_thumbnail` holds, in grey levels (0..255):

    rows: mean over columns of the standard deviation down each column (0 when every row is
      the same: vertical stripes);
    columns: the same across each row (0 when every column is the same: horizontal stripes);
    image: the standard deviation of the whole image (0 when it is one colour).
    Box filters keep identical rows identical, so the thumbnail sees what the image holds.
    """
    down = luma - luma.mean(axis=0)                   # each column about its own mean
    across = luma - luma.mean(axis=1, keepdims=True)  # each row about its own mean
    n_rows, n_cols = luma.shape
    return {"rows": float(np.sqrt(np.einsum("ij,ij->j", down, down) / n_rows).mean()),
            "columns": float(np.sqrt(np.einsum("ij,ij->i", across, across) / n_cols).mean()),
            "image": float(luma.std())}


def degeneracy(luma: np.ndarray, threshold: float = DEGENERATE_THRESHOLD
               ) -> Optional[tuple[str, float]]:
    """(test, score) of the first test a `luma_thumbnail` fails (rows, columns, image), None if
    it holds a picture."""
    for test, score in degeneracy_scores(luma).items():
        if score < threshold:
            return test, score
    return None


def thumbnail_source(decoded: Image.Image, resized: Mapping[int, Image.Image],
                     resize_mode: str) -> Image.Image:
    """The image the checks' thumbnail is taken from, given the decoded image and its resized
    outputs {size: image}: the smallest squash output when it is at least the thumbnail's size
    (the whole picture, already small), else the decoded image (crop and pad outputs are not
    the whole picture). The data engine and trainer.cnn.predict both call it."""
    smallest = min(resized)
    if resize_mode == "squash" and smallest >= THUMB:
        return resized[smallest]
    return decoded


_DEGENERATE_WHAT = {"rows": "every row the same", "columns": "every column the same",
                    "image": "one colour"}


def degenerate_detail(test: str, score: float, hint: str = "") -> str:
    """What a `degeneracy` result means, in words (the engine's degenerate_image detail);
    `hint` (e.g. the flag that keeps such images) is added inside the parentheses."""
    hint = f"; {hint}" if hint else ""
    return (f"no picture: {_DEGENERATE_WHAT[test]} ({test} score {score:.3f} < "
            f"{DEGENERATE_THRESHOLD} grey levels{hint})")
