"""Shared core: registries, atomic file I/O, the channel-coupling analysis and the multi-domain model."""
