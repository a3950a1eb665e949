"""Errors a user can act on.

Every error raised for bad input (an unknown task, a missing file, a malformed
record, an invalid parameter) is a :class:`D1Error`. The CLI prints its message
on one line and exits non-zero instead of showing a traceback.
"""


class D1Error(Exception):
    """Base class for errors caused by the user's input or environment."""


class UnknownTaskError(D1Error, KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DataError(D1Error):
    """A data file or record that cannot be read or has the wrong shape."""


class ConfigError(D1Error):
    """A parameter value that fails validation."""


class TrainingError(D1Error):
    """A training run that cannot go on: e.g. its loss or gradients stayed non-finite (a learning rate
    far too high). Nothing is saved from the weights it stopped at."""
