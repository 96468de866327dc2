"""Per-component option tables in presets, and the backbone size of a generator.

A preset may give each component a table of options per registered name, used when that name is chosen::

    [generator.sizes]
    ar = { width = 512, depth = 12, num_heads = 8 }
    mar = { width = 512, encoder_depth = 6, decoder_depth = 6, num_heads = 8 }

so that a sweep switching ``generator.name`` gets the preset's size for that generator (one ``options`` table
cannot serve generators whose options differ). The chosen table goes under ``options``: explicit options and
``--set generator.options.x=...`` win. ``sizes`` is consumed while the config is resolved; the run config (and
so every fingerprint) holds only the resulting options.

``backbone_params`` counts the parameters of a generator's transformer stacks (every
:class:`benchkit.nn.transformer.Transformer` it holds: AR's decoder, MAR's encoder + decoder, the RQ-Transformer's
spatial + depth transformers), leaving out embeddings, position tables and the per-token head. Shipped presets
size the generators so that these counts agree within 5% (MAR, Sec. 4.2: the AR baseline gets twice the depth
so that the parameter counts are equal).
"""

from __future__ import annotations

from typing import Any

from benchkit.core.errors import ConfigError

SIZED_SECTIONS = ("tokenizer", "generator", "head")
MATCH_TOLERANCE = 0.05  # relative spread of backbone_params allowed between a preset's generators


def apply_sizes(raw: dict[str, Any]) -> None:
    """Move each section's ``sizes[name]`` under its ``options`` (in place) and drop ``sizes``."""
    for section in SIZED_SECTIONS:
        node = raw.get(section)
        if not isinstance(node, dict) or "sizes" not in node:
            continue
        sizes = node.pop("sizes")
        if not isinstance(sizes, dict) or not all(isinstance(v, dict) for v in sizes.values()):
            raise ConfigError(
                f"{section}.sizes must be a table of option tables keyed by {section} name, "
                f"e.g. {section}.sizes.NAME = {{...}}"
            )
        chosen = sizes.get(node.get("name", ""), {})
        options = node.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"{section}.options must be a table, got {type(options).__name__}")
        node["options"] = {**chosen, **options}


def relative_spread(counts: dict[str, int]) -> float:
    """(max - min) / min of a set of parameter counts: 0 when they are all equal."""
    if not counts:
        raise ConfigError("relative_spread needs at least one count")
    lo, hi = min(counts.values()), max(counts.values())
    if lo <= 0:
        raise ConfigError(f"parameter counts must be > 0, got {counts}")
    return (hi - lo) / lo
