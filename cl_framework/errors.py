"""Error types raised before training starts, so a user sees one clear message.

Every message names the offending config key or file and says how to fix it.
"""

from __future__ import annotations


class CLFrameworkError(Exception):
    """Base class of all errors this framework raises on bad user input."""


class ConfigError(CLFrameworkError, ValueError):
    """A config key is unknown, has the wrong type or an impossible value.

    ``key`` is the dotted config path (e.g. ``strategy.derpp.alpha``).
    """

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        self.key = key
        self.problem = problem
        self.fix = fix
        message = f"config key '{key}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)


class DataError(CLFrameworkError, FileNotFoundError):
    """A data file is missing, truncated or corrupt."""

    def __init__(self, path: str, problem: str, fix: str | None = None) -> None:
        self.path = path
        self.problem = problem
        self.fix = fix
        message = f"data file '{path}': {problem}"
        if fix:
            message += f". Fix: {fix}"
        super().__init__(message)
