"""Built-in per-token heads; each module registers itself on import."""
