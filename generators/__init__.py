"""Built-in generators; each module registers itself on import."""
