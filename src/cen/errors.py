"""Errors that are the user's mistake (config, data, arguments, files), as opposed to bugs.

One low module every layer may import. The command line prints a :class:`UserError` as one
line and any other exception with its traceback (``cen --debug`` or ``CEN_DEBUG=1`` shows
tracebacks always).
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors caused by the user's input; the message says what to change."""


class DataError(UserError, ValueError):
    """Data on disk that does not fit the config (missing modalities, label values, empty splits)."""


class ConfigError(UserError, ValueError):
    """A config file, override or setting that does not fit the schema, the data or the model."""


class RegistryError(UserError, ValueError):
    """A name that no entry of a registry has."""
