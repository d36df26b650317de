"""Errors that reach the user as one line (bad data, bad options, bad checkpoints).

Entry points catch `UserError` and print `error: <message>` without a traceback: the
message itself must name the file or option at fault and what to do about it.
"""


class UserError(Exception):
    """A problem with what the user gave us, reported as one line."""


class DataError(UserError):
    """A dataset file is missing, malformed or inconsistent."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated, or belongs to another model."""


class ConfigError(UserError):
    """An option, or a combination of options, cannot work."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Stopped(BaseException):
    """A run stopped by a signal (SIGTERM, SIGINT, SIGUSR1) after writing its checkpoint; the
    program exits with 128 + the signal number, as a process killed by it would."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


def first_line(exc: BaseException) -> str:
    """The one line of an exception that a user sees: its message's first line (its type name if it
    has none). An error re-raised by a DataLoader worker carries the worker's traceback as its
    message; its line is then the original error's message, at the end of that traceback."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    prefix = f"{type(exc).__module__}.{type(exc).__name__}: "
    return lines[-1][len(prefix):] if len(lines) > 1 and lines[-1].startswith(prefix) else lines[0]
