"""Exception types the command line turns into a one-paragraph message and a non-zero exit code."""

from __future__ import annotations


class RecsysError(Exception):
    """Base class: the message is shown to the user as-is, so it must name the file, column and an example."""


class InputError(RecsysError):
    """An input file is missing, unreadable, empty or lacks a required column."""


class ValidationError(RecsysError):
    """Too many rows of an input failed validation; nothing was published."""


class ManifestError(RecsysError):
    """A stage output is missing its manifest or does not match the schema a consumer expects."""


class ConfigError(RecsysError):
    """The composed configuration is incomplete or inconsistent."""


class LearningFailedError(RecsysError):
    """A trained model ended below the baselines it must beat; nothing was published or registered."""
