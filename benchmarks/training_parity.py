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
import contextlib
import dataclasses
import importlib
import json
import math
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.core.checkpoint import load_checkpoint
from benchkit.core.config import RunConfig, resolve
from benchkit.core.distributed import pick_device
from benchkit.core.identity import fingerprint
from benchkit.core.interfaces import LossOutput
from benchkit.core.registry import GENERATORS, HEADS
from benchkit.metrics.health import is_failing
from benchkit.results.seeds import t_interval, welch_p
from benchkit.sweeps.sweepfile import expand, load_sweep
from benchkit.training.artifacts import build_generator, run_fingerprint, seed_configs
from benchkit.training.checks import check, load_splits
from benchkit.training.compute import apply_budget
from benchkit.training.tokenizer import train_tokenizer
from benchkit.training.tokens import token_cache
from benchkit.training.trainer import CHECKPOINT, fit

SWEEP, COMBO = "tiny", ("kl", "mar", "diffloss")
SETTINGS = ((1.0, 1.0), (3.0, 0.8))  # (cfg, temperature): without guidance, and CFG 3 at temperature 0.8
MAR_STEPS, DIFFUSION_STEPS = 16, 50
ALPHA = 0.05
VARIANTS = {
    "official": "official MAR (LTH14/mar), learned variance, no x0 clip",
    "default": "benchkit, default head (learn_sigma=false, clip_x0=true)",
    "mar_head": "benchkit, MAR's head settings (learn_sigma=true, clip_x0=false)",
}
RECIPE = ("steps", "batch_size", "lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "ema_decay")
HEAD_SETS = {"default": [], "mar_head": ["head.options.learn_sigma=true", "head.options.clip_x0=false"]}


class ParityError(Exception):
    """A one-line reason the benchmark cannot run (printed as ``error: ...``)."""


@dataclasses.dataclass(frozen=True)
class SeedFid:
    """One trained model's FID at one sampling setting, and its sample-health verdict."""

    seed: int
    fid: float
    health: str | None = None


def check_code(path: str | Path, relative: str, repo: str, option: str) -> Path:
    """``path`` resolved, or ParityError when ``path/relative`` is absent (not a checkout of ``repo``)."""
    root = Path(path).expanduser().resolve()
    if not (root / relative).is_file():
        raise ParityError(f"{option} {str(path)!r} holds no {relative}; pass a checkout of github.com/{repo}")
    return root


def default_budget(sweep: str | Path = SWEEP) -> float:
    """The ``train.budget_flops`` of a shipped sweep (by default the default run's, per training seed)."""
    budget = next((j.cfg.train.budget_flops for j in expand(load_sweep(sweep)) if j.cfg is not None), None)
    if not budget:
        raise ParityError(f"sweep {str(sweep)!r} sets no train.budget_flops; pass --budget-flops")
    return float(budget)


def base_overrides(sweep: str = SWEEP, combo: tuple[str, str, str] = COMBO) -> list[str]:
    """The ``--set`` overrides that make the sweep's (tokenizer, generator, head) job, on top of its preset."""
    for job in expand(load_sweep(sweep)):
        c = job.cfg
        if c is not None and (c.tokenizer.name, c.generator.name, c.head.name) == combo:
            return list(job.overrides)
    raise ParityError(f"sweep {sweep!r} has no {'+'.join(combo)} job")


def pinned_overrides(base: Sequence[str], steps: int, seeds: int, out: Path, device: str) -> list[str]:
    """``base`` with the step count pinned (no budget), no convergence points, the seeds, output and device."""
    pinned = f"train.budget_flops=0 train.steps={steps} train.convergence_points=0 train.seeds={seeds}".split()
    return [*base, *pinned, f'out_dir="{out}"', f'device="{device}"']


def derive_steps(cfg: RunConfig, num_classes: int) -> int:
    """The steps ``cfg.train.budget_flops`` gives benchkit's generator of ``cfg`` (its own counted step FLOPs)."""
    combo = check(cfg)
    torch.manual_seed(cfg.seed)
    gen = build_generator(cfg, combo, num_classes, torch.device("cpu"))
    return int(apply_budget(cfg, gen, combo.spec).train.steps)


def recipe_of(cfg: RunConfig) -> dict[str, Any]:
    """The generator-training recipe of ``cfg`` (``train.*``, and the AdamW betas of benchkit's trainer)."""
    return {**{k: getattr(cfg.train, k) for k in RECIPE}, "betas": (0.9, 0.95)}


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
    (cfg0, t0), *rest = SETTINGS
    sweep = ", ".join(f"{{cfg = {c}, temperature = {t}}}" for c, t in rest)
    fixed = 'sample.cfg_schedule="constant" eval.tune=[] eval.seed_spread=false eval.prc=false eval.cost_repeats=1'
    return [
        *f"sample.steps={MAR_STEPS} sample.diffusion_steps={DIFFUSION_STEPS} sample.cfg={cfg0}".split(),
        f"sample.temperature={t0}",
        f"eval.sweep=[{sweep}]",
        *fixed.split(),
        f"eval.num_samples={samples}",
        f"eval.num_reference={reference}",
    ]


def setting_label(cfg: float, temperature: float) -> str:
    """``CFG 3, T 0.8``."""
    return f"CFG {cfg:g}, T {temperature:.1f}"


def health_mark(values: Sequence[str | None]) -> str:
    """``ok`` when no seed failed, else the first failing verdict and how many seeds failed (``diverged 2/3``)."""
    failing = [v for v in values if is_failing(v)]
    if failing:
        return f"{failing[0]} {len(failing)}/{len(values)}"
    known = [v for v in values if v]
    return known[0] if known and all(v == known[0] for v in known) else "-" if not known else "mixed"


def verdict(official: Sequence[float], ours: Sequence[float], alpha: float = ALPHA) -> str:
    """Whether benchkit's per-seed FIDs are within the official model's (Welch's t-test over seeds, level alpha)."""
    a, b = [v for v in ours if math.isfinite(v)], [v for v in official if math.isfinite(v)]
    p = welch_p(a, b)
    if math.isnan(p):
        return "not judged: Welch's t-test needs >= 2 finite FIDs with some spread on each side"
    if p >= alpha:
        return f"benchkit within the official model's interval (Welch p = {p:.3g})"
    side = "lower (better)" if float(np.mean(a)) < float(np.mean(b)) else "higher (worse)"
    return f"benchkit NOT within the official model's interval: its FID is {side} (Welch p = {p:.3g})"


def _num(v: float) -> str:
    return "-" if not math.isfinite(v) else f"{v:.1f}"


def format_table(results: dict[str, dict[str, list[SeedFid]]]) -> tuple[str, list[str]]:
    """(markdown table, verdict lines) of ``results[variant][setting label]``."""
    seeds = sorted({r.seed for by_setting in results.values() for rows in by_setting.values() for r in rows})
    head = ["model", "sampling", *[f"FID seed {s}" for s in seeds], "mean", "95% CI", "health"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(seeds) + 2) + "---|"]
    verdicts: list[str] = []
    labels = [setting_label(c, t) for c, t in SETTINGS]
    for label in labels:
        for variant, name in VARIANTS.items():
            rows = {r.seed: r for r in results.get(variant, {}).get(label, [])}
            mean, _, half = t_interval([r.fid for r in rows.values()])
            cells = [_num(rows[s].fid) if s in rows else "-" for s in seeds]
            ci = "-" if not math.isfinite(half) else f"±{half:.1f}"
            mark = health_mark([r.health for r in rows.values()]) if rows else "-"
            lines.append("| " + " | ".join([name, label, *cells, _num(mean), ci, mark]) + " |")
        official = [r.fid for r in results.get("official", {}).get(label, [])]
        for variant in ("default", "mar_head"):
            ours = [r.fid for r in results.get(variant, {}).get(label, [])]
            verdicts.append(f"{label}, {VARIANTS[variant]}: {verdict(official, ours)}")
    return "\n".join(lines), verdicts


