"""MAR (LTH14/mar @fe470ac ``models/mar.py`` + ``models/diffloss.py``) -> benchkit's ``mar`` generator with the
``diffloss`` head.

The released checkpoints are ``{'model', 'model_ema'}`` (MAR's own training adds ``epoch`` and ``args``, an
``argparse.Namespace``); the published numbers use ``model_ema``. Keys map by renaming, apart from the class
embedding: benchkit keeps the unconditional ``fake_latent`` as the last row of ``class_emb``. benchkit's
``head.x0_bound`` buffer has no official counterpart; it is set to +inf and ``clip_x0`` is off, MAR's behaviour.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchkit.core.errors import ConfigError
from benchkit.importers.common import KeyMap, StateDict, namespace_options, rename, swap

CONTAINER_KEYS = ("model_ema", "model")  # EMA first: the published numbers use it

_COMMON = {
    "patch_size": 1,
    "vae_embed_dim": 16,
    "vae_stride": 16,
    "img_size": 256,
    "mlp_ratio": 4.0,
    "buffer_size": 64,
    "class_num": 1000,
    "label_drop_prob": 0.1,
    "mask_ratio_min": 0.7,
    "attn_dropout": 0.1,
    "proj_dropout": 0.1,
    "num_sampling_steps": "100",
    "diffusion_batch_mul": 4,
}


def _size(width: int, depth: int, heads: int, dl_depth: int, dl_width: int, cfg: float) -> dict[str, Any]:
    return {
        **_COMMON,
        "encoder_embed_dim": width,
        "encoder_depth": depth,
        "encoder_num_heads": heads,
        "decoder_embed_dim": width,
        "decoder_depth": depth,
        "decoder_num_heads": heads,
        "diffloss_d": dl_depth,
        "diffloss_w": dl_width,
        "cfg": cfg,
    }


# The released sizes (models/mar.py mar_base/large/huge) with the Diffusion Loss sizes and CFG scales of the README.
ARCHS: dict[str, dict[str, Any]] = {
    "mar_base": _size(768, 12, 12, 6, 1024, 2.9),
    "mar_large": _size(1024, 16, 16, 8, 1280, 3.0),
    "mar_huge": _size(1280, 20, 16, 12, 1536, 3.2),
}
ARG_NAMES = (
    "encoder_embed_dim",
    "encoder_depth",
    "encoder_num_heads",
    "decoder_embed_dim",
    "decoder_depth",
    "decoder_num_heads",
    "diffloss_d",
    "diffloss_w",
    "buffer_size",
    "mlp_ratio",
    "vae_embed_dim",
    "patch_size",
    "class_num",
)

_TABLE = [
    ("z_proj_ln.", "enc_in_norm."),
    ("z_proj.", "tok_emb."),
    ("encoder_pos_embed_learned", "enc_pos"),
    ("decoder_pos_embed_learned", "dec_pos"),
    ("diffusion_pos_embed_learned", "head_pos"),
    ("encoder_blocks.", "encoder.blocks."),
    ("encoder_norm.", "encoder.norm."),
    ("decoder_blocks.", "decoder.blocks."),
    ("decoder_norm.", "decoder.norm."),
    ("diffloss.", "head."),
]
BENCHKIT_ONLY = ("head.x0_bound",)


def to_benchkit(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Official MAR keys -> benchkit ``mar`` + ``diffloss`` keys (class_emb gains fake_latent as its last row)."""
    state = dict(official)
    cls, fake = state.pop("class_emb.weight"), state.pop("fake_latent")
    out = rename(state, _TABLE)
    out["class_emb.weight"] = torch.cat([cls, fake.reshape(1, -1)])
    return out


def to_official(benchkit: Mapping[str, torch.Tensor]) -> StateDict:
    """benchkit keys -> official MAR keys (the inverse of :func:`to_benchkit`)."""
    state = {k: v for k, v in benchkit.items() if k not in BENCHKIT_ONLY}
    cls = state.pop("class_emb.weight")
    out = rename(state, swap(_TABLE))
    out["class_emb.weight"], out["fake_latent"] = cls[:-1], cls[-1:]
    return out


