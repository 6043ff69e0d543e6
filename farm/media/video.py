"""Video output: H.264 MP4 encoding through imageio-ffmpeg's bundled ffmpeg, thumbnails, probing.

Videos are yuv420p with the moov atom at the front (`+faststart`), which is what browsers play
and stream. Frames arrive as a uint8 array shaped (frames, height, width, 3).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

import numpy as np
from PIL import Image

DEFAULT_CRF = 18


@dataclass(frozen=True)
class VideoInfo:
    """What a decoder sees in an MP4 file."""

    codec: str
    width: int
    height: int
    fps: float
    frames: int
    pix_fmt: str
    duration_s: float


def encode_mp4(frames: np.ndarray, path: str, fps: int, *, crf: int = DEFAULT_CRF) -> None:
    """Write `frames` (F, H, W, 3, uint8) as an H.264 MP4 at `fps` frames per second."""
    import imageio_ffmpeg

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames shaped (F, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        path,
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=2,  # yuv420p needs even sizes; ours are multiples of 64 anyway
        ffmpeg_log_level="error",
        output_params=["-crf", str(crf), "-preset", "medium", "-movflags", "+faststart"],
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


def write_thumbnail(frame: np.ndarray, path: str, *, quality: int = 90) -> None:
    Image.fromarray(frame).save(path, format="JPEG", quality=quality)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8, rounding rather than truncating."""
    return np.clip(frames * 255.0 + 0.5, 0, 255).astype(np.uint8)


def probe_mp4(path: str, timeout_s: float | None = None) -> VideoInfo:
    """Decode-side facts about a video file (MP4, WebM, MKV): codec, size, fps, pixel format and
    the exact frame count. Raises ValueError when ffmpeg cannot decode it."""
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # `-f null` decodes every frame, so the count is what a player shows, not a header claim.
    result = subprocess.run(
        [exe, "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )
    log = result.stderr
    if result.returncode != 0:
        raise ValueError(f"ffmpeg cannot decode {path}: {log.strip().splitlines()[-1] if log else 'no output'}")
    # "Video: vp9 (Profile 0), yuv420p(tv, progressive), 320x180": the pixel format's own
    # parenthesis may hold commas, so the size is found on its own.
    stream = re.search(r"Stream #0:\d+[^:]*: Video: (\w+)[^,]*, ([a-z0-9_]+)", log)
    dims = re.search(r"Stream #0:\d+[^\n]*?, (\d{2,5})x(\d{2,5})", log)
    fps = re.search(r"([\d.]+) fps", log)
    frames = re.findall(r"frame=\s*(\d+)", log)
    duration = re.search(r"Duration: (\d+):(\d+):([\d.]+)", log)
    if not (stream and dims and fps and frames and duration):
        raise ValueError(f"cannot read the stream description of {path}")
    hours, minutes, seconds = duration.groups()
    return VideoInfo(
        codec=stream.group(1),
        pix_fmt=stream.group(2),
        width=int(dims.group(1)),
        height=int(dims.group(2)),
        fps=float(fps.group(1)),
        frames=int(frames[-1]),
        duration_s=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
    )
