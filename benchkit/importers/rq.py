"""RQ-VAE and RQ-Transformer (kakaobrain/rq-vae-transformer @341395e) -> benchkit's ``rq`` tokenizer
(``backbone = "ldm"``) and ``rqtransformer`` generator (``code_embedding = "codebook"``) with the ``ce`` head.

Both releases are ``{'state_dict', 'epoch', ...}`` (``state_dict_ema`` too when trained with EMA, preferred) with a
``config.yaml`` beside the ``.pt`` that gives the architecture. RQ-VAE: the conv backbone keeps its names; the
shared codebook is stored D times (``quantizer.codebooks.0..D-1``, identical) with one padding row, which is
dropped (it is never chosen). RQ-Transformer: the separate query/key/value Linear layers become one fused ``qkv``
(rows in q, k, v order), the depth stack's final LayerNorm is ``classifier.layer_norm`` and the head is
``classifier.linear``; the class table gains a zero null-class row (the official model has no CFG) and the frozen
stage-1 codebook is copied into the generator's ``codebook`` buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from benchkit.core.errors import CheckpointError, ConfigError
from benchkit.importers.common import KeyMap, StateDict, rename, swap

CONTAINER_KEYS = ("state_dict_ema", "state_dict")


def _rqvae(n_embed: int, attn: int) -> dict[str, Any]:
    return {
        "hparams": {
            "embed_dim": 256,
            "n_embed": n_embed,
            "latent_shape": [8, 8, 256],
            "code_shape": [8, 8, 4],
            "shared_codebook": True,
            "decay": 0.99,
            "latent_loss_weight": 0.25,
        },
        "ddconfig": {
            "double_z": False,
            "z_channels": 256,
            "resolution": 256,
            "ch": 128,
            "ch_mult": [1, 1, 2, 2, 4, 4],
            "num_res_blocks": 2,
            "attn_resolutions": [attn],
        },
    }


def _rqt(width: int, heads: int, body: int, head: int) -> dict[str, Any]:
    return {
        "vocab_size": 16384,
        "block_size": [8, 8, 4],
        "embed_dim": width,
        "input_embed_dim": 256,
        "shared_tok_emb": True,
        "shared_cls_emb": True,
        "input_emb_vqvae": True,
        "head_emb_vqvae": True,
        "cumsum_depth_ctx": True,
        "vocab_size_cond": 1000,
        "block_size_cond": 1,
        "body": {"n_layer": body, "block": {"n_head": heads}},
        "head": {"n_layer": head, "block": {"n_head": heads}},
        "sample": {"top_k": 16384, "top_p": 0.92},
    }


# The released configs (configs/*/stage1|stage2/*.yaml, ``arch`` section), for checkpoints without config.yaml.
RQVAE_ARCHS = {"in256-rqvae-8x8x4": _rqvae(16384, 8), "ffhq256-rqvae-8x8x4": _rqvae(2048, 16)}
RQT_ARCHS = {
    "in256-480M": _rqt(1536, 24, 12, 4),
    "in256-800M": _rqt(1536, 24, 24, 4),
    "in256-1400M": _rqt(1536, 24, 42, 6),
    "in256-3800M": _rqt(2560, 40, 42, 6),
}


def read_config(checkpoint: Path, arch: str | None, archs: Mapping[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """(the ``arch`` section of the release config, where it came from): ``--arch NAME``, ``--arch FILE.yaml`` or
    the ``config.yaml`` beside the checkpoint (the release layout)."""
    if arch is not None and arch in archs:
        return dict(archs[arch]), arch
    path = Path(arch) if arch else checkpoint.parent / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no config for {str(checkpoint)!r}: {str(path)!r} does not exist; put the release's "
            f"config.yaml beside it or pass --arch {'|'.join(archs)}"
        )
    try:
        import yaml
    except ImportError:
        raise ConfigError("reading config.yaml needs PyYAML: pip install 'benchkit[import]'") from None
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("arch"), dict):
        raise ConfigError(f"{str(path)!r} has no 'arch' section; is it an rq-vae-transformer config?")
    out = dict(raw["arch"])
    if "vocab_size" in raw.get("dataset", {}):
        out.setdefault("vocab_size", raw["dataset"]["vocab_size"])
    if isinstance(raw.get("experiment", {}).get("sample"), dict):
        out.setdefault("sample", raw["experiment"]["sample"])
    return out, str(path)


# RQ-VAE ------------------------------------------------------------------------------------------------------


def rqvae_options(arch: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """(options of benchkit's ``rq`` tokenizer, image size) for a release config's ``arch`` section."""
    hp, dd = arch["hparams"], arch["ddconfig"]
    if not hp.get("shared_codebook", False):
        raise ConfigError("only RQ-VAEs with a shared codebook are supported (every release has one)")
    if list(hp["latent_shape"][:2]) != list(hp["code_shape"][:2]) or dd["z_channels"] != hp["embed_dim"]:
        raise ConfigError("latent_shape must equal code_shape on the grid and z_channels equal embed_dim (as released)")
    res = int(dd["resolution"])
    attn = tuple(i for i in range(len(dd["ch_mult"])) if res // 2**i in dd["attn_resolutions"])
    opts = {
        "backbone": "ldm",
        "ch": int(dd["ch"]),
        "channel_mult": list(dd["ch_mult"]),
        "num_res_blocks": int(dd["num_res_blocks"]),
        "attn_levels": list(attn),
        "decoder_attn_levels": list(attn),
        "code_dim": int(hp["embed_dim"]),
        "codebook_size": int(hp["n_embed"]),
        "depth": int(hp["code_shape"][2]),
        "decay": float(hp.get("decay", 0.99)),
        "beta": float(hp.get("latent_loss_weight", 0.25)),
        "restart_threshold": 1.0,
        "norm": "group",
    }
    return opts, res


def _codebook_depth(state: Mapping[str, torch.Tensor]) -> int:
    return len({k.split(".")[2] for k in state if k.startswith("quantizer.codebooks.")})


def rqvae_to_benchkit(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Official RQ-VAE keys -> benchkit ``rq`` keys: one codebook (padding row dropped) from D identical copies."""
    out = {k: v for k, v in official.items() if not k.startswith("quantizer.")}
    q = "quantizer.codebooks"
    for d in range(1, _codebook_depth(official)):
        for name in ("weight", "cluster_size_ema", "embed_ema"):
            a, b = official[f"{q}.0.{name}"], official[f"{q}.{d}.{name}"]
            if a.device.type != "meta" and not torch.equal(a, b):
                raise CheckpointError(f"{q}.{d}.{name} differs from {q}.0.{name}: not a shared codebook")
    out["codebook.embed"] = official[f"{q}.0.weight"][:-1]
    out["codebook.embed_sum"] = official[f"{q}.0.embed_ema"]
    out["codebook.cluster_size"] = official[f"{q}.0.cluster_size_ema"]
    return out


def rqvae_official(benchkit: Mapping[str, torch.Tensor], depth: int) -> StateDict:
    """benchkit ``rq`` keys -> official keys, the shared codebook written ``depth`` times with a zero padding row."""
    out = {k: v for k, v in benchkit.items() if not k.startswith("codebook.") and k != "scale"}
    embed = benchkit["codebook.embed"]
    padded = torch.cat([embed, embed.new_zeros(1, embed.shape[1])])
    for d in range(depth):
        out[f"quantizer.codebooks.{d}.weight"] = padded
        out[f"quantizer.codebooks.{d}.cluster_size_ema"] = benchkit["codebook.cluster_size"]
        out[f"quantizer.codebooks.{d}.embed_ema"] = benchkit["codebook.embed_sum"]
    return out


def rqvae_keymap(depth: int) -> KeyMap:
    """The key maps of an RQ-VAE with ``depth`` codes per position."""
    return KeyMap(rqvae_to_benchkit, lambda s: rqvae_official(s, depth))


# RQ-Transformer ----------------------------------------------------------------------------------------------

_TABLE = [
    ("pos_emb_cond", "start_pos"),
    ("pos_emb_hw", "spatial_pos"),
    ("pos_emb_d", "depth_pos"),
    ("input_mlp.", "spatial_emb."),
    ("head_mlp.", "depth_emb."),
    ("classifier.layer_norm.", "depth.norm."),
    ("classifier.linear.", "head.net."),
    ("body_transformer.blocks.", "spatial.blocks."),
    ("head_transformer.blocks.", "depth.blocks."),
]
_BLOCK = [(".ln1.", ".norm1."), (".ln2.", ".norm2."), (".mlp.0.", ".mlp.fc1."), (".mlp.2.", ".mlp.fc2.")]
BENCHKIT_ONLY = ("codebook",)


def _sub(key: str, pairs: list[tuple[str, str]]) -> str:
    for a, b in pairs:
        key = key.replace(a, b)
    return key


def rqt_to_benchkit(official: Mapping[str, torch.Tensor]) -> StateDict:
    """Official RQ-Transformer keys -> benchkit ``rqtransformer`` (+ ``ce`` head) keys."""
    out: StateDict = {}
    state = dict(official)
    for k in [k for k in state if k.endswith("attn.query.weight") or k.endswith("attn.query.bias")]:
        kind = k.rsplit(".", 1)[1]
        stem = k[: -len(f"query.{kind}")]
        parts = [state.pop(f"{stem}{n}.{kind}") for n in ("query", "key", "value")]
        state[f"{stem}qkv.{kind}"] = torch.cat(parts)
    cond = state.pop("cond_emb.weight")
    for k, v in rename(state, _TABLE).items():
        out[_sub(k, _BLOCK) if ".blocks." in k else k] = v
    out["class_emb.weight"] = torch.cat([cond, cond.new_zeros(1, cond.shape[1])])  # null class: unused without CFG
    return out


def rqt_to_official(benchkit: Mapping[str, torch.Tensor]) -> StateDict:
    """benchkit ``rqtransformer`` keys -> official keys (the inverse of :func:`rqt_to_benchkit`)."""
    state = {k: v for k, v in benchkit.items() if k not in BENCHKIT_ONLY}
    cls = state.pop("class_emb.weight")
    out: StateDict = {}
    for k, v in rename(state, swap(_TABLE)).items():
        k = _sub(k, swap(_BLOCK)) if ".blocks." in k else k
        if ".attn.qkv." in k:
            for name, part in zip(("query", "key", "value"), v.chunk(3)):
                out[k.replace(".qkv.", f".{name}.")] = part
        else:
            out[k] = v
    out["cond_emb.weight"] = cls[:-1]
    return out


RQT_KEYMAP = KeyMap(rqt_to_benchkit, rqt_to_official)


def rqt_options(arch: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(generator options, ``ce`` head options, number of classes) for a release config's ``arch`` section."""
    needed = ("input_emb_vqvae", "head_emb_vqvae", "cumsum_depth_ctx", "shared_tok_emb", "shared_cls_emb")
    off = [n for n in needed if not arch.get(n, False)]
    if off or int(arch.get("block_size_cond", 1)) != 1:
        raise ConfigError(
            f"only class-conditional RQ-Transformers with {', '.join(needed)} and block_size_cond 1 "
            f"are supported (the ImageNet/FFHQ/LSUN releases); this one has {', '.join(off) or 'text'}"
        )
    heads = {int(arch["body"]["block"]["n_head"]), int(arch["head"]["block"]["n_head"])}
    if len(heads) != 1:
        raise ConfigError("benchkit's rqtransformer uses one head count for both stacks; this config differs")
    gen = {
        "width": int(arch["embed_dim"]),
        "spatial_depth": int(arch["body"]["n_layer"]),
        "depth_depth": int(arch["head"]["n_layer"]),
        "num_heads": heads.pop(),
        "dropout": 0.0,
        "label_drop": 0.0,
        "code_embedding": "codebook",
        "codebook_dim": int(arch["input_embed_dim"]),
    }
    sample = arch.get("sample", {})
    head = {"top_k": int(sample.get("top_k", 0)), "top_p": float(sample.get("top_p", 1.0))}
    return gen, head, max(int(arch["vocab_size_cond"]), 1)
