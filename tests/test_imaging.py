"""Decode by content with reasons for every rejection; one resize shared by engine and serving."""
import numpy as np
import pytest
from PIL import Image

from isicflow import imaging
from tests import hostile_images as hi


def test_rejections_carry_reasons():
    cases = {
        b"": "empty_file",
        b"this is a text file, not an image": "not_an_image",
        hi.truncated_jpeg(hi.gradient(400, 300)): "corrupt_image",
        hi.png_with_huge_header(): "too_many_pixels",
    }
    for data, reason in cases.items():
        with pytest.raises(imaging.ImageRejected) as e:
            imaging.decode_image(data)
        assert e.value.reason == reason, (reason, e.value)


def test_gif_is_unsupported():
    import io
    buf = io.BytesIO()
    Image.fromarray(hi.gradient()).save(buf, format="GIF")
    with pytest.raises(imaging.ImageRejected) as e:
        imaging.decode_image(buf.getvalue())
    assert e.value.reason == "unsupported_format"


def test_modes_become_rgb():
    pixels = hi.gradient()
    for data in (hi.cmyk_jpeg(pixels), hi.grayscale_jpeg(pixels),
                 hi.palette_png_with_transparency(pixels), hi.png_16bit()):
        decoded = imaging.decode_image(data)
        assert decoded.pixels.dtype == np.uint8 and decoded.pixels.shape[2] == 3


def test_cmyk_colours_survive():
    pixels = hi.gradient()
    decoded = imaging.decode_image(hi.cmyk_jpeg(pixels)).pixels.astype(int)
    assert np.abs(decoded - pixels).mean() < 8


def test_png_content_is_decoded_whatever_the_name():
    decoded = imaging.decode_image(hi.png_bytes(Image.fromarray(hi.gradient())))
    assert decoded.source_format == "png"
    np.testing.assert_array_equal(decoded.pixels, hi.gradient())


def test_exif_orientation_applied():
    pixels = hi.gradient(96, 64)
    decoded = imaging.decode_image(hi.exif_rotated_jpeg(pixels, orientation=6))
    assert decoded.pixels.shape[:2] == (96, 64)  # rotated 90 degrees
    assert (decoded.source_width, decoded.source_height) == (64, 96)
    # Orientation 6 = rotate 90 clockwise for display: the red top-left goes to the top-right.
    assert decoded.pixels[5, -5, 0] > 200 and decoded.pixels[5, 5, 0] < 100


def test_scale_denominator_rule():
    assert imaging.jpeg_scale_denominator(3072, 2304, 256) == 8   # short side 288 >= 256
    assert imaging.jpeg_scale_denominator(3072, 2304, 256, oversample=2) == 4  # 576 >= 512
    assert imaging.jpeg_scale_denominator(718, 542, 256) == 2     # 271 >= 256
    assert imaging.jpeg_scale_denominator(718, 542, 300) == 1
    assert imaging.jpeg_scale_denominator(4000, 1000, 256, "pad") == 8  # long side 500 >= 256
    assert imaging.jpeg_scale_denominator(4000, 1000, 256, "center_crop") == 2
    with pytest.raises(ValueError):
        imaging.jpeg_scale_denominator(10, 10, 0)


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
def test_resize_shape_and_type(mode):
    out = imaging.resize_image(hi.gradient(96, 64), 32, mode).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_pad_keeps_aspect_with_black_bars():
    out = imaging.resize_image(np.full((50, 100, 3), 200, np.uint8), 40, "pad").numpy()
    assert (out[:10] == 0).all() and (out[-10:] == 0).all() and (out[12:28] == 200).all()


def test_center_crop_takes_the_middle():
    img = np.zeros((40, 120, 3), np.uint8)
    img[:, 40:80] = 255
    out = imaging.resize_image(img, 20, "center_crop").numpy()
    assert (out == 255).all()


def test_resize_close_to_an_independent_antialiased_bilinear(sample_dir):
    """Our (Pillow's) resize against TensorFlow's ScaleAndTranslate triangle kernel, an
    independent antialiased bilinear: they differ only in rounding."""
    import tensorflow as tf

    for path in sorted(sample_dir.glob("ISIC_*.jpg"))[:5]:
        decoded = imaging.decode_image(path.read_bytes())
        ours = imaging.resize_pixels(decoded.pixels, 128).astype(int)
        other = tf.image.resize(decoded.pixels, [128, 128], "bilinear", antialias=True).numpy()
        other = np.clip(np.round(other), 0, 255).astype(int)
        assert np.abs(ours - other).max() <= 2
        assert np.abs(ours - other).mean() < 0.15


