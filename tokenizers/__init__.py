"""Built-in tokenizers (the package ``benchkit.tokenizers``); each module registers itself on import."""

if __name__ != "benchkit.tokenizers":  # found as top-level `tokenizers` (Python started in the repo root)
    from benchkit.core.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)
else:
    from benchkit.tokenizers import kl, rq, vq  # noqa: F401
