"""Input images: safe decoding and preprocessing to the render's exact frame size.

Checks happen in the cheapest order: byte size before reading, format and pixel count from the
header before decoding, then a full decode (which catches truncated files). Accepted formats
are JPEG, PNG and WEBP, recognised by content, not by extension. EXIF orientation is applied,
every mode (palette, RGBA, grayscale, CMYK, 16-bit) becomes 8-bit RGB, the image is center
cropped to the target aspect and resized with Lanczos. A source smaller than the target is
upscaled with a warning rather than refused.

Local files are opened as `farm.core.localfiles.open_image_file` does: the canonical path that
validation stored, component by component without following symbolic links (one swapped in after
validation is refused), regular files only, inside the job's `image_root` when it has one.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from farm.core.errors import ImageError
from farm.core.localfiles import open_image_file, read_at_most

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
# Well below Pillow's own bomb guard (about 89 Mpx, and it only warns below twice that).
DEFAULT_MAX_PIXELS = 40_000_000

_EXTENSIONS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


@dataclass
class PreparedImage:
    """An RGB image at the exact render size, plus what we learned about its source."""

    image: Image.Image
    sha256: str
    source_format: str
    source_mode: str
    source_size: tuple[int, int]
    source_bytes: int
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "sha256": self.sha256,
            "format": self.source_format,
            "mode": self.source_mode,
            "width": self.source_size[0],
            "height": self.source_size[1],
            "bytes": self.source_bytes,
        }


def read_image_file(path: str, limits: ImageLimits = ImageLimits(), root: str | None = None) -> bytes:
    """Read a local image: refused unless a regular file reached without following any symbolic
    link (the path is canonical since validation; a link swapped in later is refused), inside
    `root` when given, and within the byte limit, checked on the open descriptor before reading."""
    fd, info = open_image_file(path, root)
    try:
        if info.st_size > limits.max_bytes:
            raise _too_large(path, info.st_size, limits)
        data = read_at_most(fd, limits.max_bytes + 1, info.st_size)
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}", "image_not_found") from None
    finally:
        os.close(fd)
    if len(data) > limits.max_bytes:  # it grew since fstat
        raise _too_large(path, len(data), limits)
    return data


def check_image_file(path: str, root: str | None = None) -> ImageError | None:
    """What `read_image_file` would refuse about the file itself (missing, not a regular file, a
    symbolic link, outside `root`), without reading it: for pre-flight checks."""
    try:
        fd, _ = open_image_file(path, root)
    except ImageError as error:
        return error
    os.close(fd)
    return None


def _too_large(path: str, size: int, limits: ImageLimits) -> ImageError:
    return ImageError(
        f"image {path} is {size} bytes, over the {limits.max_bytes}-byte limit; downscale or recompress it",
        "image_too_large",
    )


def prepare_image(
    data: bytes, width: int, height: int, *, name: str = "image", limits: ImageLimits = ImageLimits()
) -> PreparedImage:
    """Decode, validate and convert `data` into an RGB image of exactly `width` x `height`."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); provide a JPEG, PNG or WEBP file", "image_invalid")
    if len(data) > limits.max_bytes:
        raise ImageError(
            f"{name} is {len(data)} bytes, over the {limits.max_bytes}-byte limit; downscale or recompress it",
            "image_too_large",
        )
    digest = hashlib.sha256(data).hexdigest()
    with warnings.catch_warnings():
        # Our own pixel limit below is stricter; Pillow's bomb warning would only be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            source = Image.open(io.BytesIO(data), formats=None)
        except UnidentifiedImageError:
            raise ImageError(
                f"{name} is not a recognisable image; provide a JPEG, PNG or WEBP file", "image_invalid"
            ) from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name} is a decompression bomb: {exc}", "image_too_large") from None
        except Exception as exc:  # Pillow raises many types on malformed headers
            raise ImageError(f"{name} is corrupt or truncated ({exc}); re-export the file", "image_invalid") from None
        fmt = source.format or "unknown"
        if fmt not in ALLOWED_FORMATS:
            raise ImageError(
                f"{name} is {fmt}, which is not supported; convert it to JPEG, PNG or WEBP", "image_invalid"
            )
        w, h = source.size
        if w < 1 or h < 1 or w * h > limits.max_pixels:
            raise ImageError(
                f"{name} is {w}x{h} ({w * h} pixels), over the {limits.max_pixels}-pixel limit; downscale it",
                "image_too_large",
            )
        notes: list[str] = []
        if getattr(source, "n_frames", 1) > 1:
            notes.append(f"{name} has {source.n_frames} frames (animated or multi-page); using the first")
        mode = source.mode
        try:
            source.load()
            rgb = _to_rgb(ImageOps.exif_transpose(source))
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{name} is a decompression bomb: {exc}", "image_too_large") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(
                f"{name} is corrupt or truncated ({exc}); re-export the file", "image_invalid"
            ) from None
    extension_format = _EXTENSIONS.get(os.path.splitext(name)[1].lower())
    if extension_format and extension_format != fmt:
        notes.append(f"{name} has a {extension_format} extension but contains {fmt}; decoded as {fmt}")
    if rgb.width < width or rgb.height < height:
        notes.append(
            f"source {rgb.width}x{rgb.height} is smaller than the target {width}x{height}; it was upscaled, "
            "expect a softer video"
        )
    return PreparedImage(
        image=fit_to_frame(rgb, width, height),
        sha256=digest,
        source_format=fmt,
        source_mode=mode,
        source_size=(w, h),
        source_bytes=len(data),
        warnings=notes,
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "F":
            peak = 1.0 if array.max() <= 1.0 else float(array.max())
        array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "RGB":
        return image
    return image.convert("RGB")


def fit_to_frame(image: Image.Image, width: int, height: int) -> Image.Image:
    """Center crop to the target aspect ratio, then Lanczos resize to exactly width x height."""
    src_w, src_h = image.size
    target_ratio = width / height
    if src_w / src_h > target_ratio:  # too wide: crop the sides
        crop_w = max(1, round(src_h * target_ratio))
        left = (src_w - crop_w) // 2
        box = (left, 0, left + crop_w, src_h)
    else:  # too tall: crop top and bottom
        crop_h = max(1, round(src_w / target_ratio))
        top = (src_h - crop_h) // 2
        box = (0, top, src_w, top + crop_h)
    return image.resize((width, height), Image.Resampling.LANCZOS, box=box)
