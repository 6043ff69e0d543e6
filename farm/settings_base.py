"""The base of every farm settings class: pydantic-settings, reading the environment unless
`given_values_only()` is in effect (then only the values passed in: `farm.settings.load_settings`
validates a mapping it was handed, and nothing else)."""

from __future__ import annotations

import contextlib
import contextvars

from pydantic_settings import BaseSettings

_GIVEN_ONLY = contextvars.ContextVar("farm_settings_given_only", default=False)


@contextlib.contextmanager
def given_values_only():
    token = _GIVEN_ONLY.set(True)
    try:
        yield
    finally:
        _GIVEN_ONLY.reset(token)


class FarmBaseSettings(BaseSettings):
    """pydantic-settings' BaseSettings; within `given_values_only()`, the constructor's values only."""

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings):
        if _GIVEN_ONLY.get():
            return (init_settings,)
        return (init_settings, env_settings, dotenv_settings, file_secret_settings)
