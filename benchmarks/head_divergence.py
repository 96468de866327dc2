"""Why MAR's own Diffusion Loss head settings (learned variance, no x0 clipping) diverge at the default run's size:
one markdown table per factor, each from ``benchkit train`` / ``benchkit eval`` runs like the training-parity ones.

    python benchmarks/head_divergence.py --out /tmp/hd-out --results /tmp/hd-results --threads 1
    python benchmarks/head_divergence.py --factors steps,temperature,chain --seeds 2      # no new training

Factors (``--factors``, comma separated):

- ``head``: the four (learn_sigma, clip_x0) combinations, trained at the pinned step count (``--steps``).
- ``steps`` / ``temperature``: MAR's head settings sampled with 50 / 100 / 250 respaced diffusion steps, or at
  temperature 1.0 / 0.8 / 0 (noise off) with CFG 1 and 3 (no retraining).
- ``chain``: std of x_t and of the predicted x_0 per reverse step, and of the tokens of each MAR step, on
  ``--chain-samples`` samples drawn in-process, for MAR's head settings and the default head, each with x0
  clipping off and on at sampling (same weights: ``clip_x0`` does not enter the loss).
- ``training``: MAR's head settings at 1x / 2x / 4x the steps (``--training-seeds`` seeds).

Training is the parity script's (benchmarks/training_parity.py): the default run's ``mar`` + ``diffloss`` job of
sweeps/tiny.toml, steps pinned; runs are reused by fingerprint, evaluations whose rows are in ``--results`` are not
repeated. Figures: FID (``--samples`` vs ``--reference`` held-out images), sample health, token std ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchkit.core.config import SampleSettings
from benchkit.nn.diffusion import GaussianDiffusion
from benchkit.results.seeds import t_interval, welch_p

sys.path.insert(0, str(Path(__file__).resolve().parent))  # parity_common sits beside this script
from parity_common import ParityError, base_overrides, health_mark  # noqa: E402
from parity_common import benchkit as run_benchkit  # noqa: E402

FACTORS = ("head", "steps", "temperature", "chain", "training")
SWEEP, COMBO = "tiny", ("kl", "mar", "diffloss")  # the default run's MAR + Diffusion Loss job
MAR_STEPS = 16
Setting = tuple[float, float]  # (cfg, temperature)
BASE_SETTINGS = ((1.0, 1.0), (3.0, 0.8))  # (cfg, temperature) of the parity script's evaluation
TEMPERATURE_SETTINGS = ((1.0, 1.0), (1.0, 0.8), (1.0, 0.0), (3.0, 1.0), (3.0, 0.8), (3.0, 0.0))
DIFFUSION_STEPS = (50, 100, 250)
TRAINING_MULTIPLES = (1, 2, 4)
HEADS = {  # (learn_sigma, clip_x0) -> label
    (False, True): "learn_sigma=false, clip_x0=true (benchkit default)",
    (True, True): "learn_sigma=true, clip_x0=true",
    (False, False): "learn_sigma=false, clip_x0=false",
    (True, False): "learn_sigma=true, clip_x0=false (MAR's)",
}
MAR_HEAD = (True, False)
_FID, _RATIO, _OOR = "fid", "token_std_ratio_max", "token_out_of_range"  # the row fields a Measure takes
CHAIN_SHOWN = 8  # reverse steps listed from the start of the chain (the rest: a few spread over it)


@dataclasses.dataclass(frozen=True)
class Measure:
    """One trained model at one sampling setting: FID and sample health (NaN: not in the row)."""

    seed: int
    fid: float
    health: str | None
    std_ratio: float  # largest sampled / training token std over channels
    out_of_range: float  # share of sampled values beyond the widened training range


def train_overrides(steps: int, seeds: int, out: Path, device: str) -> list[str]:
    """The default run's job with the step count pinned (no budget, no convergence points), as the parity runs."""
    pinned = f"train.budget_flops=0 train.steps={steps} train.convergence_points=0 train.seeds={seeds}".split()
    return [*base_overrides(SWEEP, COMBO), *pinned, f'out_dir="{out}"', f'device="{device}"']


