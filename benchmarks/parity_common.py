"""What the training-parity benchmarks share (``training_parity.py`` for MAR, ``training_parity_rqt.py`` for the
RQ-Transformer): the default run's job and budget, the pinned step count, the ``benchkit`` subprocesses, the
evaluation settings, the table of per-seed FIDs and the Welch verdicts, and the command-line options.

Not a script: both benchmarks import it from beside themselves. How, what and why: docs/training-parity.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.core.config import RunConfig, resolve
from benchkit.metrics.health import is_failing
from benchkit.results.seeds import t_interval, welch_p
from benchkit.sweeps.sweepfile import expand, load_sweep
from benchkit.training.artifacts import build_generator, seed_configs
from benchkit.training.checks import check, load_splits
from benchkit.training.compute import apply_budget

SWEEP, PRESET = "tiny", "tiny"
ALPHA = 0.05
RECIPE = ("steps", "batch_size", "lr", "warmup_steps", "schedule", "weight_decay", "grad_clip", "ema_decay")
OFFICIAL = "official"  # the results key of the official model's row

Settings = Sequence[tuple[float, float]]  # (cfg, temperature) per sampling setting, the first is the base one
Results = dict[str, dict[str, list["SeedFid"]]]  # variant -> setting label -> one SeedFid per training seed


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


def base_overrides(sweep: str, combo: tuple[str, str, str]) -> list[str]:
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """The training plan of one benchmark run: the budget, the pinned step count, the ``--set`` overrides of every
    benchkit model and the config they resolve to."""

    budget: float
    steps: int
    pinned: list[str]
    cfg: RunConfig


def plan_run(a: argparse.Namespace, combo: tuple[str, str, str], out: Path) -> Plan:
    """The default run's ``combo`` job at ``--budget-flops`` (default: the sweep's), its steps pinned (``--steps``
    or what the budget gives benchkit's model), with ``--seeds`` training seeds, written under ``out``."""
    budget = a.budget_flops if a.budget_flops is not None else default_budget()
    base = [*base_overrides(SWEEP, combo), f"train.budget_flops={budget}", f'device="{a.device}"']
    budget_cfg = resolve(PRESET, None, base)
    steps = a.steps or derive_steps(budget_cfg, load_splits(budget_cfg)[0].num_classes)
    pinned = pinned_overrides(base, steps, a.seeds, out, a.device)
    return Plan(budget, steps, pinned, resolve(PRESET, None, pinned))


def begin(a: argparse.Namespace, combo: tuple[str, str, str]) -> tuple[Plan, Path, bool]:
    """The start of a parity run: ``--threads`` applied, then (plan, output root, whether progress bars show)."""
    if a.threads:
        torch.set_num_threads(a.threads)
    out = a.out.resolve()
    return plan_run(a, combo, out), out, sys.stderr.isatty()


def sampling_overrides(settings: Settings, samples: int, reference: int, extra: Sequence[str] = ()) -> list[str]:
    """``benchkit eval --set`` values: ``extra``, the first setting as the base, the rest as ``eval.sweep``, a
    constant CFG schedule, no tuning, one sampling seed, ``samples`` against ``reference`` images."""
    (cfg0, t0), *rest = settings
    sweep = ", ".join(f"{{cfg = {c}, temperature = {t}}}" for c, t in rest)
    fixed = 'sample.cfg_schedule="constant" eval.tune=[] eval.seed_spread=false eval.prc=false eval.cost_repeats=1'
    return [
        *extra,
        f"sample.cfg={cfg0}",
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


def format_table(results: Results, variants: Mapping[str, str], settings: Settings) -> tuple[str, list[str]]:
    """(markdown table, verdict lines) of ``results[variant][setting label]``: a row per setting and variant (in
    ``variants`` order, named by its value), and a verdict per setting for every variant but the official one."""
    seeds = sorted({r.seed for by_setting in results.values() for rows in by_setting.values() for r in rows})
    head = ["model", "sampling", *[f"FID seed {s}" for s in seeds], "mean", "95% CI", "health"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(seeds) + 2) + "---|"]
    verdicts: list[str] = []
    for label in [setting_label(c, t) for c, t in settings]:
        for variant, name in variants.items():
            rows = {r.seed: r for r in results.get(variant, {}).get(label, [])}
            mean, _, half = t_interval([r.fid for r in rows.values()])
            cells = [_num(rows[s].fid) if s in rows else "-" for s in seeds]
            ci = "-" if not math.isfinite(half) else f"±{half:.1f}"
            mark = health_mark([r.health for r in rows.values()]) if rows else "-"
            lines.append("| " + " | ".join([name, label, *cells, _num(mean), ci, mark]) + " |")
        official = [r.fid for r in results.get(OFFICIAL, {}).get(label, [])]
        for variant in [v for v in variants if v != OFFICIAL]:
            ours = [r.fid for r in results.get(variant, {}).get(label, [])]
            verdicts.append(f"{label}, {variants[variant]}: {verdict(official, ours)}")
    return "\n".join(lines), verdicts


def rows_to_results(rows: Sequence[dict[str, Any]], seed: int, settings: Settings) -> dict[str, SeedFid]:
    """``benchkit eval --json`` rows -> {setting label: SeedFid} of the rows at one of ``settings``."""
    wanted = {setting_label(c, t) for c, t in settings}
    out = {}
    for row in rows:
        label = setting_label(float(row["cfg"]), float(row["temperature"]))
        if label in wanted:
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


def set_flags(overrides: Sequence[str]) -> list[str]:
    """``--set O`` for every override."""
    return [x for o in overrides for x in ("--set", o)]


def train_benchkit(overrides: Sequence[str], flags: Sequence[str]) -> list[Path]:
    """``benchkit train --preset tiny`` with ``overrides``; the run directory of every training seed."""
    made = json.loads(benchkit(["train", "--preset", PRESET, *set_flags(overrides), "--json", *flags]))
    return [Path(p) for p in made["seed_runs"] or [made["run_dir"]]]


def import_run(args: Sequence[str]) -> Path:
    """``benchkit import ARGS``; the run directory it wrote (the last line it prints)."""
    return Path(benchkit(["import", *args]).strip().splitlines()[-1])


def evaluate_runs(
    runs: Mapping[str, Sequence[Path]],
    seeds: Sequence[int],
    eval_sets: Sequence[str],
    results_dir: Path,
    flags: Sequence[str],
    settings: Settings,
) -> Results:
    """``benchkit eval`` of every run (``runs[variant][i]`` trained with ``seeds[i]``) at ``eval_sets``."""
    results: Results = {}
    for variant, dirs in runs.items():
        for seed, rdir in zip(seeds, dirs):
            cmd = ["eval", str(rdir), *set_flags(eval_sets), "--results", str(results_dir), "--json", *flags]
            for label, r in rows_to_results(json.loads(benchkit(cmd)), seed, settings).items():
                results.setdefault(variant, {}).setdefault(label, []).append(r)
    return results


def fids_record(results: Results) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """``results`` as plain JSON values."""
    return {v: {s: [dataclasses.asdict(r) for r in rs] for s, rs in by.items()} for v, by in results.items()}


def finish(
    a: argparse.Namespace,
    plan: Plan,
    runs: Mapping[str, Sequence[Path]],
    eval_sets: Sequence[str],
    flags: Sequence[str],
    variants: Mapping[str, str],
    settings: Settings,
    **extra: Any,
) -> dict[str, Any]:
    """Evaluate every run (in the table's order of ``variants``) and return the benchmark's JSON record: the
    options, the plan, ``extra`` (the official code's path, its architecture), the runs, the FIDs, the table and
    the verdicts."""
    seeds = [c.seed for c in seed_configs(plan.cfg)]
    ordered = {v: runs[v] for v in variants}
    results = evaluate_runs(ordered, seeds, eval_sets, a.out.resolve() / "results", flags, settings)
    table, verdicts = format_table(results, variants, settings)
    return {
        **{k: getattr(a, k) for k in ("seeds", "samples", "reference")},
        "budget_flops": plan.budget,
        "steps": plan.steps,
        "recipe": recipe_of(plan.cfg),
        **extra,
        "runs": {k: [str(p) for p in v] for k, v in ordered.items()},
        "fids": fids_record(results),
        "table": table,
        "verdicts": verdicts,
    }


@contextlib.contextmanager
def cuda_calls_on(device: torch.device) -> Iterator[None]:
    """While the official code runs: its ``tensor.cuda()`` calls move to ``device`` when that is not CUDA."""
    if device.type == "cuda":
        yield
        return
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self.to(device)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def add_run_options(p: argparse.ArgumentParser, out: Path) -> None:
    """The options every parity benchmark takes (budget, steps, seeds, samples, reference, out, json, device,
    threads); ``out`` is the default results root."""
    p.add_argument("--budget-flops", type=float, default=None, help="default: the default run's (sweeps/tiny.toml)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (overrides the budget)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per model (default 3)")
    p.add_argument("--samples", type=int, default=1000, help="samples per FID (default 1000)")
    p.add_argument("--reference", type=int, default=5000, help="held-out images per FID (default 5000)")
    p.add_argument("--out", type=Path, default=out, help="output root")
    p.add_argument("--json", type=Path, default=None, help="also write the figures and the table here")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: benchkit's choice)")


def check_counts(p: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.Namespace:
    """``a``, or a usage error (exit 2) when a count is below its least value."""
    for name, least in (("steps", 1), ("seeds", 1), ("samples", 2), ("reference", 2)):
        if getattr(a, name) is not None and getattr(a, name) < least:
            p.error(f"--{name} must be >= {least}, got {getattr(a, name)}")
    return a


def run_main(a: argparse.Namespace, run: Callable[[argparse.Namespace], dict[str, Any]]) -> int:
    """``run(a)``; print its table and verdicts and write ``--json`` (exit 2 with one line on a bad setup)."""
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
