"""Exceptions a user can act on. The CLI prints their message on one line and exits non-zero."""


class HeroBenchError(Exception):
    """Base class: anything hero-bench reports to the user as a clear one-line error."""


class ConfigError(HeroBenchError, ValueError):
    """A configuration value, name or file is invalid; the message names the field and what is allowed."""


class DatasetNotFoundError(HeroBenchError, FileNotFoundError):
    """Dataset files are missing and downloads are off; the message names the path and how to fetch."""


class DivergedError(HeroBenchError, FloatingPointError):
    """The loss became NaN or inf. The trainer stops the trial and records status `diverged`."""