def rows_to_results(rows: Sequence[dict[str, Any]], seed: int) -> dict[str, SeedFid]:
    """``benchkit eval --json`` rows -> {setting label: SeedFid} of the settings in SETTINGS."""
    out = {}
    for row in rows:
        label = setting_label(float(row["cfg"]), float(row["temperature"]))
        if label in {setting_label(c, t) for c, t in SETTINGS}:
            fid = row.get("fid")
            out[label] = SeedFid(seed, float(fid) if fid is not None else math.nan, row.get("health"))
    return out


def run_flags(threads: int | None, progress: bool) -> list[str]:
    """The flags ``benchkit train`` / ``eval`` get: ``--threads N`` when given, ``--no-progress`` unless shown."""
    return [*(["--threads", str(threads)] if threads else []), *([] if progress else ["--no-progress"])]


def benchkit(args: Sequence[str]) -> str:
    """Run ``benchkit ARGS`` with this interpreter and return its stdout; ParityError on failure (its own error is
    on stderr, which is passed through)."""
    cmd = [sys.executable, "-m", "benchkit", *args]
    print("$ benchkit " + " ".join(args), file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode:
        raise ParityError(f"`benchkit {args[0]}` failed (exit {done.returncode}); its error is above")
    return done.stdout


def _sets(overrides: Sequence[str]) -> list[str]:
    return [x for o in overrides for x in ("--set", o)]


@contextlib.contextmanager
def cuda_calls_on(device: torch.device) -> Iterator[None]:
    """While the official code runs: its ``tensor.cuda()`` calls move to ``device`` when that is not CUDA."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


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
    p.add_argument("--budget-flops", type=float, default=None, help="default: the default run's (sweeps/tiny.toml)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (overrides the budget)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per model (default 3)")
    p.add_argument("--samples", type=int, default=1000, help="samples per FID (default 1000)")
    p.add_argument("--reference", type=int, default=5000, help="held-out images per FID (default 5000)")
    p.add_argument("--out", type=Path, default=Path("results/training-parity"), help="output root")
    p.add_argument("--json", type=Path, default=None, help="also write the figures and the table here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: benchkit's choice)")
    a = p.parse_args(argv)
    for name, least in (("steps", 1), ("seeds", 1), ("samples", 2), ("reference", 2)):
        if getattr(a, name) is not None and getattr(a, name) < least:
            p.error(f"--{name} must be >= {least}, got {getattr(a, name)}")
    return a


def run(a: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison; returns the JSON record (the table is in ``record["table"]``)."""
    code = check_code(a.mar_code, "models/mar.py", "LTH14/mar", "--mar-code")
    mar_cls = load_official_mar(code)
    if a.threads:
        torch.set_num_threads(a.threads)
    progress = sys.stderr.isatty()
    out = a.out.resolve()
    budget = a.budget_flops if a.budget_flops is not None else default_budget()
    base = [*base_overrides(), f"train.budget_flops={budget}", f'device="{a.device}"']
    budget_cfg = resolve("tiny", None, base)
    steps = a.steps or derive_steps(budget_cfg, load_splits(budget_cfg)[0].num_classes)
    pinned = pinned_overrides(base, steps, a.seeds, out, a.device)
    cfg = resolve("tiny", None, pinned)
    print(f"training parity: {steps} steps per model, {a.seeds} seed(s), recipe {recipe_of(cfg)}", file=sys.stderr)
    runs: dict[str, list[Path]] = {}
    flags = run_flags(a.threads, progress)
    for variant, extra in HEAD_SETS.items():
        made = json.loads(benchkit(["train", "--preset", "tiny", *_sets([*pinned, *extra]), "--json", *flags]))
        runs[variant] = [Path(p) for p in made["seed_runs"] or [made["run_dir"]]]
    runs["official"] = []
    for c, tok_run in zip(seed_configs(cfg), runs["default"]):
        pth, args_json = train_official(mar_cls, c, out, progress)
        target = benchkit(["import", "mar", str(pth), "--arch", str(args_json), "--tokenizer", str(tok_run)])
        runs["official"].append(Path(target.strip().splitlines()[-1]))
    results: dict[str, dict[str, list[SeedFid]]] = {}
    sets = _sets(eval_overrides(a.samples, a.reference))
    for variant in VARIANTS:
        for c, rdir in zip(seed_configs(cfg), runs[variant]):
            rows = json.loads(benchkit(["eval", str(rdir), *sets, "--results", str(out / "results"), "--json", *flags]))
            for label, r in rows_to_results(rows, c.seed).items():
                results.setdefault(variant, {}).setdefault(label, []).append(r)
    table, verdicts = format_table(results)
    return {
        **{k: getattr(a, k) for k in ("seeds", "samples", "reference")},
        "budget_flops": budget,
        "steps": steps,
        "recipe": recipe_of(cfg),
        "mar_code": str(code),
        "runs": {k: [str(p) for p in v] for k, v in runs.items()},
        "fids": {v: {s: [dataclasses.asdict(r) for r in rs] for s, rs in by.items()} for v, by in results.items()},
        "table": table,
        "verdicts": verdicts,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the verdicts (exit 2 with one line on a bad setup)."""
    a = parse_args(argv)
    try:
        record = run(a)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(record["table"])
    print()
    for line in record["verdicts"]:
        print(f"- {line}")
    if a.json is not None:
        a.json.write_text(json.dumps(record, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
