"""The `farm` command line (being split into modules; see local.py)."""

from farm.cli.local import main

__all__ = ["main"]