def benchkit(args: Sequence[str], overrides: Sequence[str], threads: int | None) -> Any:
    """Run ``benchkit ARGS --set O... --json [--threads N] --no-progress`` with this interpreter; its parsed JSON."""
    sets = [x for o in overrides for x in ("--set", o)]
    cmd = [*args, *sets, "--json", *(["--threads", str(threads)] if threads else []), "--no-progress"]
    return json.loads(run_benchkit(cmd))


def head_sets(learn_sigma: bool, clip_x0: bool) -> list[str]:
    """``--set`` values of a head variant (none for benchkit's default head, as the parity script trains it)."""
    if (learn_sigma, clip_x0) == (False, True):
        return []
    return [f"head.options.learn_sigma={str(learn_sigma).lower()}", f"head.options.clip_x0={str(clip_x0).lower()}"]


def sampling_overrides(settings: Sequence[Setting], diffusion_steps: int, samples: int, reference: int) -> list[str]:
    """``benchkit eval --set`` values: the first (cfg, temperature) as the base setting, the rest as ``eval.sweep``,
    16 MAR steps, the given diffusion steps, constant CFG, no tuning (the parity script's, parameterised)."""
    if not settings:
        raise ValueError("at least one sampling setting is needed")
    (c0, t0), *rest = settings
    sweep = ", ".join(f"{{cfg = {float(c)}, temperature = {float(t)}}}" for c, t in rest)
    fixed = 'sample.cfg_schedule="constant" eval.tune=[] eval.seed_spread=false eval.prc=false eval.cost_repeats=1'
    base = f"sample.steps={MAR_STEPS} sample.diffusion_steps={diffusion_steps} sample.cfg={float(c0)}"
    size = f"eval.num_samples={samples} eval.num_reference={reference}"
    return [*base.split(), f"sample.temperature={float(t0)}", f"eval.sweep=[{sweep}]", *fixed.split(), *size.split()]


def row_key(row: dict[str, Any]) -> tuple[str, float, float, int, int, int]:
    """What identifies an evaluation row here: run, cfg, temperature, diffusion steps, samples, reference."""
    c, t, d, n, r = (row.get(k) or 0 for k in ("cfg", "temperature", "diffusion_steps", "n_samples", "n_ref"))
    return str(row.get("run")), float(c), float(t), int(d), int(n), int(r)


def measure(row: dict[str, Any], seed: int) -> Measure:
    """A ``benchkit eval`` row -> Measure (missing figures are NaN)."""
    fid, ratio, oor = (math.nan if row.get(k) is None else float(row[k]) for k in (_FID, _RATIO, _OOR))
    return Measure(seed, fid, row.get("health"), ratio, oor)


def evaluate(
    run: Path, settings: Sequence[Setting], diffusion_steps: int, a: argparse.Namespace
) -> dict[tuple[float, float], dict[str, Any]]:
    """{(cfg, temperature): row} of ``run`` at ``settings``; ``benchkit eval`` only when a setting is missing."""
    want = {
        (float(c), float(t)): (run.name, float(c), float(t), diffusion_steps, a.samples, a.reference)
        for c, t in settings
    }
    path = a.results / "rows.jsonl"  # rows already there: the generator rows of earlier evaluations
    rows = [json.loads(line) for line in (path.read_text().splitlines() if path.is_file() else []) if line.strip()]
    have = {row_key(r): r for r in rows if r.get("kind") == "generator"}
    if not all(k in have for k in want.values()):
        over = sampling_overrides(settings, diffusion_steps, a.samples, a.reference)
        for r in benchkit(["eval", str(run), "--results", str(a.results)], over, a.threads):
            have[row_key(r)] = r
    return {s: have[k] for s, k in want.items() if k in have}


def train(a: argparse.Namespace, head: tuple[bool, bool], steps: int, seeds: int) -> list[Path]:
    """The run directories of ``seeds`` training seeds of ``head`` at ``steps`` (trained, or reused)."""
    over = [*train_overrides(steps, seeds, a.out.resolve(), a.device), *head_sets(*head)]
    made = benchkit(["train", "--preset", "tiny"], over, a.threads)
    return [Path(p) for p in made["seed_runs"] or [made["run_dir"]]][:seeds]


