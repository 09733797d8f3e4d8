"""Typed user-facing errors: the CLI prints them as one line, without a traceback."""


class MoatError(Exception):
    """A user mistake or an environment problem with a known fix."""

    def __init__(self, message: str, *, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} — {self.fix}" if self.fix else self.message


class ConfigError(MoatError):
    """A config file or --set override is invalid."""


class DataError(MoatError):
    """An input file, dataset dir or catalog fetch is unusable."""


class ModelError(MoatError):
    """A model dir or checkpoint is missing or malformed."""
