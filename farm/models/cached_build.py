"""Build a model folder into the cache once, safely across concurrent processes.

The folder is built in a staging directory beside the target and moved into place only when
complete (its `model_index.json` is the mark of a finished build), under a file lock, so two
workers starting together build it once and never load a half-written folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def build_once(target: Path, build: Callable[[Path], None], *, prefix: str = ".build-") -> Path:
    """`target`, after `build(staging)` filled a staging folder that then replaced it (once)."""
    from filelock import FileLock

    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "model_index.json").is_file():
            return target
        staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        try:
            build(staging)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target
