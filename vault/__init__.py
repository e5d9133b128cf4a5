"""vault: deduplicating, encrypted backup and point-in-time restore."""

__version__ = "0.1.3"
