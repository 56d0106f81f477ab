"""Kits: the use cases built over the ports."""
