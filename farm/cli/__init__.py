"""The `farm` command line: run, render, validate, demo.

Exit codes: 0 every item succeeded; 1 some items failed; 2 invalid manifest or arguments
(nothing rendered; for the remote commands also an unknown job); 3 the job could not start
(model weights or output storage unavailable, a render worker could not start, Ray or the farm
service unreachable); 128+N stopped by signal N before the end (130 Ctrl-C, 143 SIGTERM): what
committed stays, `farm resume` renders the rest. Heavy imports (torch, ray, diffusers) happen
only in commands that render.

The modules:

    parser    the argparse parser: every command and flag
    local     the commands that work here: run, resume, render, demo, validate, plan, tiers,
              calibrate, serve
    remote    the commands that talk to a farm service over HTTP: submit, status, jobs, cancel,
              pick (which also works on a job's output, through local)
    output    the exit codes and the lines printed for manifest errors and job statuses

`main` (the `farm` entry point) reads the settings once and maps errors to exit codes. On a
client-only install (`pip install 'farm[client]'`: no torch, diffusers or Ray) the commands that
render or serve exit 3 with a line naming `pip install 'farm[render]'`; the remote commands and
`validate`, `plan`, `tiers` work.
"""

from __future__ import annotations

import sys
from importlib.util import find_spec

from farm.cli.output import EXIT_CANNOT_RUN, EXIT_FAILED_ITEMS, EXIT_INVALID, EXIT_OK, _print_manifest_error
from farm.cli.parser import build_parser
from farm.core.errors import FarmError, ManifestError

__all__ = ["EXIT_CANNOT_RUN", "EXIT_FAILED_ITEMS", "EXIT_INVALID", "EXIT_OK", "build_parser", "main"]


def _interrupt_on_sigterm() -> None:
    """SIGTERM (Kubernetes, systemd, kill) stops a run like Ctrl-C: workers and the embedded Ray
    cluster are shut down; committed results stay, and `farm resume` finishes the job."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)


# The commands that render or serve here, and what they cannot start without.
RENDER_COMMANDS = ("run", "resume", "render", "demo", "serve")
RENDER_STACK = ("torch", "diffusers", "ray")
# Top-level modules of farm's `render` extra (and what they bring): a command that imports one on
# a client-only install gets the install hint rather than a traceback.
RENDER_MODULES = frozenset({
    *RENDER_STACK, "transformers", "accelerate", "huggingface_hub", "safetensors", "boto3", "botocore",
    "fastapi", "starlette", "multipart", "python_multipart", "prometheus_client", "PIL", "imageio_ffmpeg",
    "numpy", "filelock", "psutil",
})
RENDER_HINT = "pip install 'farm[render]'"


def _render_stack_missing(command: str, missing: list[str]) -> int:
    print(
        f"error: `farm {command}` needs farm's rendering stack (torch, diffusers, Ray), which this install "
        f"lacks (no {', '.join(missing)}): {RENDER_HINT} (the remote commands submit, status, jobs and cancel "
        "need only 'farm[client]')",
        file=sys.stderr,
    )
    return EXIT_CANNOT_RUN


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _interrupt_on_sigterm()
    if args.command in RENDER_COMMANDS:
        missing = [name for name in RENDER_STACK if find_spec(name) is None]
        if missing:
            return _render_stack_missing(args.command, missing)
    try:
        from farm.settings import SettingsError, load_settings

        try:
            args.settings = load_settings()  # the one read of the environment's farm settings
        except SettingsError as error:
            print(f"error: {error}", file=sys.stderr)
            return EXIT_INVALID
        return args.func(args)
    except ManifestError as error:
        _print_manifest_error(error)
        return EXIT_INVALID
    except FarmError as error:
        print(f"error: {error}", file=sys.stderr)
        status = getattr(error, "status", None)  # an HTTP error from a farm service
        # 4xx but 401/403/429: the request was wrong (an unknown job, an invalid manifest), not
        # the farm unreachable; those, and 5xx, mean it could not be done now.
        return EXIT_INVALID if status and 400 <= status < 500 and status not in (401, 403, 429) else EXIT_CANNOT_RUN
    except ModuleNotFoundError as error:
        missing = (error.name or "").partition(".")[0]
        if missing not in RENDER_MODULES:
            raise
        return _render_stack_missing(args.command, [missing])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