KEYMAP = KeyMap(to_benchkit, to_official)


def extra_tensors(token_dim: int) -> StateDict:
    """benchkit tensors with no official counterpart: the x_0 clip range (+inf: no clipping, as MAR)."""
    return {"head.x0_bound": torch.full((token_dim,), float("inf"))}


def resolve_arch(arch: str | None, container: Mapping[str, Any], path: str | Path) -> tuple[dict[str, Any], str]:
    """(MAR arguments, where they came from): a released size name, a JSON file of MAR's argument names (a
    fixture.json's ``config`` is read too), or the ``args`` a self-trained checkpoint carries."""
    if arch is None:
        if "args" not in container:
            raise ConfigError(
                f"{str(path)!r} does not say its size; pass --arch {'|'.join(ARCHS)} or a JSON file of MAR's arguments"
            )
        args = container["args"]
        return {**_COMMON, **namespace_options(args, ARG_NAMES, path), **_optional(args)}, "checkpoint args"
    if arch in ARCHS:
        return dict(ARCHS[arch]), arch
    p = Path(arch)
    if p.suffix == ".json" and p.is_file():
        raw = json.loads(p.read_text())
        raw = raw.get("config", raw)
        missing = [n for n in ARG_NAMES if n not in raw]
        if missing:
            raise ConfigError(f"--arch {arch!r} lacks {', '.join(missing[:3])} (MAR's argument names)")
        return {**_COMMON, **raw}, str(p)
    raise ConfigError(f"unknown MAR --arch {arch!r}; valid: {', '.join(ARCHS)}, or a JSON file of MAR's arguments")


def _optional(args: Any) -> dict[str, Any]:
    values = vars(args) if hasattr(args, "__dict__") else dict(args)
    keys = (
        "label_drop_prob",
        "mask_ratio_min",
        "num_sampling_steps",
        "diffusion_batch_mul",
        "proj_dropout",
        "img_size",
        "vae_stride",
    )
    return {k: values[k] for k in keys if k in values}


def component_options(args: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(generator options, head options) of benchkit's ``mar`` + ``diffloss`` for MAR arguments."""
    if args["encoder_embed_dim"] != args["decoder_embed_dim"] or args["encoder_num_heads"] != args["decoder_num_heads"]:
        raise ConfigError("benchkit's mar uses one width and head count for encoder and decoder; this MAR differs")
    if int(args["patch_size"]) != 1:
        raise ConfigError(f"only MAR patch_size 1 is supported (every release), got {args['patch_size']}")
    gen = {
        "width": int(args["encoder_embed_dim"]),
        "encoder_depth": int(args["encoder_depth"]),
        "decoder_depth": int(args["decoder_depth"]),
        "num_heads": int(args["encoder_num_heads"]),
        "mlp_ratio": float(args["mlp_ratio"]),
        "dropout": float(args["proj_dropout"]),
        "buffer_size": int(args["buffer_size"]),
        "label_drop": float(args["label_drop_prob"]),
        "mask_ratio_min": float(args["mask_ratio_min"]),
        "steps": 64,
    }
    head = {
        "width": int(args["diffloss_w"]),
        "depth": int(args["diffloss_d"]),
        "batch_mul": int(args["diffusion_batch_mul"]),
        "sampling_steps": int(args["num_sampling_steps"]),
        "learn_sigma": True,
        "clip_x0": False,
    }
    return gen, head


def sample_settings(args: Mapping[str, Any]) -> dict[str, Any]:
    """MAR's evaluation settings: 64 AR steps (the paper's default; its headline Table 4 uses 256, set with
    ``--set sample.steps=256``), 100 diffusion steps, the release's CFG per size with the linear schedule,
    temperature 1.0."""
    side = int(args["img_size"]) // int(args["vae_stride"])
    return {
        "steps": min(64, side * side),
        "cfg": float(args.get("cfg", 1.0)),
        "cfg_schedule": "linear",
        "temperature": 1.0,
        "diffusion_steps": int(args["num_sampling_steps"]),
    }
