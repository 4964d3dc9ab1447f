"""Decode and resize: the one implementation used by the data engine, training and serving.

* `decode_image` (Pillow) decodes by content, applies EXIF orientation, converts every mode to
  RGB and rejects what is not a sane JPEG/PNG with a machine-readable reason.
* `resize_pil` (Pillow) does the bilinear, antialiased resize in the data engine;
  `resize_image` is its in-graph twin (Pillow's algorithm rebuilt from TensorFlow ops in
  `isicflow.pillow_resize`), which the exported model calls after `decode_for_serving`, so
  stored training images and served images are equal pixel for pixel (tested).
* `jpeg_scale_denominator` picks libjpeg's DCT scaling (1/2, 1/4, 1/8) for both decoders, so a
  large JPEG is decoded at a reduced scale first, leaving at least `oversample` x the target
  resolution for the antialiased resize to work from.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from isicflow import pillow_resize

RESIZE_MODES = ("squash", "center_crop", "pad")
DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb limit (2x its warning level)
# Decoded resolution kept above the target before the antialiased resize. 1.0 lets libjpeg's DCT
# scaling do most of the downsampling: on 3072x2304 sources of natural-image (1/f) content it
# is 8x less decode work at 41.7 dB PSNR against a full decode, finer than the 36 dB that
# storing the result as JPEG q95 costs anyway; 2.0 gives 51 dB at 4x (`make bench-preprocess`).
DEFAULT_OVERSAMPLE = 1.0
_SCALE_DENOMINATORS = (8, 4, 2, 1)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never half an image
Image.MAX_IMAGE_PIXELS = None  # we enforce our own limit, with a reason, before decoding


class ImageRejected(Exception):
    """An input that cannot become a training image; `reason` is a stable, countable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class DecodedImage:
    image: Image.Image        # mode RGB, EXIF orientation applied
    source_format: str        # "jpeg" | "png"
    source_width: int         # full-resolution size of the source, after orientation
    source_height: int
    scale_denominator: int    # 1 when decoded at full scale

    @functools.cached_property
    def pixels(self) -> np.ndarray:
        """uint8 HxWx3. The engine keeps the Pillow image and never pays for this copy."""
        return np.asarray(self.image, dtype=np.uint8)


