"""Portico's job model: pure Python, standard library only."""
