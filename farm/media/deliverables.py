"""Making one deliverable file from a committed MP4 with imageio-ffmpeg's bundled ffmpeg, and
reading back what the file really is (codec, size, fps, frames, duration).

ffmpeg runs as an argv list (never a shell) built by `farm.core.deliverables.ffmpeg_args` from
settled values; the paths are this process's own scratch files. A size cap (`max_bytes`) is met
by the core's `capped_attempts` ladder; a file that still does not fit fails with the sizes tried.
Probing: videos are decoded by ffmpeg (every frame counted); GIF, WebP and PNG through Pillow,
which reads animated WebP (ffmpeg's decoder does not).
"""

from __future__ import annotations

import functools
import os
import subprocess
from dataclasses import asdict, dataclass

from PIL import Image

from farm.core.deliverables import (
    Deliverable,
    DeliverableError,
    SourceClip,
    capped_attempts,
    encoder_for,
    ffmpeg_args,
    parse_encoders,
)
from farm.media.video import probe_mp4

FFMPEG_TIMEOUT_S = 600  # one deliverable of one clip: minutes at most, even interpolated at 4K


@dataclass(frozen=True)
class Probed:
    """What a player sees in a deliverable file."""

    codec: str
    width: int
    height: int
    fps: float | None
    frames: int
    duration_s: float
    pix_fmt: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MadeFile:
    path: str
    bytes: int
    probed: Probed
    attempt: dict  # which rung of the size cap it took ({} : as asked)
    encoder: str


@functools.lru_cache(maxsize=1)
def available_encoders() -> frozenset[str]:
    """The encoders of the bundled ffmpeg (asked once per process)."""
    import imageio_ffmpeg

    result = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True,
                            text=True, check=False, timeout=60)
    return frozenset(parse_encoders(result.stdout))


def encoders_if_known() -> set[str] | None:
    """The encoders to validate deliverables against, or None where this process has no ffmpeg
    (a light client install: the farm that runs the job checks them)."""
    try:
        return set(available_encoders())
    except Exception:  # imageio-ffmpeg missing, or its binary cannot run here
        return None


def make_deliverable(d: Deliverable, source: SourceClip, input_path: str, scratch_dir: str, *,
                     threads: int | None = None) -> MadeFile:
    """Encode `d` from `input_path` into `scratch_dir`; raises DeliverableError when ffmpeg fails
    or the file cannot be brought under `max_bytes`."""
    import imageio_ffmpeg

    encoder = encoder_for(d, set(available_encoders()))
    output = os.path.join(scratch_dir, f"{d.name}.{d.extension}")
    sizes = []
    for attempt in capped_attempts(d):
        argv = [imageio_ffmpeg.get_ffmpeg_exe(), *ffmpeg_args(d, source, input_path, output, encoder=encoder, threads=threads,
                                                                  **attempt)]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=FFMPEG_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise DeliverableError(f"ffmpeg took more than {FFMPEG_TIMEOUT_S} s to make {d.name}") from None
        if result.returncode != 0 or not os.path.exists(output):
            last = (result.stderr.strip().splitlines() or ["no output"])[-1][:300]
            raise DeliverableError(f"ffmpeg could not make {d.name}: {last}")
        size = os.path.getsize(output)
        sizes.append(size)
        if d.max_bytes is None or size <= d.max_bytes:
            return MadeFile(output, size, probe(output, d.container), attempt, encoder)
    raise DeliverableError(
        f"{d.name} stays above max_bytes {d.max_bytes} even smaller ({', '.join(map(str, sizes))} bytes tried); "
        "raise max_bytes or ask for a smaller size or fps", "max_bytes", d.max_bytes)


def probe(path: str, container: str) -> Probed:
    if container in ("gif", "webp", "png"):
        return probe_image(path)
    return probe_video(path)


def probe_image(path: str) -> Probed:
    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
        durations = []
        for index in range(frames):
            image.seek(index)
            image.load()  # a WebP frame's duration is known once it is decoded
            durations.append(image.info.get("duration", 0) or 0)
        width, height = image.size
        codec = (image.format or "").lower()
        mode = image.mode
    total_s = sum(durations) / 1000.0
    fps = round(frames / total_s, 3) if frames > 1 and total_s > 0 else None
    return Probed(codec, width, height, fps, frames, round(total_s, 4), mode)


def probe_video(path: str) -> Probed:
    """Every frame decoded (`farm.media.video.probe_mp4`): the count is what a player shows."""
    try:
        info = probe_mp4(path, timeout_s=FFMPEG_TIMEOUT_S)
    except (ValueError, subprocess.TimeoutExpired) as exc:
        raise DeliverableError(f"the file made cannot be decoded: {str(exc)[:300]}") from None
    return Probed(info.codec, info.width, info.height, info.fps, info.frames, info.duration_s, info.pix_fmt)
