"""Error types: every user-fixable problem names the bad value and how to fix it."""

from __future__ import annotations

__all__ = ["ConfigError", "CorruptFileError", "UnavailableError"]


class ConfigError(ValueError):
    """A preset, layer, feature or corpus setting that cannot work."""


class UnavailableError(RuntimeError):
    """A model, SAE or dataset that cannot be loaded here (for example: offline, hub needed)."""


class CorruptFileError(RuntimeError):
    """A stored artifact that is missing or unreadable; rematerialize the named asset."""
