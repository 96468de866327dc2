"""Exceptions raised on user input. Each message says what was wrong and lists the valid choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchkitError(Exception):
    """Base class: the CLI prints these as one red line and exits 1 (or 2 for usage errors)."""

    exit_code: int = 1


class ConfigError(BenchkitError):
    """A config value, option or override is invalid."""

    exit_code = 2


class UnknownComponentError(ConfigError):
    """A registry name does not exist."""

    def __init__(self, family: str, name: str, choices: Iterable[str], plugins: Iterable[str] = ()) -> None:
        self.family, self.name, self.choices = family, name, sorted(choices)
        msg = f"unknown {family} {name!r}; valid: {', '.join(self.choices) or '(none)'}"
        msg += suggest(name, self.choices)
        msg += f"; installed plugins: {', '.join(sorted(plugins)) or 'none'}"
        super().__init__(msg)


class IncompatibleComponentsError(ConfigError):
    """A (tokenizer, generator, head) triple that cannot work together."""


class CheckpointError(BenchkitError):
    """A checkpoint or run directory is missing, truncated, tampered with or from another config."""


class DataError(BenchkitError):
    """A dataset cannot be found, read or is too small."""


class TrainingDivergedError(BenchkitError):
    """The loss became NaN or infinite."""


def suggest(name: str, choices: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
