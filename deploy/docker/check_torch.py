"""A build step of both images: fail unless the installed torch is the one CI tested.

    python check_torch.py constraints.txt --cpu     # Dockerfile.cpu: the CPU build of the pinned torch
    python check_torch.py constraints.txt --cuda    # Dockerfile.gpu: a CUDA build of the pinned torch

The tested version is written in one place, constraints.txt (`torch==X.Y.Z`; dev.py reads its
TORCH_VERSION from there too). A local build label (`+cpu`, `+cu126`) does not count; the build
kind (CPU or CUDA) does. Exit 0 on a match, 1 on a mismatch or no torch, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def pinned_torch(constraints: Path) -> str | None:
    for line in constraints.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        name, sep, version = requirement.partition("==")
        if sep and name.strip().lower() == "torch":
            return version.strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="fail unless the installed torch is the one constraints.txt pins")
    parser.add_argument("constraints", type=Path)
    kind = parser.add_mutually_exclusive_group(required=True)
    kind.add_argument("--cpu", action="store_true", help="require the CPU build")
    kind.add_argument("--cuda", action="store_true", help="require a CUDA build")
    args = parser.parse_args(argv)
    wanted = pinned_torch(args.constraints)
    if wanted is None:
        print(f"error: {args.constraints} pins no torch (torch==VERSION)", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError as error:
        print(f"error: torch is not installed ({error}); constraints.txt pins torch=={wanted}", file=sys.stderr)
        return 1
    installed = torch.__version__
    cuda = getattr(torch.version, "cuda", None)
    build = f"CUDA {cuda} build" if cuda else "CPU build"
    problems = []
    if installed.split("+")[0] != wanted:
        problems.append(f"torch {installed} is installed but CI tested torch {wanted} ({args.constraints})")
    if args.cuda and not cuda:
        problems.append(f"torch {installed} is a CPU build; this image needs a CUDA build")
    if args.cpu and cuda:
        problems.append(f"torch {installed} is a CUDA {cuda} build; this image needs the CPU build")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    print(f"torch {installed} ({build}) is the tested torch {wanted}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
