"""What identifies a config: which dataclass fields enter a fingerprint, and the fingerprint itself (a short hash
that names trained stages, runs and table rows, so that a finished result is found again and reused)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

# field metadata: a field that identifies its dataclass (fingerprints, labels) only when it differs from its default,
# so that adding it kept the fingerprints of everything made before
UNLESS_DEFAULT = {"identity": "unless-default"}


def identity_fields(x: Any, cls: Any) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` that identify the dataclass instance ``x``: not those marked ``identity: False``, nor
    those marked ``UNLESS_DEFAULT`` that hold their default."""
    return [
        f
        for f in dataclasses.fields(cls)
        if f.metadata.get("identity", True) is True
        or (f.metadata.get("identity") == UNLESS_DEFAULT["identity"] and getattr(x, f.name) != f.default)
    ]


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (dataclasses allowed; fields marked ``identity: False`` left out, and
    those marked ``UNLESS_DEFAULT`` while they hold their default)."""

    def norm(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: norm(getattr(x, f.name)) for f in identity_fields(x, x)}
        return x

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
