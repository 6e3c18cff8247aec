"""The shared vocabulary: specs, prompt sets, results, provenance."""
