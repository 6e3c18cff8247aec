"""The algorithms over the runner, one file each: sweep, hooked fallback, path, attribution, attention, circuit, compare, refine, cost."""
