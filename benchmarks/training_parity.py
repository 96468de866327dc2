"""Training parity: the official MAR (LTH14/mar) trained with benchkit's recipe on benchkit's cached KL tokens,
against benchkit's own MAR + Diffusion Loss trained the same way, scored by the same ``benchkit eval``.

    python benchmarks/training_parity.py --mar-code /path/to/LTH14-mar            # 3 seeds each, the default run
    python benchmarks/training_parity.py --mar-code PATH --steps 20 --samples 100 --seeds 2   # a smoke run

``--mar-code`` is a checkout of github.com/LTH14/mar (never part of benchkit), put on ``sys.path`` at run time;
timm must be installed. Per training seed: ``benchkit train`` trains benchkit's MAR + Diffusion Loss of the default
run (``sweeps/tiny.toml``) with its default head and with MAR's head settings, at the steps the budget gives the
default one; the official model of the same shape (learned variance, as released) is trained on the same seed's
cached KL tokens by benchkit's own loop (``trainer.fit``: same batches, optimizer, schedule, clipping, EMA), saved
as ``{model, model_ema, args}`` and imported with ``benchkit import mar``; ``benchkit eval`` scores all three at
the same settings. One table, one verdict per benchkit row (Welch's t-test over seeds). On a CPU the official
code's ``.cuda()`` calls stay on the CPU while it trains. How, what and why: docs/training-parity.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # parity_common sits beside this script
import parity_common
from parity_common import (
    ParityError,
    SeedFid,
    add_run_options,
    begin,
    check_code,
    check_counts,
    cuda_calls_on,
    default_budget,
    derive_steps,
    finish,
    health_mark,
    import_run,
    pinned_overrides,
    recipe_of,
    run_flags,
    run_main,
    sampling_overrides,
    train_benchkit,
    verdict,
)

from benchkit.core.checkpoint import load_checkpoint
from benchkit.core.config import RunConfig
from benchkit.core.distributed import pick_device
from benchkit.core.identity import fingerprint
from benchkit.core.interfaces import LossOutput
from benchkit.core.registry import GENERATORS, HEADS
from benchkit.training.artifacts import run_fingerprint, seed_configs
from benchkit.training.checks import check, load_splits
from benchkit.training.tokenizer import train_tokenizer
from benchkit.training.tokens import token_cache
from benchkit.training.trainer import CHECKPOINT, fit

__all__ = [  # the shared helpers this script's tests reach through it
    "ParityError",
    "SeedFid",
    "check_code",
    "cuda_calls_on",
    "default_budget",
    "derive_steps",
    "health_mark",
    "pinned_overrides",
    "recipe_of",
    "verdict",
]

SWEEP, COMBO = "tiny", ("kl", "mar", "diffloss")
SETTINGS = ((1.0, 1.0), (3.0, 0.8))  # (cfg, temperature): without guidance, and CFG 3 at temperature 0.8
MAR_STEPS, DIFFUSION_STEPS = 16, 50
VARIANTS = {
    "official": "official MAR (LTH14/mar), learned variance, no x0 clip",
    "default": "benchkit, default head (learn_sigma=false, clip_x0=true)",
    "mar_head": "benchkit, MAR's head settings (learn_sigma=true, clip_x0=false)",
}
HEAD_SETS = {"default": [], "mar_head": ["head.options.learn_sigma=true", "head.options.clip_x0=false"]}


def base_overrides(sweep: str = SWEEP, combo: tuple[str, str, str] = COMBO) -> list[str]:
    """The ``--set`` overrides that make the sweep's (tokenizer, generator, head) job, on top of its preset."""
    return parity_common.base_overrides(sweep, combo)


def official_args(cfg: RunConfig, grid: tuple[int, ...], dim: int, num_classes: int) -> dict[str, Any]:
    """MAR's constructor arguments (the importer's names) for benchkit's ``mar`` + ``diffloss`` of ``cfg``: its
    sizes, mask ratio, label drop and dropout (attention and projection), with MAR's learned variance."""
    g = GENERATORS.make_config(cfg.generator.name, cfg.generator.options)  # the options with defaults filled in
    h = HEADS.make_config(cfg.head.name, cfg.head.options)
    if len(grid) != 2 or grid[0] != grid[1]:
        raise ParityError(f"MAR needs a square token grid, got {grid}")
    size = int(cfg.data.image_size)
    return {
        "img_size": size,
        "vae_stride": size // grid[0],
        "patch_size": 1,
        "vae_embed_dim": dim,
        **{f"{part}_embed_dim": g.width for part in ("encoder", "decoder")},
        **{f"{part}_num_heads": g.num_heads for part in ("encoder", "decoder")},
        "encoder_depth": g.encoder_depth,
        "decoder_depth": g.decoder_depth,
        "mlp_ratio": g.mlp_ratio,
        "mask_ratio_min": g.mask_ratio_min,
        "label_drop_prob": g.label_drop,
        "class_num": num_classes,
        "attn_dropout": g.dropout,
        "proj_dropout": g.dropout,
        "buffer_size": g.buffer_size,
        "diffloss_d": h.depth,
        "diffloss_w": h.width,
        "num_sampling_steps": str(DIFFUSION_STEPS),
        "diffusion_batch_mul": h.batch_mul,
    }


