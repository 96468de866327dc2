"""Import released checkpoints (MAR, KL-16, RQ-VAE, RQ-Transformer) as ordinary benchkit directories.

``import_tokenizer`` writes ``OUT/tokenizers/<name>-<fp>/`` (model.safetensors + model.json, config.json,
import.json) and ``import_generator`` writes ``OUT/runs/<tok>-<gen>-<head>-<fp>/`` (model.*, config.json, env.json,
import.json) beside its tokenizer, exactly as training would, so ``benchkit sample``, ``benchkit eval`` and
``load_run`` read them unchanged. ``import.json`` (also inside ``model.json`` under ``imported``) records the source
file, its sha256, the container key used (and whether it holds EMA weights) and where the architecture came from.
The official code each importer follows: ``mar.py``, ``kl16.py``, ``rq.py`` in this package.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchkit import __version__
from benchkit.core.checkpoint import atomic_write, load_module_weights, save_checkpoint
from benchkit.core.config import ComponentSpec, DataConfig, RunConfig, SampleConfig, from_dict
from benchkit.core.errors import CheckpointError, ConfigError
from benchkit.core.files import check_writable, file_sha256
from benchkit.importers import kl16, mar, rq
from benchkit.importers.common import load_official, pick_weights, read_container
from benchkit.training.artifacts import (
    MODEL,
    build_generator,
    build_tokenizer,
    model_meta,
    run_dir,
    run_fingerprint,
    tokenizer_dir,
    tokenizer_fingerprint,
    write_run_files,
)
from benchkit.training.checks import check

TOKENIZER_KINDS = ("kl16", "rqvae")
GENERATOR_KINDS = ("mar", "rqtransformer")
KINDS = (*GENERATOR_KINDS, *TOKENIZER_KINDS)
DEFAULT_DATA = "imagefolder:imagenet"
_CPU = torch.device("cpu")


def _provenance(kind: str, path: Path, key: str, arch_from: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "source": str(path.resolve()),
        "sha256": file_sha256(path),
        "container_key": key,
        "ema": "ema" in key,
        "arch_from": arch_from,
        "benchkit": __version__,
    }


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(obj, indent=1, default=str)))


def import_tokenizer(
    kind: str,
    path: str | Path,
    *,
    out_dir: str | Path = "results",
    arch: str | None = None,
    data: str = DEFAULT_DATA,
    image_size: int | None = None,
    container_key: str | None = None,
) -> Path:
    """Import a released KL-16 (``kl16``) or RQ-VAE (``rqvae``) as a benchkit tokenizer directory; returns it."""

    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; valid: {', '.join(TOKENIZER_KINDS)}")
    path = Path(path)
    container = read_container(path)
    if kind == "kl16":
        state, key = pick_weights(container, kl16.CONTAINER_KEYS, path, container_key)
        options, arch_from = kl16.tokenizer_options(arch, state)
        name, size, keymap, extra = "kl", image_size or 256, kl16.KEYMAP, kl16.extra_tensors()
    else:
        state, key = pick_weights(container, rq.CONTAINER_KEYS, path, container_key)
        cfg_arch, arch_from = rq.read_config(path, arch, rq.RQVAE_ARCHS)
        options, res = rq.rqvae_options(cfg_arch)
        name, size, keymap = "rq", image_size or res, rq.rqvae_keymap(options["depth"])
        extra = {"scale": torch.tensor(1.0)}
    cfg = RunConfig(
        name=f"import-{kind}",
        out_dir=str(out_dir),
        data=DataConfig(name=data, image_size=size),
        tokenizer=ComponentSpec(name=name, options=options),
    )
    module = build_tokenizer(cfg, _CPU)
    load_official(module, state, keymap, f"{kind} checkpoint {str(path)!r}", extra)
    prov = _provenance(kind, path, key, arch_from)
    tdir = tokenizer_dir(cfg)
    tdir.mkdir(parents=True, exist_ok=True)
    meta = {"fingerprint": tokenizer_fingerprint(cfg), "tokenizer": name, "options": options, "imported": prov}
    save_checkpoint(tdir / MODEL, {f"model.{k}": v for k, v in module.state_dict().items()}, meta)
    _write_json(tdir / "config.json", cfg.to_dict())
    _write_json(tdir / "import.json", prov)
    return tdir


def _tokenizer_config(tokenizer: Path) -> tuple[RunConfig, Path]:
    """(config, tokenizer directory) of an imported tokenizer directory or of a run directory."""

    if not (tokenizer / "config.json").is_file():
        raise ConfigError(
            f"--tokenizer {str(tokenizer)!r} has no config.json; give a directory written by "
            f"`benchkit import kl16|rqvae` or a run directory"
        )
    cfg = from_dict(RunConfig, json.loads((tokenizer / "config.json").read_text()), "")
    tdir = tokenizer_dir(replace(cfg, out_dir=str(tokenizer.parent.parent)))
    if not (tdir / f"{MODEL}.json").is_file():
        raise CheckpointError(f"the tokenizer of {str(tokenizer)!r} is not at {str(tdir)!r}")
    return cfg, tdir


def import_generator(
    kind: str,
    path: str | Path,
    *,
    tokenizer: str | Path,
    out_dir: str | Path | None = None,
    arch: str | None = None,
    container_key: str | None = None,
) -> Path:
    """Import a released MAR (``mar``) or RQ-Transformer (``rqtransformer``) as a run directory beside (a copy of)
    ``tokenizer`` (a directory from :func:`import_tokenizer` or a run directory); returns the run directory."""

    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"unknown generator kind {kind!r}; valid: {', '.join(GENERATOR_KINDS)}")
    path, tok_path = Path(path), Path(tokenizer)
    base, tdir = _tokenizer_config(tok_path)
    root = Path(out_dir) if out_dir is not None else tdir.parent.parent
    if (root / "tokenizers" / tdir.name).resolve() != tdir.resolve():
        shutil.copytree(tdir, root / "tokenizers" / tdir.name, dirs_exist_ok=True)
    container = read_container(path)
    tok = build_tokenizer(base, _CPU)
    load_module_weights(tok, tdir / MODEL)
    if kind == "mar":
        state, key = pick_weights(container, mar.CONTAINER_KEYS, path, container_key)
        args, arch_from = mar.resolve_arch(arch, container, path)
        gen_opts, head_opts = mar.component_options(args)
        gen, head, classes, keymap = "mar", "diffloss", int(args["class_num"]), mar.KEYMAP
        sample = SampleConfig(**mar.sample_settings(args))
    else:
        state, key = pick_weights(container, rq.CONTAINER_KEYS, path, container_key)
        cfg_arch, arch_from = rq.read_config(path, arch, rq.RQT_ARCHS)
        gen_opts, head_opts, classes = rq.rqt_options(cfg_arch)
        gen, head, keymap = "rqtransformer", "ce", rq.RQT_KEYMAP
        sample = SampleConfig()
    cfg = replace(
        base,
        name=f"import-{kind}",
        out_dir=str(root),
        generator=ComponentSpec(name=gen, options=gen_opts),
        head=ComponentSpec(name=head, options=head_opts),
        sample=sample,
    )
    combo = check(cfg, include_eval=False)
    if kind == "mar":
        _check_mar_tokens(args, combo.spec)
    module = build_generator(cfg, combo, classes, _CPU)
    extra = mar.extra_tensors(int(combo.spec.dim or 0)) if kind == "mar" else {"codebook": tok.codebook.embed}
    load_official(module, state, keymap, f"{kind} checkpoint {str(path)!r}", extra)
    prov = {**_provenance(kind, path, key, arch_from), "tokenizer": str(tdir)}
    rdir = run_dir(cfg)
    write_run_files(cfg, rdir, _CPU)
    meta = {"fingerprint": run_fingerprint(cfg), "num_classes": classes, "steps": 0, "imported": prov}
    save_checkpoint(rdir / MODEL, {f"model.{k}": v for k, v in module.state_dict().items()}, meta)
    _write_json(rdir / "import.json", prov)
    return rdir


def _check_mar_tokens(args: dict[str, Any], spec: Any) -> None:
    """ConfigError unless the tokenizer's continuous tokens are the grid and width this MAR was trained on."""
    side = int(args.get("img_size", 256)) // int(args.get("vae_stride", 16))
    want, got = (side, side, int(args["vae_embed_dim"])), (*spec.grid, int(spec.dim or 0))
    if want != got:
        raise ConfigError(
            f"this MAR models {want[0]}x{want[1]} tokens of {want[2]} channels but the tokenizer gives "
            f"{got[0]}x{got[1]}x{got[2]}; import the matching KL tokenizer"
        )


