"""Locality of a trained ``ar`` or ``mar`` run on continuous tokens: gradient influence by grid distance.

Usage: ``python benchmarks/locality.py RUN_DIR [--images 8] [--queries 3] [--n-masked N]``. Prints one markdown
table: Chebyshev distance, mean influence of a visible token on a query position's head condition, and its ratio
to the influence at distance 1 (see ``benchkit.metrics.locality``). A model that uses its neighbours shows the
ratio falling with distance; a flat column means it draws on every visible token alike.
"""

from __future__ import annotations

import argparse

import torch

from benchkit.metrics.locality import influence_by_distance
from benchkit.training.checks import load_splits
from benchkit.training.loading import load_run
from benchkit.training.tokens import token_cache


def main() -> None:
    """Parse arguments, load the run and its cached training tokens, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory (printed by `benchkit train`)")
    ap.add_argument("--images", type=int, default=8, help="training images to probe")
    ap.add_argument("--queries", type=int, default=3, help="query positions per image")
    ap.add_argument("--n-masked", type=int, default=None, help="mar: unknown positions (default 3/4 of them)")
    args = ap.parse_args()
    run = load_run(args.run)
    if run.combo.kind != "continuous":
        raise SystemExit(f"locality needs a run on continuous tokens; {args.run} models {run.combo.kind} tokens")
    train, _ = load_splits(run.cfg)
    torch.manual_seed(run.cfg.seed)
    cache = token_cache(run.tokenizer, "continuous", train)[: args.images]
    tokens = run.tokenizer.module.tokens_from_cache(cache, "continuous")
    prof = influence_by_distance(
        run.generator.eval(),
        tokens,
        train.labels[: args.images],
        queries=args.queries,
        n_masked=args.n_masked,
        seed=run.cfg.seed,
    )
    near = prof.get(1)
    print(f"| distance | influence | / distance 1 |  ({run.cfg.generator.name}+{run.cfg.head.name}, {args.run})")
    print("|---:|---:|---:|")
    for d, v in prof.items():
        print(f"| {d} | {v:.4f} | {v / near:.2f} |" if near else f"| {d} | {v:.4f} | - |")


if __name__ == "__main__":
    main()
