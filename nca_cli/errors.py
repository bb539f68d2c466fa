"""The one error type for bad configuration, shared by every room that checks its config."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is missing, unknown, mistyped or out of range."""
