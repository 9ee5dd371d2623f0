"""Exceptions whose message is meant for the user: they name the problem and the fix."""


class RedrError(Exception):
    """An error the user can act on (bad data file, corrupt checkpoint, ...). Exit code 1."""


class UsageError(RedrError, ValueError):
    """Invalid options or arguments. The CLI exits with code 2 and writes nothing."""


class DataError(RedrError):
    """A dataset file is missing, truncated, corrupt or inconsistent."""
