"""Ours vs references, measured in one run."""
