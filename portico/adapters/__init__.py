"""Adapters of Portico's ports that need nothing beyond the standard library."""