def seed_of(run: Path) -> int:
    """The training seed in a run's config.json."""
    return int(json.loads((run / "config.json").read_text())["seed"])


def _f(v: float, digits: int = 1) -> str:
    if not math.isfinite(v):
        return "-"
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"


def format_table(first: str, cells: dict[tuple[str, str], list[Measure]]) -> str:
    """One markdown table: a row per (variant, sampling) with the FID of each seed, mean, 95% CI half-width, Welch's
    p against the first row of the same sampling, the token std ratio of each seed, the mean out-of-range share and
    the health mark (``health_mark``)."""
    seeds = sorted({m.seed for ms in cells.values() for m in ms})
    fixed = "mean FID|95% CI|p vs first|std ratio|out of range|health".split("|")
    head = [first, "sampling", *[f"FID s{s}" for s in seeds], *fixed]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(seeds) + 5) + "---|"]
    firsts: dict[str, list[float]] = {}
    for (variant, sampling), ms in cells.items():
        by_seed, fid = {m.seed: m for m in ms}, [m.fid for m in ms if math.isfinite(m.fid)]
        p = welch_p(fid, firsts[sampling]) if sampling in firsts else math.nan
        firsts.setdefault(sampling, fid)
        mean, _, half = t_interval([m.fid for m in ms])
        fids = [_f(by_seed[s].fid) if s in by_seed else "-" for s in seeds]
        ratios = " / ".join(_f(m.std_ratio, 2) for m in ms)
        oor = [m.out_of_range for m in ms if math.isfinite(m.out_of_range)]
        oor_cell = f"{statistics.fmean(oor):.1%}" if oor else "-"
        ci = f"±{half:.1f}" if math.isfinite(half) else "-"
        mark = health_mark([m.health for m in ms])
        lines.append(
            "| " + " | ".join([variant, sampling, *fids, _f(mean), ci, _f(p, 3), ratios, oor_cell, mark]) + " |"
        )
    return "\n".join(lines)


def sampling_label(cfg: float, temperature: float, diffusion_steps: int) -> str:
    """``CFG 3, T 0.8, 50 steps``."""
    return f"CFG {cfg:g}, T {temperature:.1f}, {diffusion_steps} steps"


def collect(runs: Sequence[Path], ss: Sequence[Setting], steps: int, a: argparse.Namespace) -> dict[str, list[Measure]]:
    """{sampling label: one Measure per run} of ``runs`` at the settings ``ss`` with ``steps`` diffusion steps."""
    out: dict[str, list[Measure]] = {}
    for run in runs:
        for (c, t), row in evaluate(run, ss, steps, a).items():
            out.setdefault(sampling_label(c, t, steps), []).append(measure(row, seed_of(run)))
    return out


@dataclasses.dataclass
class ChainStats:
    """Per reverse step i, one value per head call: std(x_t) / its forward-process std and std(predicted x_0) /
    training std (largest over channels); per head call (MAR step) the returned tokens' std / training std."""

    chain: GaussianDiffusion
    train_std: torch.Tensor  # [C] float64
    data_var: torch.Tensor  # [C] float64, training variance (of the forward process's x_0)
    xt: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    x0: dict[int, list[float]] = dataclasses.field(default_factory=dict)
    mar: list[float] = dataclasses.field(default_factory=list)

    def add_step(self, i: int, x_t: torch.Tensor, eps: torch.Tensor) -> None:
        """Record step i from x_t [N, C] and the (guided) predicted noise before the step."""
        if len(x_t) < 2:
            return
        abar = float(self.chain.alphas_cumprod[i])
        forward_std = (abar * self.data_var + 1.0 - abar).sqrt()
        x0 = self.chain.predict_x0(x_t, i, eps).double()
        self.xt.setdefault(i, []).append(float((x_t.double().std(0) / forward_std).max()))
        self.x0.setdefault(i, []).append(float((x0.std(0) / self.train_std).max()))

    def figures(self) -> dict[str, Any]:
        """Mean ratios per reverse step (keyed by original timestep) and the per-call MAR token ratios."""
        t = self.chain.timesteps.tolist()
        return {
            "x_t": {int(t[i]): statistics.fmean(v) for i, v in self.xt.items()},
            "x0_pred": {int(t[i]): statistics.fmean(v) for i, v in self.x0.items()},
            "mar_tokens": self.mar,
        }

    def add_tokens(self, tokens: torch.Tensor) -> None:
        """Record the tokens one head call returned (one MAR step of one batch)."""
        if len(tokens) >= 2:
            self.mar.append(float((tokens.double().std(0) / self.train_std).max()))


