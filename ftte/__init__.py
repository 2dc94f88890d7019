"""Shared core of ftte: wire format, topic scheme, tasks and the memory model."""

__version__ = "0.1.0"
