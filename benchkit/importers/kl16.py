"""MAR's KL-16 (LTH14/mar @fe470ac ``models/vae.py``, the LDM AutoencoderKL) -> benchkit's ``kl`` tokenizer with
``backbone = "ldm"``.

``kl16.ckpt`` is ``{'model': state_dict}`` and carries no config: the architecture is read from the tensor shapes
(``ch`` from ``conv_in``, one level per ``encoder.down.*``, blocks per level, attention levels from the ``attn``
keys, latent channels from ``post_quant_conv``), then every shape is checked against the module built from it.
Keys are benchkit's own (the ldm backbone uses the official names); only the token ``scale`` buffer is benchkit's:
it is set to MAR's 0.2325 (``engine_mar.py``; 1/std of the KL-16 latents on ImageNet).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from benchkit.core.errors import CheckpointError, ConfigError
from benchkit.importers.common import KeyMap, StateDict

CONTAINER_KEYS = ("model_ema", "model")
MAR_SCALE = 0.2325
BENCHKIT_ONLY = ("scale",)
# The released KL-16 (66.5M parameters): ch 128, ch_mult (1, 1, 2, 2, 4), 2 ResBlocks per level, encoder attention
# at the 16x16 level, none in the decoder levels, 16 latent channels.
ARCHS: dict[str, dict[str, Any]] = {
    "kl16": {
        "ch": 128,
        "channel_mult": (1, 1, 2, 2, 4),
        "num_res_blocks": 2,
        "attn_levels": (4,),
        "decoder_attn_levels": (),
        "z_channels": 16,
    },
}


def to_benchkit(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Official keys -> benchkit keys: the same names (the ldm backbone is laid out as the release)."""
    return dict(official)


def to_official(benchkit: Mapping[str, torch.Tensor]) -> StateDict:
    """benchkit keys -> official keys: drops the benchkit-only ``scale`` buffer."""
    return {k: v for k, v in benchkit.items() if k not in BENCHKIT_ONLY}


KEYMAP = KeyMap(to_benchkit, to_official)


def extra_tensors(scale: float = MAR_SCALE) -> StateDict:
    """benchkit tensors with no official counterpart: the token scale."""
    return {"scale": torch.tensor(float(scale))}


def _levels(state: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := re.match(pattern, k))})


def infer_arch(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Tokenizer options of an LDM autoencoder state dict, read from its shapes (conv_in, down.*, attn,
    post_quant_conv)."""
    try:
        ch = int(state["encoder.conv_in.weight"].shape[0])
        levels = _levels(state, r"encoder\.down\.(\d+)\.")
        mult = tuple(int(state[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // ch for i in levels)
        blocks = len(_levels(state, r"encoder\.down\.0\.block\.(\d+)\."))
        z = int(state["post_quant_conv.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"not an LDM autoencoder state dict: no {e.args[0]!r}") from None
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError("not an LDM autoencoder state dict: encoder.down.* levels are missing or not 0..n-1")
    return {
        "ch": ch,
        "channel_mult": mult,
        "num_res_blocks": blocks,
        "z_channels": z,
        "attn_levels": tuple(_levels(state, r"encoder\.down\.(\d+)\.attn\.")),
        "decoder_attn_levels": tuple(_levels(state, r"decoder\.up\.(\d+)\.attn\.")),
    }


def tokenizer_options(arch: str | None, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], str]:
    """(options of benchkit's ``kl`` tokenizer, where they came from): ``--arch kl16`` or the checkpoint's shapes."""
    if arch is None:
        opts, source = infer_arch(state), "checkpoint shapes"
    elif arch in ARCHS:
        opts, source = dict(ARCHS[arch]), arch
    else:
        raise ConfigError(f"unknown KL --arch {arch!r}; valid: {', '.join(ARCHS)} (or omit it: read from the shapes)")
    opts = {
        **opts,
        "channel_mult": list(opts["channel_mult"]),
        "attn_levels": list(opts["attn_levels"]),
        "decoder_attn_levels": list(opts["decoder_attn_levels"]),
    }
    return {"backbone": "ldm", "encode_mode": "sample", **opts}, source
