"""Built-in per-token heads (the package ``benchkit.heads``); each module registers itself on import."""

if __name__ != "benchkit.heads":  # found as top-level `heads` (Python started in the repo root)
    from benchkit.core.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)
else:
    from benchkit.heads import ce, diffloss  # noqa: F401
