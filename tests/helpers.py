"""Test helpers: images of every kind, manifests, reading results back, free ports and an S3
server (moto) on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from farm.core.errors import CommitConflict

FAST = {"resolution": 256, "frames": 8, "fps": 8, "steps": 10}


def pattern(width: int, height: int) -> Image.Image:
    """A colourful RGB pattern whose center and corners are distinguishable."""
    y, x = np.mgrid[0:height, 0:width]
    array = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return Image.fromarray(array.astype(np.uint8), "RGB")


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """Random pixels: they do not compress, so truncating the file really cuts image data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge size (a decompression bomb), with a little real data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    rows = zlib.compress(b"\x00" * (width + 1) * 16, 9)  # only a few rows of zeros
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def write_manifest(folder: Path, items: list[dict], *, name: str = "job", model: str = "tiny", **header) -> Path:
    document = {"version": 1, "name": name, "model": model, "defaults": dict(FAST), "items": items, **header}
    path = folder / "manifest.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def engine_job(tmp_path: Path, name: str, count: int, engine, table, **params):
    """(ActiveJob, plan) of `count` small tiny-model items (`params` override theirs), planned on
    the engine's shape: for tests that drive an Engine with in-process workers."""
    from farm.core.job import JobState
    from farm.core.manifest import parse_manifest
    from farm.core.planner import plan_job
    from farm.runtime.engine import ActiveJob

    (tmp_path / "a.png").write_bytes(encode(pattern(320, 240), "PNG"))
    items = [{"id": f"i{n}", "image": "a.png", "prompt": "p", "resolution": 256, "frames": 8, **params}
             for n in range(count)]
    document = {"version": 1, "name": name, "model": "tiny", "output": str(tmp_path / "out"),
                "defaults": {"steps": 10, "fps": 8}, "items": items}
    spec = parse_manifest(json.dumps(document), "json", base_dir=tmp_path)
    return ActiveJob(id=name, state=JobState(spec)), plan_job(spec, engine.shape, table)


def read_sidecar(path: Path) -> dict:
    return json.loads(path.read_text())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MotoServer:
    """moto's S3 (and IAM) server in a thread, on 127.0.0.1 only, on `port` or a free one.

    `start()` returns the server; `restart(pause_s)` stops it and starts a new one on the same
    port after `pause_s` (moto keeps its data in process, so the buckets survive)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def restart(self, pause_s: float) -> None:
        self.stop()
        time.sleep(pause_s)
        self.start()


def race(n: int, attempt) -> list:
    """Run `attempt(i)` on n threads released together; the indices whose attempt returned."""
    barrier, wins, errors = threading.Barrier(n), [], []

    def run(i):
        barrier.wait()
        try:
            attempt(i)
            wins.append(i)
        except CommitConflict:
            pass
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return wins
