"""Built-in generators (the package ``benchkit.generators``); each module registers itself on import."""

if __name__ != "benchkit.generators":  # found as top-level `generators` (Python started in the repo root)
    from benchkit.core.toplevel import defer_to_installed

    defer_to_installed(__name__, __file__)
else:
    from benchkit.generators import ar, mar, randar, rqtransformer  # noqa: F401