def jpeg_scale_denominator(width: int, height: int, target: int, mode: str = "squash",
                           oversample: float = DEFAULT_OVERSAMPLE) -> int:
    """Largest libjpeg DCT scale 1/d that still leaves `oversample` x the target resolution.

    The side that must keep the resolution depends on the resize mode: both sides for squash,
    the short side for center_crop (it becomes the target), the long side for pad.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    if target <= 0 or width <= 0 or height <= 0:
        raise ValueError(f"need positive sizes, got {width}x{height} -> {target}")
    for d in _SCALE_DENOMINATORS:
        w, h = math.ceil(width / d), math.ceil(height / d)
        side = {"squash": min(w, h), "center_crop": min(w, h), "pad": max(w, h)}[mode]
        if side >= oversample * target and width >= d and height >= d:
            return d
    return 1


def _sniff_format(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "other"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Every Pillow mode to 8-bit RGB; alpha is composited over black (the padding colour)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.uint32)
        shift = 8 if arr.max(initial=0) > 255 else 0
        img = Image.fromarray((arr >> shift).clip(0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def decode_image(data: bytes, *, target: int | None = None, mode: str = "squash",
                 max_pixels: int = DEFAULT_MAX_PIXELS,
                 oversample: float = DEFAULT_OVERSAMPLE) -> DecodedImage:
    """Decodes JPEG/PNG bytes to RGB; with `target`, a large JPEG is decoded at reduced scale.

    Raises ImageRejected with reason empty_file | not_an_image | unsupported_format |
    too_many_pixels | corrupt_image.
    """
    if not data:
        raise ImageRejected("empty_file", "0 bytes")
    kind = _sniff_format(data)
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageRejected("not_an_image", f"{len(data)} bytes, starts {data[:8]!r}") from e
    except Exception as e:  # Pillow raises assorted errors on garbage headers
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {e}") from e
    if kind == "other" or img.format not in ("JPEG", "PNG"):
        raise ImageRejected("unsupported_format", f"format {img.format}")
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt_image", f"header size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("too_many_pixels", f"{width}x{height} > {max_pixels} pixels")
    try:
        exif_orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is not worth dropping the image
        exif_orientation = 1
    transposed = exif_orientation in (5, 6, 7, 8)
    denominator = 1
    if target is not None and img.format == "JPEG":
        # DCT scaling works on the stored (unrotated) axes; the rule is symmetric in w and h.
        denominator = jpeg_scale_denominator(width, height, target, mode, oversample)
        if denominator > 1:
            # Pillow picks the scale from floor(size / requested): asking for floor(size / d)
            # makes it pick exactly d, whose output is ceil(size / d) as TensorFlow's.
            img.draft(None, (width // denominator, height // denominator))
            expected = (math.ceil(width / denominator), math.ceil(height / denominator))
            if img.size != expected:
                raise RuntimeError(f"JPEG draft gave {img.size}, expected {expected} at 1/{denominator}")
    try:
        img.load()
        img = ImageOps.exif_transpose(img) if exif_orientation != 1 else img
        rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageRejected("corrupt_image", f"{type(e).__name__}: {e}") from e
    if rgb.mode != "RGB" or min(rgb.size) <= 0:
        raise ImageRejected("corrupt_image", f"decoded mode {rgb.mode} size {rgb.size}")
    src_w, src_h = (height, width) if transposed else (width, height)
    return DecodedImage(rgb, kind, src_w, src_h, denominator)


def resize_image(image, size: int, mode: str = "squash"):
    """Bilinear, antialiased resize of a uint8 HxWx3 image to size x size, as TensorFlow ops.

    The in-graph twin of resize_pil (the exported model uses it): the same crop/pad
    geometry and Pillow's resampling rebuilt in ops (isicflow.pillow_resize), so the pixels are
    identical. squash ignores the aspect ratio as the 2020 study did; center_crop takes the
    central square; pad fits the long side and pads with black.
    """
    import tensorflow as tf

    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    if mode == "center_crop":
        side = tf.minimum(h, w)
        image = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
        target = [size, size]
    elif mode == "pad":
        scale = size / tf.cast(tf.maximum(h, w), tf.float64)
        new_h = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32))
        new_w = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32))
        target = tf.stack([new_h, new_w])
    else:
        target = [size, size]
    resized = pillow_resize.resize_bilinear(image, target[0], target[1])
    if mode == "pad":
        resized = tf.image.pad_to_bounding_box(
            resized, (size - target[0]) // 2, (size - target[1]) // 2, size, size)
    return tf.ensure_shape(resized, [size, size, 3])


def resize_pil(image: Image.Image, size: int, mode: str = "squash") -> Image.Image:
    """The data engine's resize: Pillow's antialiased bilinear, on an RGB Pillow image.

    Pillow's C resampler (GIL released) is faster than TensorFlow's ScaleAndTranslate (`make
    bench-preprocess` measures both); resize_image reproduces it in-graph bit for bit, so stored
    and served pixels stay identical (tests/test_imaging.py checks both on many shapes).
    Staying in Pillow from decode to encode also saves three array copies per image.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode {mode!r} not in {RESIZE_MODES}")
    if image.mode != "RGB":
        raise ValueError(f"need an RGB image, got mode {image.mode}")
    w, h = image.size
    target_h = target_w = size
    if mode == "center_crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif mode == "pad":
        scale = size / float(max(h, w))  # float64, as resize_image
        target_h = max(1, int(np.rint(h * scale)))
        target_w = max(1, int(np.rint(w * scale)))
    out = image.resize((target_w, target_h), Image.BILINEAR)
    if mode == "pad":
        canvas = Image.new("RGB", (size, size))  # black
        canvas.paste(out, ((size - target_w) // 2, (size - target_h) // 2))
        out = canvas
    return out


def resize_pixels(pixels: np.ndarray, size: int, mode: str = "squash") -> np.ndarray:
    """resize_pil for a uint8 HxWx3 array."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"need uint8 HxWx3 pixels, got {pixels.dtype} {pixels.shape}")
    return np.asarray(resize_pil(Image.fromarray(np.ascontiguousarray(pixels)), size, mode))


def decode_for_serving(contents, size: int, mode: str = "squash",
                       oversample: float = DEFAULT_OVERSAMPLE):
    """In-graph counterpart of decode_image: JPEG (with the same DCT scaling rule) or PNG.

    EXIF orientation is not applied in-graph (TensorFlow has no op for it): send upright images.
    Alpha is composited over black as in decode_image; 16-bit PNGs may differ by one level.
    """
    import tensorflow as tf

    def scaled_jpeg():
        hwc = tf.image.extract_jpeg_shape(contents)
        h, w = tf.cast(hwc[0], tf.float64), tf.cast(hwc[1], tf.float64)
        index = tf.constant(len(_SCALE_DENOMINATORS) - 1)
        # Same rule as jpeg_scale_denominator, in graph ops; first (largest) fitting d wins.
        for i, d in reversed(list(enumerate(_SCALE_DENOMINATORS))):
            sh, sw = tf.math.ceil(h / d), tf.math.ceil(w / d)
            side = tf.maximum(sh, sw) if mode == "pad" else tf.minimum(sh, sw)
            fits = tf.logical_and(side >= oversample * size, tf.minimum(h, w) >= d)
            index = tf.where(fits, tf.constant(i), index)
        decoders = [lambda d=d: tf.io.decode_jpeg(contents, channels=3, ratio=d,
                                                  dct_method="INTEGER_ACCURATE")
                    for d in _SCALE_DENOMINATORS]
        return tf.switch_case(index, decoders)

    def png():
        # Alpha composited over black, as decode_image does (equal to Pillow's within 1 level).
        rgba = tf.io.decode_png(contents, channels=4, dtype=tf.uint8)
        rgb, alpha = tf.cast(rgba[..., :3], tf.float32), tf.cast(rgba[..., 3:], tf.float32)
        return tf.cast(tf.round(rgb * alpha / 255.0), tf.uint8)

    pixels = tf.cond(tf.io.is_jpeg(contents), scaled_jpeg, png)
    return resize_image(pixels, size, mode)


def encode_image(image: Image.Image | np.ndarray, image_format: str,
                 jpeg_quality: int = 95) -> bytes:
    """Encodes a stored image. JPEG keeps full chroma (4:4:4) so colour, a lesion cue, survives."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image_format == "jpeg":
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
        return buf.getvalue()
    if image_format == "png":
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=False, compress_level=6)
        return buf.getvalue()
    if image_format == "raw":
        return image.tobytes()  # RGB: uint8 HxWx3, row-major
    raise ValueError(f"image format {image_format!r} not in ('jpeg', 'png', 'raw')")


def decode_stored_image(encoded, image_format, height, width):
    """In-graph decode of a stored record's pixels (any of the three formats) to uint8 HxWx3."""
    import tensorflow as tf

    def raw():
        return tf.reshape(tf.io.decode_raw(encoded, tf.uint8), tf.stack([height, width, 3]))

    def compressed():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    image = tf.cond(tf.equal(image_format, "raw"), raw, compressed)
    return tf.ensure_shape(image, [None, None, 3])


def parse_sizes(text: str | Sequence[int]) -> tuple[int, ...]:
    """'256,128' -> (256, 128): positive, unique, largest first."""
    values = [int(v) for v in (text.split(",") if isinstance(text, str) else text)]
    if not values or any(v <= 0 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"image sizes must be unique positive integers, got {text!r}")
    return tuple(sorted(values, reverse=True))
