"""Errors the CLI turns into one clear line and a non-zero exit (never a stack trace)."""


class UserError(Exception):
    """Bad input or an unusable environment: the message names the thing that is wrong."""

    exit_code = 2


class AlreadyRunning(UserError):
    """A single-instance stage is already running on this root."""

    exit_code = 3
