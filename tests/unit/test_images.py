import json
import os
import threading

import numpy as np
import pytest
from helpers import encode, noise, pattern, png_bomb
from PIL import Image

from farm.core.errors import ImageError
from farm.core.manifest import parse_manifest
from farm.media.images import ImageLimits, check_image_file, fit_to_frame, prepare_image, read_image_file
from farm.storage.inputs import read_input


def prepared(data, width=64, height=64, **kwargs):
    return prepare_image(data, width, height, **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode(pattern(96, 80), "PNG"),
        lambda: encode(pattern(96, 80), "JPEG"),
        lambda: encode(pattern(96, 80), "WEBP"),
        lambda: encode(pattern(96, 80).convert("L"), "PNG"),
        lambda: encode(pattern(96, 80).convert("LA"), "PNG"),
        lambda: encode(pattern(96, 80).convert("RGBA"), "PNG"),
        lambda: encode(pattern(96, 80).quantize(16), "PNG"),
        lambda: encode(pattern(96, 80).convert("1"), "PNG"),
        lambda: encode(pattern(96, 80).convert("CMYK"), "JPEG"),
        lambda: encode(pattern(96, 80).convert("L"), "JPEG"),
        lambda: encode(Image.fromarray((np.arange(96 * 80).reshape(80, 96) * 8).astype(np.uint16)), "PNG"),
        lambda: encode(pattern(96, 80).convert("RGBA"), "WEBP", lossless=True),
    ],
    ids=["png", "jpeg", "webp", "gray", "gray-alpha", "rgba", "palette", "1bit", "cmyk", "gray-jpeg", "16bit", "webp-alpha"],
)
def test_every_mode_becomes_rgb_at_the_exact_size(make):
    result = prepared(make(), 64, 48)
    assert result.image.mode == "RGB" and result.image.size == (64, 48)
    assert len(result.sha256) == 64


def test_16_bit_images_keep_their_range():
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    result = prepared(encode(Image.fromarray(ramp), "PNG"))
    row = np.asarray(result.image)[32, :, 0]
    assert row[0] < 10 and row[-1] > 245  # not clipped to white, not crushed to black


def test_transparency_is_composited_over_white():
    image = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    pixel = np.asarray(prepared(encode(image, "PNG")).image)[10, 10]
    assert tuple(pixel) == (255, 255, 255)


def test_palette_transparency_is_composited_over_white():
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0] * 256)
    data = encode(image, "PNG", transparency=0)
    assert tuple(np.asarray(prepared(data).image)[5, 5]) == (255, 255, 255)


def test_exif_orientation_is_applied():
    upright = Image.new("RGB", (80, 40), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 40, 40))  # red on the left half
    stored = upright.rotate(90, expand=True)  # stored sideways: 40x80
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers must rotate 90 degrees clockwise
    result = prepared(encode(stored, "JPEG", exif=exif.tobytes()), 80, 40)
    array = np.asarray(result.image).astype(int)
    assert array[20, 10, 0] > 200 and array[20, 10, 2] < 60  # left is red again
    assert array[20, 70, 2] > 200 and array[20, 70, 0] < 60


def test_center_crop_keeps_the_middle():
    wide = Image.new("RGB", (300, 100), (0, 0, 0))
    wide.paste((0, 255, 0), (100, 0, 200, 100))  # the middle third is green
    array = np.asarray(fit_to_frame(wide, 50, 50))
    assert array[:, :, 1].min() > 200  # only the green middle survives a square crop
    tall = Image.new("RGB", (100, 300), (0, 0, 0))
    tall.paste((0, 255, 0), (0, 100, 100, 200))
    assert np.asarray(fit_to_frame(tall, 60, 60))[:, :, 1].min() > 200


def test_smaller_sources_are_upscaled_with_a_warning():
    result = prepared(encode(pattern(32, 32), "PNG"), 64, 64)
    assert result.image.size == (64, 64)
    assert any("smaller than the target" in w for w in result.warnings)


def test_wrong_extension_is_decoded_by_content_with_a_warning():
    result = prepared(encode(pattern(64, 64), "PNG"), name="photo.jpg")
    assert result.source_format == "PNG"
    assert any("JPEG extension" in w for w in result.warnings)


def test_animated_images_use_the_first_frame_with_a_warning():
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    result = prepared(data)
    assert tuple(np.asarray(result.image)[1, 1]) == (255, 0, 0)
    assert any("2 frames" in w for w in result.warnings)


@pytest.mark.parametrize(
    "data, reason, fragment",
    [
        (b"", "image_invalid", "empty"),
        (b"this is not an image", "image_invalid", "not a recognisable image"),
        (encode(noise(64, 64), "PNG")[:2000], "image_invalid", "corrupt or truncated"),
        (encode(noise(256, 256), "JPEG")[:3000], "image_invalid", "corrupt or truncated"),
        (encode(pattern(64, 64), "BMP"), "image_invalid", "BMP, which is not supported"),
        (encode(pattern(64, 64), "GIF"), "image_invalid", "GIF, which is not supported"),
        (encode(pattern(64, 64), "TIFF"), "image_invalid", "TIFF, which is not supported"),
        (png_bomb(), "image_too_large", "pixel"),
        (png_bomb(100_000, 100_000), "image_too_large", "bomb"),
    ],
    ids=["empty", "garbage", "truncated-png", "truncated-jpeg", "bmp", "gif", "tiff", "bomb", "huge-bomb"],
)
def test_bad_images_fail_with_a_clear_reason(data, reason, fragment):
    with pytest.raises(ImageError) as caught:
        prepared(data, name="in.png")
    assert caught.value.reason == reason
    assert fragment in str(caught.value) and "in.png" in str(caught.value)


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageError, match="pixel limit"):
        prepared(encode(pattern(100, 100), "PNG"), limits=ImageLimits(max_pixels=5000))


