"""Built-in generators; each module registers itself on import."""

from benchkit.generators import ar, mar, randar, rqtransformer  # noqa: F401
