"""The ML libraries' own chatter: quiet in farm's processes (workers, model builds)."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Silence progress bars and deprecation chatter of diffusers/transformers in workers."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
