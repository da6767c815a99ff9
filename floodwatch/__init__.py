"""Floodwatch's shared core: the contract in code (registry, topics, settings, errors)."""