def test_serving_decode_equals_engine_decode(sample_dir):
    """No train/serve skew: in-graph decode+resize gives the stored pixels exactly."""
    import tensorflow as tf

    big = np.asarray(Image.open(next(iter(sorted(sample_dir.glob("ISIC_*.jpg"))))).resize((1600, 1200)))
    sources = [p.read_bytes() for p in sorted(sample_dir.glob("ISIC_*.jpg"))[:3]]
    sources.append(hi.jpeg_bytes(big))  # reduced-scale path (1/8)
    sources.append(hi.png_bytes(Image.fromarray(hi.gradient())))
    for data in sources:
        for mode in imaging.RESIZE_MODES:
            engine = imaging.resize_pixels(imaging.decode_image(data, target=128, mode=mode).pixels,
                                           128, mode)
            serving = imaging.decode_for_serving(tf.constant(data), 128, mode).numpy()
            np.testing.assert_array_equal(engine, serving)


@pytest.mark.parametrize("mode", imaging.RESIZE_MODES)
def test_engine_resize_equals_graph_resize_exactly(mode):
    """resize_pixels (Pillow, the engine) == resize_image (TensorFlow ops, serving), bit for bit,
    on random content over down- and up-scaling, odd sizes and extreme aspect ratios."""
    rng = np.random.default_rng(1)
    shapes = [(271, 359), (324, 484), (256, 256), (255, 257), (1, 1), (3, 500), (600, 7),
              (97, 61), (40, 40), (1000, 751), (604, 3), (2000, 5)]  # last two: >100x tall
    for h, w in shapes:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for size in (256, 128, 33):
            engine = imaging.resize_pixels(pixels, size, mode)
            graph = imaging.resize_image(pixels, size, mode).numpy()
            assert engine.dtype == np.uint8 and engine.shape == (size, size, 3)
            np.testing.assert_array_equal(engine, graph, err_msg=f"{h}x{w} -> {size} {mode}")


def test_graph_resize_equals_pillow_on_random_shapes():
    from isicflow import pillow_resize

    rng = np.random.default_rng(2)
    for _ in range(25):
        h, w = (int(v) for v in rng.integers(1, 700, 2))
        out_h, out_w = (int(v) for v in rng.integers(1, 300, 2))
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        pillow = np.asarray(Image.fromarray(pixels).resize((out_w, out_h), Image.BILINEAR))
        ours = pillow_resize.resize_bilinear(pixels, out_h, out_w).numpy()
        np.testing.assert_array_equal(ours, pillow, err_msg=f"{h}x{w} -> {out_h}x{out_w}")


def test_resize_pixels_rejects_wrong_input():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        imaging.resize_pixels(np.zeros((4, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="resize mode"):
        imaging.resize_pixels(np.zeros((4, 4, 3), np.uint8), 2, "stretch")


def test_reduced_decode_close_to_full_decode():
    big = np.asarray(Image.fromarray(hi.gradient(300, 200)).resize((3072, 2304), Image.BICUBIC))
    data = hi.jpeg_bytes(big)
    reduced = imaging.decode_image(data, target=256)
    assert reduced.scale_denominator == 8
    full = imaging.resize_image(imaging.decode_image(data).pixels, 256).numpy().astype(float)
    small = imaging.resize_image(reduced.pixels, 256).numpy().astype(float)
    psnr = 10 * np.log10(255 ** 2 / max(np.mean((full - small) ** 2), 1e-12))
    assert psnr > 40


@pytest.mark.parametrize("fmt", ["jpeg", "png", "raw"])
def test_stored_formats_round_trip(fmt):
    import tensorflow as tf

    pixels = hi.gradient(32, 32)
    encoded = imaging.encode_image(pixels, fmt)
    back = imaging.decode_stored_image(tf.constant(encoded), tf.constant(fmt), 32, 32).numpy()
    tolerance = 8 if fmt == "jpeg" else 0
    assert np.abs(back.astype(int) - pixels).max() <= tolerance


def test_parse_sizes():
    assert imaging.parse_sizes("128,256") == (256, 128)
    for bad in ("", "0", "256,256", "-1"):
        with pytest.raises(ValueError):
            imaging.parse_sizes(bad)


def test_engine_and_serving_pick_the_same_scale_on_small_images(sample_dir):
    """250x250 at 32 px: 1/8 scale; Pillow must not fall back to a coarser choice of its own."""
    import tensorflow as tf

    data = (sample_dir / "ISIC_0000000.jpg").read_bytes()
    for size in (32, 48, 64, 100):
        decoded = imaging.decode_image(data, target=size)
        d = imaging.jpeg_scale_denominator(250, 250, size)
        assert decoded.scale_denominator == d
        assert decoded.pixels.shape[:2] == (-(-250 // d), -(-250 // d))
        serving = imaging.decode_for_serving(tf.constant(data), size).numpy()
        np.testing.assert_array_equal(imaging.resize_image(decoded.pixels, size).numpy(), serving)


def test_serving_composites_alpha_like_the_engine():
    import tensorflow as tf

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 50, 4), dtype=np.uint8)
    data = hi.png_bytes(Image.fromarray(rgba, mode="RGBA"))
    engine = imaging.resize_image(imaging.decode_image(data, target=32).pixels, 32).numpy()
    serving = imaging.decode_for_serving(tf.constant(data), 32).numpy()
    assert np.abs(engine.astype(int) - serving).max() <= 1
