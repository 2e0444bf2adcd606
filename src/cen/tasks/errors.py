"""Moved to :mod:`cen.errors` (one low module for every layer); kept so older imports keep working."""

from cen.errors import ConfigError, DataError, UserError

__all__ = ["ConfigError", "DataError", "UserError"]
