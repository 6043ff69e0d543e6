"""`farm demo`: sample images of different sizes, formats and modes, a manifest, and a run.

The images are drawn in code (no downloads): a JPEG with an EXIF rotation, a transparent PNG
for 16:9, a portrait WEBP for 9:16, a tiny palette PNG that must be upscaled, and a 16-bit
grayscale PNG. The manifest uses small settings (256p, 8 frames, 10 steps) so the tiny model
renders each video in a few seconds on a laptop CPU; each render also gets a 1080x1920
`vertical` MP4 and a `poster` PNG, made by the CPU stage (docs/deliverables.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

DEMO_JOB = "demo"
DEMO_DEFAULTS = {"resolution": 256, "frames": 8, "fps": 8, "steps": 10, "guidance_scale": 9.0}
# Made from each render on a CPU worker, off the render worker: the seeds' 9:16 pad and the first frame.
DEMO_DELIVERABLES = ["vertical", "poster"]


def _gradient(width: int, height: int, top: tuple, bottom: tuple) -> Image.Image:
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    colours = np.array(top)[None, None, :] * (1 - ramp) + np.array(bottom)[None, None, :] * ramp
    return Image.fromarray(np.repeat(colours, width, axis=1).astype(np.uint8), "RGB")


def _sunset(path: Path) -> None:
    image = _gradient(1024, 768, (255, 140, 60), (60, 20, 90))
    draw = ImageDraw.Draw(image)
    draw.ellipse((412, 300, 612, 500), fill=(255, 220, 120))
    draw.rectangle((0, 560, 1024, 768), fill=(20, 30, 50))
    # Stored rotated, with EXIF orientation 8 telling viewers to turn it back upright.
    exif = Image.Exif()
    exif[0x0112] = 8
    image.rotate(-90, expand=True).save(path, "JPEG", quality=90, exif=exif.tobytes())


def _ocean(path: Path) -> None:
    image = _gradient(800, 450, (120, 190, 255), (0, 60, 140)).convert("RGBA")
    draw = ImageDraw.Draw(image)
    for row in range(250, 450, 25):
        draw.arc((-100, row - 40, 900, row + 40), 0, 180, fill=(255, 255, 255, 200), width=4)
    alpha = Image.new("L", image.size, 255)
    ImageDraw.Draw(alpha).rectangle((0, 0, 800, 60), fill=0)  # a transparent band on top
    image.putalpha(alpha)
    image.save(path, "PNG")


def _portrait(path: Path) -> None:
    image = _gradient(360, 640, (240, 230, 210), (150, 120, 100))
    draw = ImageDraw.Draw(image)
    draw.ellipse((120, 140, 240, 260), fill=(230, 190, 160))
    draw.rectangle((110, 270, 250, 520), fill=(60, 80, 140))
    image.save(path, "WEBP", quality=90)


def _small_palette(path: Path) -> None:
    image = _gradient(160, 160, (30, 160, 80), (10, 60, 30))
    ImageDraw.Draw(image).polygon([(80, 20), (140, 140), (20, 140)], fill=(250, 240, 90))
    image.quantize(colors=16).save(path, "PNG")


def _grayscale16(path: Path) -> None:
    y, x = np.mgrid[0:512, 0:512]
    rings = (np.sin(np.hypot(x - 256, y - 256) / 12.0) * 0.5 + 0.5) * 65535
    Image.fromarray(rings.astype(np.uint16)).save(path, "PNG")


SAMPLES = [
    ("sunset.jpg", _sunset, "the sun slowly setting behind the sea, clouds drifting", {}),
    ("ocean.png", _ocean, "ocean waves rolling in, camera panning right", {"aspect": "16:9"}),
    ("portrait.webp", _portrait, "a person turning their head slowly", {"aspect": "9:16"}),
    ("small.png", _small_palette, "a yellow tent in the forest, leaves moving", {}),
    ("rings.png", _grayscale16, "ripples spreading on a pond", {}),
]


def write_demo_inputs(folder: Path) -> Path:
    """Write the sample images and `manifest.yaml` into `folder`; returns the manifest path."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for filename, draw, prompt, overrides in SAMPLES:
        draw(folder / filename)
        items.append({"id": filename.rsplit(".", 1)[0], "image": filename, "prompt": prompt, **overrides})
    manifest = {"version": 1, "name": DEMO_JOB, "model": "tiny", "defaults": {**DEMO_DEFAULTS, "deliverables": DEMO_DELIVERABLES},
                "items": items}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


TINY_NOTICE = (
    "The `tiny` model has random weights: its videos look like coloured noise. That is expected; "
    "it proves every stage (image preprocessing, the I2VGen-XL pipeline, H.264 encoding, sidecars) "
    "without downloading anything. For real videos, run the same manifest with real weights: "
    "`farm run MANIFEST --model ali-vilab/i2vgen-xl` (about 10 GB from Hugging Face, a GPU with "
    "12 GB or more), or `--model /path/to/local/i2vgen-xl` for weights you already have."
)