def eval_overrides(samples: int, reference: int) -> list[str]:
    """``benchkit eval --set`` values: the two settings of SETTINGS, 16 steps, 50 diffusion steps, no tuning."""
    steps = f"sample.steps={MAR_STEPS} sample.diffusion_steps={DIFFUSION_STEPS}".split()
    return sampling_overrides(SETTINGS, samples, reference, steps)


def format_table(results: dict[str, dict[str, list[SeedFid]]]) -> tuple[str, list[str]]:
    """(markdown table, verdict lines) of ``results[variant][setting label]``."""
    return parity_common.format_table(results, VARIANTS, SETTINGS)


def rows_to_results(rows: Sequence[dict[str, Any]], seed: int) -> dict[str, SeedFid]:
    """``benchkit eval --json`` rows -> {setting label: SeedFid} of the settings in SETTINGS."""
    return parity_common.rows_to_results(rows, seed, SETTINGS)


def load_official_mar(code: Path) -> type[torch.nn.Module]:
    """The ``MAR`` class of the checkout at ``code`` (put first on ``sys.path``); ParityError when it cannot load."""
    sys.path.insert(0, str(code))
    try:
        mar_cls: type[torch.nn.Module] = importlib.import_module("models.mar").MAR
        return mar_cls
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is one line for the user
        raise ParityError(f"cannot import models.mar from {str(code)!r}: {type(e).__name__}: {e}") from None


def train_official(mar_cls: type[torch.nn.Module], c: RunConfig, out: Path, progress: bool) -> tuple[Path, Path]:
    """Train the official MAR on the cached tokens of ``c``'s tokenizer with ``c``'s recipe; returns the saved
    ``{model, model_ema, args}`` file and its ``args.json`` (both reused when present)."""
    rdir = out / "official" / f"seed-{c.seed}"
    pth, args_json = rdir / "official-mar.pth", rdir / "args.json"
    if pth.is_file() and args_json.is_file():
        return pth, args_json
    device = pick_device(c.device)
    combo = check(c)
    train, _ = load_splits(c)
    tok = train_tokenizer(c, train, progress=progress)
    cache, labels = token_cache(tok, combo.kind, train), train.labels
    args = official_args(c, tuple(combo.spec.grid), int(combo.spec.dim or 0), train.num_classes)
    torch.manual_seed(c.seed)
    np.random.seed(c.seed)  # MAR draws its orders and mask ratios from numpy's global RNG
    model = mar_cls(**args).to(device)

    def get_batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = tok.module.tokens_from_cache(cache[idx].to(device), combo.kind)  # [B, h, w, C]
        return tokens.permute(0, 3, 1, 2).contiguous(), labels[idx].to(device)  # MAR's latents [B, C, h, w]

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOutput:
        return LossOutput(m(*batch), {})

    fp = fingerprint("training-parity-official-mar", run_fingerprint(c), args)
    with cuda_calls_on(device):
        fit(model, loss_fn, get_batch, len(train), c.train, rdir, seed=c.seed, fingerprint=fp, show_progress=progress)
    tensors, _ = load_checkpoint(rdir / CHECKPOINT)
    raw = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # fit leaves the EMA weights in the model
    torch.save({"model": raw, "model_ema": ema, "args": argparse.Namespace(**args)}, pth)
    args_json.write_text(json.dumps(args, indent=1))
    return pth, args_json


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mar-code", required=True, help="a checkout of github.com/LTH14/mar (models/mar.py inside)")
    add_run_options(p, Path("results/training-parity"))
    return check_counts(p, p.parse_args(argv))


def run(a: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison; returns the JSON record (the table is in ``record["table"]``)."""
    code = check_code(a.mar_code, "models/mar.py", "LTH14/mar", "--mar-code")
    mar_cls = load_official_mar(code)
    plan, out, progress = begin(a, COMBO)
    cfg, steps = plan.cfg, plan.steps
    print(f"training parity: {steps} steps per model, {a.seeds} seed(s), recipe {recipe_of(cfg)}", file=sys.stderr)
    flags = run_flags(a.threads, progress)
    runs = {variant: train_benchkit([*plan.pinned, *extra], flags) for variant, extra in HEAD_SETS.items()}
    runs["official"] = []
    for c, tok_run in zip(seed_configs(cfg), runs["default"]):
        pth, args_json = train_official(mar_cls, c, out, progress)
        runs["official"].append(import_run(["mar", str(pth), "--arch", str(args_json), "--tokenizer", str(tok_run)]))
    sets = eval_overrides(a.samples, a.reference)
    return finish(a, plan, runs, sets, flags, VARIANTS, SETTINGS, mar_code=str(code))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the verdicts (exit 2 with one line on a bad setup)."""
    return run_main(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
