"""Built-in tokenizers; each module registers itself on import."""

from benchkit.tokenizers import kl, rq, vq  # noqa: F401
