"""Benchmark: `farm validate` on a 10,000-item manifest, in every format.

Prints, per format, the median wall time of the whole command (a fresh `python -m farm validate`
process, imports included) and of the in-process validation, against a baseline measured in the
same run: a bare process that only parses the same file with PyYAML / json / csv. The goal from
issue 2 is an answer in under a second.

    python benchmarks/validate_manifest.py [--items 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from common import median_seconds

PARSE_ONLY = {
    "yaml": "import yaml,sys; yaml.load(open(sys.argv[1]), Loader=yaml.CSafeLoader)",
    "json": "import json,sys; json.load(open(sys.argv[1]))",
    "jsonl": "import json,sys; [json.loads(l) for l in open(sys.argv[1])]",
    "csv": "import csv,sys; list(csv.DictReader(open(sys.argv[1])))",
}


def make_items(count: int) -> list[dict]:
    items = []
    for n in range(count):
        item = {"id": f"shot-{n:05d}", "image": f"images/{n % 50:02d}.jpg", "prompt": f"a slow pan across scene {n}"}
        if n % 3 == 0:
            item["preset"] = "quick"
        if n % 5 == 0:
            item["frames"] = 24
        if n % 7 == 0:
            item["aspect"] = "16:9"
        items.append(item)
    return items


def write_images(folder: Path) -> None:
    """The 50 files the items name: validate checks that local images exist (not what they hold)."""
    (folder / "images").mkdir(exist_ok=True)
    for n in range(50):
        (folder / "images" / f"{n:02d}.jpg").write_bytes(b"\xff\xd8\xff")


def write_manifests(folder: Path, count: int) -> dict[str, Path]:
    write_images(folder)
    items = make_items(count)
    document = {"version": 1, "name": "bench", "model": "tiny", "defaults": {"resolution": 256}, "items": items}
    paths = {fmt: folder / f"bench.{fmt}" for fmt in ("yaml", "json", "jsonl", "csv")}
    paths["yaml"].write_text(yaml.safe_dump(document))
    paths["json"].write_text(json.dumps(document))
    paths["jsonl"].write_text("".join(json.dumps(i) + "\n" for i in items))
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "image", "prompt", "preset", "frames", "aspect"])
        writer.writeheader()
        writer.writerows(items)
    return paths


def in_process_seconds(path: Path, repeats: int) -> float:
    from farm.storage.manifest_file import load_manifest

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        load_manifest(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_manifests(Path(tmp), args.items)
        print(f"{args.items} items, median of {args.repeats} runs")
        print(f"{'format':8} {'farm validate':>14} {'parse only':>11} {'ratio':>6} {'in-process':>11}")
        for fmt, path in paths.items():
            command = median_seconds([sys.executable, "-m", "farm", "validate", str(path)], args.repeats)
            baseline = median_seconds([sys.executable, "-c", PARSE_ONLY[fmt], str(path)], args.repeats)
            inside = in_process_seconds(path, args.repeats)
            verdict = "ok" if command < 1.0 else "OVER 1 s"
            print(f"{fmt:8} {command:13.3f}s {baseline:10.3f}s {command / baseline:5.2f}x {inside:10.3f}s  {verdict}")


if __name__ == "__main__":
    main()
