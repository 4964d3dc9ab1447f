"""Builders of hostile and unusual image files, shared by imaging and end-to-end tests."""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def jpeg_bytes(pixels: np.ndarray, quality: int = 92, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality, **save_kwargs)
    return buf.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def gradient(width: int = 96, height: int = 64) -> np.ndarray:
    """A smooth RGB test picture with a distinct top-left corner (for orientation checks)."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1),
                    np.full_like(xx, 128)], axis=-1).astype(np.uint8)
    img[: height // 4, : width // 4] = [255, 0, 0]
    return img


def truncated_jpeg(pixels: np.ndarray) -> bytes:
    data = jpeg_bytes(pixels)
    return data[: len(data) // 2]


def cmyk_jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def grayscale_jpeg(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).convert("L").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def exif_rotated_jpeg(pixels: np.ndarray, orientation: int = 6) -> bytes:
    """Stores `pixels` as-is with an EXIF orientation tag; a viewer shows them rotated."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(pixels, exif=exif.tobytes())


def palette_png_with_transparency(pixels: np.ndarray) -> bytes:
    img = Image.fromarray(pixels).convert("P", palette=Image.ADAPTIVE, colors=16)
    img.info["transparency"] = 0
    return png_bytes(img)


def png_16bit(width: int = 40, height: int = 30) -> bytes:
    arr = (np.linspace(0, 65535, width * height).reshape(height, width)).astype(np.uint16)
    return png_bytes(Image.fromarray(arr, mode="I;16"))


def png_with_huge_header(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny file whose header claims width x height pixels (a decompression bomb)."""
    data = bytearray(png_bytes(Image.new("RGB", (1, 1))))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)
