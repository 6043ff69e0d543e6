"""Benchmark: `farm plan` on a 10,000-item manifest of mixed sizes (issue 3: under 2 seconds).

Prints the median wall time of the whole command (a fresh process, imports included) for the
table and the JSON output, against `farm validate` on the same file in the same run (planning
costs what it adds to validation).

    python benchmarks/plan_manifest.py [--items 10000] [--repeats 5] [--gpus 12g:4,24g:2,80g:1]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from common import median_seconds
from validate_manifest import write_images

RESOLUTIONS = (256, 512, 768, 1024)
FRAMES = (8, 16, 24, 32)
ASPECTS = ("1:1", "16:9", "9:16")


def write_manifest(path: Path, count: int) -> None:
    items = []
    for n in range(count):
        items.append(
            {
                "id": f"shot-{n:05d}",
                "image": f"images/{n % 50:02d}.jpg",
                "prompt": f"a slow pan across scene {n}",
                "resolution": RESOLUTIONS[n % 4],
                "frames": FRAMES[(n // 4) % 4],
                "aspect": ASPECTS[(n // 16) % 3],
                **({"degrade": "never"} if n % 97 == 0 else {}),
            }
        )
    path.write_text(json.dumps({"version": 1, "name": "bench", "model": "tiny", "items": items}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gpus", default="12g:4,24g:2,80g:1")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.json"
        write_manifest(path, args.items)
        write_images(Path(tmp))
        farm = [sys.executable, "-m", "farm"]
        validate = median_seconds([*farm, "validate", str(path)], args.repeats)
        table = median_seconds([*farm, "plan", str(path), "--gpus", args.gpus], args.repeats)
        as_json = median_seconds([*farm, "plan", str(path), "--gpus", args.gpus, "--json"], args.repeats)
        print(f"{args.items} items, --gpus {args.gpus}, median of {args.repeats} runs")
        print(f"farm validate          {validate:6.3f}s  (baseline)")
        for name, seconds in (("farm plan (table)", table), ("farm plan --json", as_json)):
            verdict = "ok" if seconds < 2.0 else "OVER 2 s"
            print(f"{name:22} {seconds:6.3f}s  {seconds / validate:5.2f}x validate  {verdict}")


if __name__ == "__main__":
    main()
