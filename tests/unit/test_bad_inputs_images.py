"""Bad images and image URLs (see tests/bad_inputs.py): each fails its item with a reason and a
message that names the file; odd but valid images render with a warning."""

import io

import pytest
from bad_inputs import IMAGES
from helpers import encode, pattern
from PIL import Image

from farm.core.errors import ImageError
from farm.media.images import ImageLimits, prepare_image, read_image_file
from farm.storage.config import UrlFetchConfig
from farm.storage.inputs import fetch_url


def test_ssrf_urls_are_refused_when_the_worker_fetches_them():
    config = UrlFetchConfig(allowed_hosts="cdn.example.com,169.254.169.254", allow_http=True)
    for url, fragment in [
        ("http://169.254.169.254/latest/meta-data/iam", "link-local"),
        ("https://evil.example/x.png", "not in the allowed hosts"),
        ("http://metadata.google.internal/computeMetadata/v1/", "not in the allowed hosts"),
    ]:
        with pytest.raises(ImageError) as caught:
            fetch_url(url, config)
        assert caught.value.reason == "image_refused" and fragment in str(caught.value)


@pytest.mark.parametrize("case, name, content, reason, fragment", IMAGES, ids=[i[0] for i in IMAGES])
def test_bad_images_fail_their_item_with_a_clear_reason(case, name, content, reason, fragment):
    with pytest.raises(ImageError) as caught:
        prepare_image(content, 256, 256, name=name)
    assert caught.value.reason == reason, str(caught.value)
    assert fragment in str(caught.value) and name in str(caught.value)


def test_files_that_are_not_regular_images(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        read_image_file(str(tmp_path))
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 2048)
    with pytest.raises(ImageError, match="2048 bytes"):
        read_image_file(str(big), ImageLimits(max_bytes=1024))


def test_odd_but_valid_images_render_with_a_warning():
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    animated = prepare_image(buffer.getvalue(), 64, 64, name="anim.webp")
    assert any("2 frames" in w for w in animated.warnings)
    renamed = prepare_image(encode(pattern(64, 64), "PNG"), 64, 64, name="photo.jpg")
    assert any("JPEG extension but contains PNG" in w for w in renamed.warnings)
