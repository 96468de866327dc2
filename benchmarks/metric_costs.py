"""What the default run's repeated metric calls cost, before and after their cheaper forms (same values up to rounding).

    python benchmarks/metric_costs.py              # 1 thread, the default run's sizes, 5 repeats
    python benchmarks/metric_costs.py --dim 2048   # Inception-sized features
    python benchmarks/metric_costs.py --ref-stats results/_cache/ref_stats/shapes-test-5000-...safetensors

Rows, on random features of ``--dim`` dimensions (the default run's ``dataset`` network gives 152), or with
``--ref-stats`` on a run's cached reference features (5000 held-out images through its feature network) with
"samples" drawn from them plus noise:
- clean-fid's KID (``kernel_distance``, 100 subsets) on float64 against float32 arrays, for the default run's
  sample counts: 500 test samples, 250 tuning samples and 100 at a convergence point, each against 5000 references;
- one FID against a fixed reference: the general ``frechet_distance`` (``eigvals`` of S R) against
  ``FidToReference`` (``eigvalsh`` of R^1/2 S R^1/2, R^1/2 computed once), at 100 and 500 samples; the bootstrap
  spread at each convergence point and FID-infinity call it 20 and 15 times.
Each cell is the median of ``--repeats`` timed calls; "max rel. diff" is the largest relative difference of the two
values over the calls. Compare within one run: absolute times move 10-20% between runs on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from benchkit.core.threads import apply_threads
from benchkit.metrics.frechet import FidToReference, feature_stats, frechet_distance
from benchkit.metrics.quality import cleanfid_kid

NS = (100, 250, 500)  # samples at a convergence point, in tuning, in the test evaluation


def _median_s(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
    """(median seconds, last value) of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times, value = [], 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), value


def _row(name: str, old: Callable[[], float], new: Callable[[], float], repeats: int) -> str:
    t_old, v_old = _median_s(old, repeats)
    t_new, v_new = _median_s(new, repeats)
    rel = abs(v_old - v_new) / max(abs(v_old), 1e-30)
    return f"| {name} | {1e3 * t_old:.1f} | {1e3 * t_new:.1f} | {t_old / t_new:.1f}x | {rel:.1e} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=152)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ref-stats", help="a cached reference-statistics .safetensors of a run (its 'feats')")
    a = ap.parse_args()
    apply_threads(a.threads)  # torch's and numpy's/scipy's BLAS threads
    rng = np.random.default_rng(0)
    if a.ref_stats:
        from safetensors.numpy import load_file

        ref = load_file(a.ref_stats)["feats"].astype(np.float32)
        scale = ref.std(axis=0) * 0.5
        fake = {n: ref[rng.integers(0, len(ref), n)] + rng.standard_normal((n, ref.shape[1])) * scale for n in NS}
    else:
        mix = rng.standard_normal((a.dim, a.dim)) / np.sqrt(a.dim)
        ref = rng.standard_normal((5000, a.dim)) @ mix
        fake = {n: rng.standard_normal((n, a.dim)) @ mix + 0.1 for n in NS}
    ref = ref.astype(np.float32)
    fake = {n: f.astype(np.float32) for n, f in fake.items()}
    ref_stats = feature_stats(ref)
    to_ref = FidToReference(*ref_stats)
    print(
        f"{ref.shape[1]}-d features ({a.ref_stats or 'random'}), {len(ref)} references, numpy {np.__version__}, "
        f"{a.threads} thread(s) for torch and BLAS, "
        f"median of {a.repeats}\n"
    )
    print("| call | before ms | after ms | speed-up | max rel. diff |")
    print("|---|---:|---:|---:|---:|")
    for n in (500, 250, 100):
        f64, r64 = fake[n].astype(np.float64), ref.astype(np.float64)
        old = lambda f64=f64, r64=r64, n=n: cleanfid_kid(f64, r64, n, 0, dtype=np.float64)  # noqa: E731
        new = lambda n=n: cleanfid_kid(fake[n], ref, n, 0)  # noqa: E731
        print(_row(f"clean-fid KID, {n} samples (float64 -> float32)", old, new, a.repeats))
    for n in (100, 500):
        stats = feature_stats(fake[n])
        old = lambda stats=stats: frechet_distance(*stats, *ref_stats)  # noqa: E731
        new = lambda stats=stats: to_ref(*stats)  # noqa: E731
        print(_row(f"FID to a fixed reference, {n} samples (eigvals -> eigvalsh)", old, new, a.repeats))


if __name__ == "__main__":
    main()