def test_byte_limit_is_checked_before_reading(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2000)
    with pytest.raises(ImageError) as caught:
        read_image_file(str(path), ImageLimits(max_bytes=1000))
    assert caught.value.reason == "image_too_large" and "2000 bytes" in str(caught.value)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(ImageError) as caught:
        read_image_file(str(tmp_path / "nope.png"))
    assert caught.value.reason == "image_not_found" and "nope.png" in str(caught.value)
    with pytest.raises(ImageError, match="not a file"):
        read_image_file(str(tmp_path))


# --- opening local files (issue 13): what was validated is what is read ----------------------


def refused(path, root=None, reason="image_not_found", seconds=10.0):
    """The ImageError reading `path` raises; fails rather than hangs if the read blocks (a FIFO)."""
    outcome = {}

    def target():
        try:
            outcome["data"] = read_image_file(str(path), root=root)
        except ImageError as error:
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"reading {path} blocked"
    error = outcome.get("error")
    assert error is not None, f"{path} was read: {outcome.get('data', b'')[:20]!r}"
    assert error.reason == reason, str(error)
    assert check_image_file(str(path), root) is not None  # the pre-flight check agrees
    return str(error)


def validated(folder, image):
    """The canonical image path validation stores for `image` (relative to `folder`)."""
    document = {"version": 1, "items": [{"image": str(image), "prompt": "p"}]}
    return parse_manifest(json.dumps(document), "json", base_dir=folder).items[0].image


def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "in.png")
    assert "named pipe (FIFO)" in refused(tmp_path / "in.png")


def test_a_directory_is_refused(tmp_path):
    assert "is a directory" in refused(tmp_path)


def test_a_symlink_to_a_device_is_resolved_at_validation_and_refused(tmp_path):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    canonical = validated(tmp_path, "zero.png")
    assert canonical == "/dev/zero"
    assert "a character device" in refused(canonical)
    assert "symbolic link" in refused(tmp_path / "zero.png", reason="image_refused")  # never followed when reading


def test_a_symlink_present_before_validation_works(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "a.png").write_bytes(b"picture")
    (tmp_path / "photos").symlink_to(tmp_path / "library")  # a user's symlinked photo folder
    (tmp_path / "library" / "b.png").symlink_to(tmp_path / "library" / "a.png")
    for name in ("photos/a.png", "photos/b.png"):
        canonical = validated(tmp_path, name)
        assert canonical == str(tmp_path / "library" / "a.png")
        assert read_image_file(canonical) == b"picture" and check_image_file(canonical) is None


def test_a_symlink_swapped_in_after_validation_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"picture")
    (tmp_path / "secret").write_bytes(b"not for you")
    canonical = validated(tmp_path, "in/a.png")
    assert read_image_file(canonical) == b"picture"
    os.remove(canonical)
    os.symlink(tmp_path / "secret", canonical)  # the file becomes a link
    message = refused(canonical, reason="image_refused")
    assert "symbolic link" in message and "not followed" in message
    os.remove(canonical)
    os.rename(tmp_path / "in", tmp_path / "in.real")
    os.symlink(tmp_path / "in.real", tmp_path / "in")  # a folder on the path becomes a link
    (tmp_path / "in.real" / "a.png").write_bytes(b"picture")
    assert f"goes through {tmp_path / 'in'}, which is a symbolic link" in refused(canonical, reason="image_refused")


def test_images_outside_the_root_are_refused(tmp_path):
    for folder in ("base", "base2", "elsewhere"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "a.png").write_bytes(folder.encode())
    root = str(tmp_path / "base")
    assert read_image_file(str(tmp_path / "base" / "a.png"), root=root) == b"base"
    assert "outside the allowed folder" in refused(tmp_path / "base2" / "a.png", root, "image_refused")  # a sibling prefix
    assert "outside the allowed folder" in refused(tmp_path / "elsewhere" / "a.png", root, "image_refused")
    assert "outside" in refused(f"{root}/../elsewhere/a.png", root, "image_refused")
    (tmp_path / "base" / "escape.png").symlink_to(tmp_path / "elsewhere" / "a.png")
    refused(tmp_path / "base" / "escape.png", root, "image_refused")  # a link inside the root is not followed out
    (tmp_path / "link-to-base").symlink_to(tmp_path / "base")  # the operator's root may be a link
    assert read_image_file(str(tmp_path / "base" / "a.png"), root=str(tmp_path / "link-to-base")) == b"base"


def test_read_input_passes_the_root_on(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "other.png").write_bytes(b"x")
    with pytest.raises(ImageError) as caught:
        read_input(str(tmp_path / "other.png"), ImageLimits(), root=str(tmp_path / "base"))
    assert caught.value.reason == "image_refused"
    assert read_input(str(tmp_path / "other.png"), ImageLimits()).data == b"x"


def test_messages_do_not_assume_a_manifest(tmp_path):
    message = refused(tmp_path / "nope.png")
    assert "check the image path" in message and "manifest" not in message


def test_at_most_the_limit_is_read(tmp_path):
    path = tmp_path / "a.png"
    path.write_bytes(b"\0" * 1000)
    assert len(read_image_file(str(path), ImageLimits(max_bytes=1000))) == 1000
    with pytest.raises(ImageError, match="1001 bytes"):
        path.write_bytes(b"\0" * 1001)
        read_image_file(str(path), ImageLimits(max_bytes=1000))
