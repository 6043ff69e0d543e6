"""The seeds' generate.py, for one image: load the pipeline, render, write the MP4, exit.

The original product's batch was one process per image, the model loaded every time:

    for img in ./inputs/*.png; do python generate.py --image $img --prompt "..." \
        --output ./outputs/$(basename $img .png)_video.mp4; done

`benchmarks/seeds_way.py` runs this script that way against `farm run`. By hand:

    python benchmarks/seeds_generate.py --image still.png --prompt "waves" --output still_video.mp4
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import BarePipeline, Settings, match_ray_priority, tiny_model_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    match_ray_priority()  # FARM_BENCH_NICE, set by seeds_way.py; nothing when run by hand
    settings = Settings(resolution=args.resolution, frames=args.frames, steps=args.steps)
    BarePipeline(tiny_model_folder()).render(args.image, args.prompt, args.seed, settings, args.output)


if __name__ == "__main__":
    main()