def imported_provenance(directory: str | Path) -> dict[str, Any]:
    """The ``imported`` record of an imported tokenizer or run directory (CheckpointError when it has none)."""
    meta = model_meta(directory)
    if "imported" not in meta:
        raise CheckpointError(f"{str(directory)!r} was not written by `benchkit import`")
    return dict(meta["imported"])


def import_checkpoint(
    kind: str,
    path: Path,
    *,
    tokenizer: Path | None = None,
    out_dir: Path | None = None,
    arch: str | None = None,
    data: str = "imagefolder:imagenet",
    image_size: int | None = None,
    container_key: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``benchkit import``: a released checkpoint as a tokenizer directory (kl16, rqvae) or a run directory (mar,
    rqtransformer, which need ``tokenizer``); returns the directory and its provenance (``import.json``)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown import kind {kind!r}; valid: {', '.join(KINDS)}")
    if out_dir is not None:
        check_writable(out_dir)
    if kind in GENERATOR_KINDS:
        if tokenizer is None:
            raise ConfigError(f"benchkit import {kind} needs --tokenizer DIR (import its tokenizer first)")
        target = import_generator(
            kind, path, tokenizer=tokenizer, out_dir=out_dir, arch=arch, container_key=container_key
        )
    else:
        target = import_tokenizer(
            kind,
            path,
            out_dir=out_dir or Path("results"),
            arch=arch,
            data=data,
            image_size=image_size,
            container_key=container_key,
        )
    return target, dict(json.loads((target / "import.json").read_text()))
