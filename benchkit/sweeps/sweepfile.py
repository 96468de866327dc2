"""Sweeps: a TOML file of grids over components and options, expanded into checked run configs.

::

    preset = "tiny"              # base preset (optional)
    name = "mysweep"             # results/<name>/
    set = ["train.steps=300"]    # overrides applied to every job
    [grid]                       # cartesian product over dotted keys
    "generator.name" = ["ar", "mar"]
    [[combos]]                   # explicit alternatives, crossed with the grid
    "tokenizer.name" = "vq"
    "head.name" = "ce"

A sweep may start from another: ``extends = "tiny"`` (a shipped name, or a path relative to the file) takes that
sweep's keys, runs its ``set`` before its own, and keeps its grid and combos unless it gives its own.

Invalid combinations are skipped with the reason. Jobs are ordered so that each tokenizer is trained once and
``--shard i/n`` takes every n-th job (shard i starting with its i-th tokenizer); any number of shards can write one
results directory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from benchkit.core.config import RunConfig, load_file, resolve
from benchkit.core.errors import BenchkitError, ConfigError, suggest
from benchkit.core.options import toml_loads
from benchkit.training.artifacts import seed_configs, tokenizer_fingerprint
from benchkit.training.checks import check


@dataclass(frozen=True)
class Job:
    """One expanded point of a sweep: its overrides and, if valid, its config."""

    overrides: tuple[str, ...]
    cfg: RunConfig | None
    skipped: str | None


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return repr(value)


def shipped_sweeps() -> list[str]:
    """Names of the sweep files shipped with benchkit (``benchkit run --sweep NAME``)."""
    root = resources.files("benchkit.configs").joinpath("sweeps")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def _read_sweep(path_or_name: str | Path) -> tuple[dict[str, Any], Path | None]:
    """One sweep file as written (no ``extends`` applied) and its folder (None for a shipped sweep)."""
    p = Path(path_or_name)
    if p.suffix in (".toml", ".json") or p.exists():
        return load_file(p), p.resolve().parent
    names = shipped_sweeps()
    if str(path_or_name) not in names:
        raise ConfigError(
            f"unknown sweep {str(path_or_name)!r}; valid: {', '.join(names)} or a path to a .toml file"
            + suggest(str(path_or_name), names)
        )
    text = resources.files("benchkit.configs").joinpath("sweeps").joinpath(f"{path_or_name}.toml").read_text()
    return toml_loads(text), None


def load_sweep(path_or_name: str | Path) -> dict[str, Any]:
    """Read a sweep file, or a shipped sweep by name, with its ``extends`` chain applied."""
    spec, folder = _read_sweep(path_or_name)
    chain = [str(Path(path_or_name).resolve()) if folder is not None else str(path_or_name)]
    while "extends" in spec:
        parent_name = spec.pop("extends")
        if not isinstance(parent_name, str) or not parent_name:
            raise ConfigError(f"sweep {chain[-1]!r}: extends must be the name or path of a sweep, got {parent_name!r}")
        local = folder / parent_name if folder is not None else None
        target: str | Path = local if local is not None and local.exists() else parent_name
        if str(target) in chain:
            raise ConfigError(f"sweep {chain[0]!r}: extends loops ({' -> '.join(chain + [str(target)])})")
        chain.append(str(target))
        parent, folder = _read_sweep(target)
        merged = {**parent, **spec}
        merged["set"] = list(parent.get("set", [])) + list(spec.get("set", []))
        spec = merged
    return spec


def sweep_jobs(spec: dict[str, Any]) -> int | None:
    """The sweep file's ``jobs`` (job processes when ``--jobs`` and ``$BENCHKIT_JOBS`` are not given), None when
    it has none."""
    jobs = spec.get("jobs")
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"sweep key jobs must be an integer >= 1, got {jobs!r}")
    return jobs


def expand(spec: dict[str, Any], extra_overrides: list[str] | None = None, preset: str | None = None) -> list[Job]:
    """Every job of a sweep, checked; invalid combinations carry the reason they are skipped."""
    valid_keys = {"preset", "name", "set", "grid", "combos", "description", "jobs"}
    unknown = [k for k in spec if k not in valid_keys]
    if unknown:
        raise ConfigError(f"unknown sweep key {unknown[0]!r}; valid: {', '.join(sorted(valid_keys))}")
    base = list(spec.get("set", [])) + list(extra_overrides or [])
    if spec.get("name"):
        base.insert(0, f'name="{spec["name"]}"')
    grid: dict[str, list[Any]] = spec.get("grid", {})
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep grid entry {key!r} must be a non-empty list")
    combos: list[dict[str, Any]] = spec.get("combos", [{}]) or [{}]
    jobs, seen = [], set()
    for combo in combos:
        for point_values in itertools.product(*grid.values()):
            point = {**dict(zip(grid, point_values)), **combo}
            overrides = tuple(base + [f"{k}={_fmt(v)}" for k, v in point.items()])
            try:
                cfg = resolve(preset or spec.get("preset", "tiny"), None, list(overrides))
            except ConfigError as e:
                jobs.append(Job(overrides, None, str(e)))
                continue
            key = repr(cfg)
            if key in seen:
                continue
            seen.add(key)
            try:
                check(cfg)
            except BenchkitError as e:
                jobs.append(Job(overrides, None, str(e)))
                continue
            for c in seed_configs(cfg):  # train.seeds: one job per training seed, each an ordinary run
                seed_overrides = (f"seed={c.seed}", f"train.seed_index={c.train.seed_index}") if c is not cfg else ()
                jobs.append(Job((*overrides, *seed_overrides), c, None))
    return sorted(jobs, key=lambda j: (j.cfg is None, j.cfg.tokenizer.name if j.cfg else ""))


def parse_shard(text: str | None) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r} must look like i/n, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return i, n


def shard(jobs: list[Job], i: int, n: int) -> list[Job]:
    """The valid jobs of shard i of n: every n-th valid job, rotated so that shard i starts with the i-th of its
    tokenizers. Shards started together then train different tokenizers at first instead of all waiting on the
    lock of the first one (a job's results do not depend on its place in the order)."""
    mine = [j for j in jobs if j.cfg is not None][i::n]
    tokenizers = list(dict.fromkeys(tokenizer_fingerprint(j.cfg) for j in mine if j.cfg is not None))
    if len(tokenizers) < 2:
        return mine
    first = tokenizers[i % len(tokenizers)]
    k = next(pos for pos, j in enumerate(mine) if j.cfg is not None and tokenizer_fingerprint(j.cfg) == first)
    return mine[k:] + mine[:k]
