"""Head settings that differ from the published method's, written into each generator row (``head_deviations``).

MAR (Li et al., arXiv 2406.11838; code LTH14/mar) trains the Diffusion Loss head with a learned reverse variance
(IDDPM hybrid loss), a 1000-step cosine chain, DDPM sampling over 100 respaced steps and no clipping of the
predicted x_0. The cross-entropy entries of its Table 1 sample from the full softmax (no top-k / top-p) from a
single Linear layer. Any setting of a row that differs is listed as ``name=value`` (``none`` when the row runs the
paper's settings), so a table reader sees every deviation next to the FID it affects. Sizes (width, depth of the
head MLP, ``batch_mul``) are scale, not method, and are not listed.
"""

from __future__ import annotations

from typing import Any

from benchkit.core.registry import HEADS

PAPER_HEAD_SETTINGS: dict[str, dict[str, Any]] = {
    "diffloss": {
        "learn_sigma": True,
        "clip_x0": False,
        "num_timesteps": 1000,
        "sampler": "ddpm",
        "sampling_steps": 100,
    },
    "ce": {"hidden": 0, "top_k": 0, "top_p": 1.0},
}


def _text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def head_deviations(head: str, options: dict[str, Any], *, sampling_steps: int | None = None) -> str:
    """``"a=1; b=false"``: the head's settings (defaults filled in) that differ from the paper's, or ``"none"``.

    ``sampling_steps`` is the chain length a row actually sampled with (an evaluation setting may override the
    head's own); unknown heads (plug-ins) give ``"unknown"``: there is no paper setting to compare with.
    """
    paper = PAPER_HEAD_SETTINGS.get(head)
    if paper is None:
        return "unknown"
    cfg = HEADS.make_config(head, options)
    used = {k: getattr(cfg, k) for k in paper}
    if sampling_steps is not None and "sampling_steps" in used:
        used["sampling_steps"] = sampling_steps
    diffs = [f"{k}={_text(v)}" for k, v in used.items() if v != paper[k]]
    return "; ".join(diffs) or "none"
