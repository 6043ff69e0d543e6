"""`StrEnum`: enum members that are their string values everywhere (JSON, metric labels, f-strings,
comparisons with plain strings), as Python 3.11's `enum.StrEnum`, on 3.10 too."""

from __future__ import annotations

from enum import Enum


class StrEnum(str, Enum):
    """A str subclass enum whose str() and format() are the value, not `Class.MEMBER`."""

    __str__ = str.__str__
    __format__ = str.__format__

    def __repr__(self) -> str:
        return repr(self.value)
