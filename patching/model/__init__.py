"""Models: loading, per-family architecture access, the editable forward, hook names, memory budget."""
