"""Exceptions a user can act on. The CLI prints their message on one line and exits non-zero."""


class HeroBenchError(Exception):
    """Base class: anything hero-bench reports to the user as a clear one-line error."""


class ConfigError(HeroBenchError, ValueError):
    """A configuration value, name or file is invalid; the message names the field and what is allowed."""


class DatasetNotFoundError(HeroBenchError, FileNotFoundError):
    """Dataset files are missing and downloads are off; the message names the path and how to fetch."""


class DivergedError(HeroBenchError, FloatingPointError):
    """The loss became NaN or inf. The trainer stops the trial and records status `diverged`."""


class Interrupted(Exception):
    """The user stopped a command (Ctrl-C, SIGTERM). The message says what was kept and how to go on;
    the CLI prints it on one line and exits with 130, as a shell does for Ctrl-C."""


class HeroBenchWarning(UserWarning):
    """Something the user should know that does not stop the command; the CLI prints it on one line."""