def chain_profile(run: Path, settings: SampleSettings, samples: int, clip: bool, seed: int = 0) -> ChainStats:
    """Sample ``samples`` token grids of ``run`` in one batch, recording every reverse step (``ChainStats``);
    ``clip`` switches x0 clipping on at sampling (the weights are the same)."""
    from benchkit.training.loading import load_run  # loads torch models: only when the chain factor runs

    r = load_run(run)
    ref = r.token_reference()
    assert ref is not None and ref.std is not None, f"{run}: no training-token reference"
    head = r.generator.head
    head.cfg = dataclasses.replace(head.cfg, clip_x0=clip)
    chain = head.chain(settings.diffusion_steps or head.cfg.sampling_steps)
    std = ref.std.clamp_min(1e-12)
    stats = ChainStats(chain, std, std**2)
    plain_step, plain_sample = chain.ddpm_step, head.sample

    def step(x_t: torch.Tensor, i: int, eps: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        stats.add_step(i, x_t, eps)
        return plain_step(x_t, i, eps, *args, **kwargs)

    def sample(*args: Any, **kwargs: Any) -> torch.Tensor:
        out = plain_sample(*args, **kwargs)
        stats.add_tokens(out)
        return out

    setattr(chain, "ddpm_step", step)  # noqa: B010 - instance-level hooks on this loaded copy only
    setattr(head, "sample", sample)  # noqa: B010
    labels = torch.arange(samples) % r.generator.num_classes
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        r.generator.generate(labels, settings=settings, generator=g)
    return stats


def shown_steps(k: int, first: int = CHAIN_SHOWN) -> list[int]:
    """Reverse-step indices to list, K-1 first: the first ``first``, a few spread over the rest, and step 0."""
    order = list(range(k - 1, -1, -1))
    return sorted(set(order[:first] + order[first :: max(1, (k - first) // 4)] + [0]), reverse=True)


def chain_table(profiles: dict[str, ChainStats]) -> str:
    """Markdown: per shown reverse step, the mean over head calls of each profile's std ratios."""
    names, chain = list(profiles), next(iter(profiles.values())).chain
    head = ["reverse step (t)", *[f"{n}: x_t" for n in names], *[f"{n}: x0 pred (unclipped)" for n in names]]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (2 * len(names))]
    for i in shown_steps(chain.num_steps):
        xt = [_f(statistics.fmean(p.xt[i]), 2) if i in p.xt else "-" for p in profiles.values()]
        x0 = [_f(statistics.fmean(p.x0[i]), 2) if i in p.x0 else "-" for p in profiles.values()]
        lines.append(f"| {i} ({int(chain.timesteps[i])}) | " + " | ".join(xt + x0) + " |")
    mar = ["final tokens, MAR step 1 / last", *[f"{p.mar[0]:.3g} / {p.mar[-1]:.3g}" for p in profiles.values()]]
    lines.append("| " + " | ".join(mar + [""] * len(names)) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--factors", default=",".join(FACTORS), help=f"comma separated, of {', '.join(FACTORS)}")
    p.add_argument("--out", type=Path, default=Path("results/head-divergence"), help="results root of the runs")
    p.add_argument("--results", type=Path, default=None, help="where eval rows go (default OUT/results)")
    p.add_argument("--steps", type=int, default=498, help="pinned training steps (default 498, the parity's)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds of the head/steps/temperature factors")
    p.add_argument("--training-seeds", type=int, default=2, help="training seeds of the training factor")
    p.add_argument("--samples", type=int, default=500, help="samples per FID (default 500)")
    p.add_argument("--reference", type=int, default=5000, help="held-out images per FID (default 5000)")
    p.add_argument("--chain-samples", type=int, default=256, help="samples of the chain factor (default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: benchkit's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the tables and figures here")
    a = p.parse_args(argv)
    a.factors = [f.strip() for f in a.factors.split(",") if f.strip()]
    if set(a.factors) - set(FACTORS):
        p.error(f"unknown factor in {a.factors}; valid: {', '.join(FACTORS)}")
    for name, least in (("steps", 1), ("seeds", 1), ("training_seeds", 1), ("samples", 2), ("reference", 2)):
        if getattr(a, name) < least:
            p.error(f"--{name.replace('_', '-')} must be >= {least}, got {getattr(a, name)}")
    a.results = a.results if a.results is not None else a.out / "results"
    return a


def run_factor(name: str, a: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(markdown table, figures) of one factor."""
    cells: dict[tuple[str, str], list[Measure]] = {}

    def add(label: str, runs: Sequence[Path], settings: Sequence[Setting], steps: int = 50) -> None:
        cells.update({(label, k): ms for k, ms in collect(runs, settings, steps, a).items()})

    mar_runs = train(a, MAR_HEAD, a.steps, a.seeds) if name != "head" else []
    if name == "head":
        for variant, label in HEADS.items():
            add(label, train(a, variant, a.steps, a.seeds), BASE_SETTINGS)
    elif name == "steps":
        for d in DIFFUSION_STEPS:
            add(HEADS[MAR_HEAD], mar_runs, BASE_SETTINGS, d)
    elif name == "temperature":
        add(HEADS[MAR_HEAD], mar_runs, TEMPERATURE_SETTINGS)
    elif name == "training":
        for m in TRAINING_MULTIPLES:
            runs = mar_runs[: a.training_seeds] if m == 1 else train(a, MAR_HEAD, m * a.steps, a.training_seeds)
            add(f"{m}x ({m * a.steps} steps)", runs, BASE_SETTINGS)
    if name != "chain":
        table = format_table("training" if name == "training" else "head", cells)
        return table, {" | ".join(k): v for k, v in cells.items()}
    settings = SampleSettings(steps=MAR_STEPS, cfg=1.0, temperature=1.0, diffusion_steps=50)
    tables, figures = [], {}
    for mar_run, default_run in zip(mar_runs, train(a, (False, True), a.steps, a.seeds)):
        profiles = {
            f"{head} {clip_name}": chain_profile(run, settings, a.chain_samples, clip)
            for head, run in (("MAR", mar_run), ("default", default_run))
            for clip_name, clip in (("no clip", False), ("clip", True))
        }
        title = f"seed {seed_of(mar_run)} ({mar_run.name}, {default_run.name}), CFG 1, T 1.0, {a.chain_samples} samples"
        tables.append(f"{title}\n\n{chain_table(profiles)}")
        figures[mar_run.name] = {n: p.figures() for n, p in profiles.items()}
    return "\n\n".join(tables), figures


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen factors; print one table per factor with the command and its wall time."""
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.results.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/head_divergence.py " + " ".join(sys.argv[1:] if argv is None else argv)
    record: dict[str, Any] = {"command": command, "factors": {}}
    for name in a.factors:
        start = time.perf_counter()
        try:
            table, figures = run_factor(name, a)
        except ParityError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        wall = time.perf_counter() - start
        print(f"### Factor: {name}\n\n`{command}` ({wall:.0f} s for this factor)\n\n{table}\n", flush=True)
        record["factors"][name] = {"table": table, "wall_s": wall, "figures": figures}
    if a.json is not None:
        a.json.write_text(json.dumps(record, indent=1, default=lambda o: dataclasses.asdict(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
