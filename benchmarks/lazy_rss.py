"""Peak memory of the out-of-memory data path: lazy image folder -> sharded token cache -> training from it.

Generates an ImageNet-layout folder of ``--classes x --per-class`` PNG images at ``--size`` px (once), then runs
each phase in a fresh process so that its peak is its own: the proportional set size (PSS) of the process and its
DataLoader workers, sampled every 50 ms from ``/proc/PID/smaps_rollup``, and the main process's ``ru_maxrss``:

- ``baseline``: imports, a tiny KL tokenizer and a tiny MAR + Diffusion Loss, nothing else;
- ``cache``: every image and its mirror through ``DataLoader`` workers and the tokenizer into sharded caches;
- ``train``: ``--steps`` training steps of the generator whose batches are gathered from the memory-mapped caches;
- ``cache-nodata`` and ``train-nodata``: the same encoding and training work on random tensors (no files, workers
  or caches), so that ``cache - cache-nodata`` and ``train - train-nodata`` are the data path's own share.

PSS is split into its anonymous part (the processes' own memory: heap, tensors, batches) and its file-backed part
(mapped libraries and the pages of memory-mapped caches, which the kernel can drop and read again). The file part
is noisy: a library page's PSS is divided among all processes on the machine that map it, so it moves with what
else runs. The anonymous peak is therefore the figure to compare between runs. It prints the decoded size of the
data (N x 3 x size^2 bytes, what the in-memory path holds) and a last ``RESULT`` line with every figure as JSON.
Usage: ``python benchmarks/lazy_rss.py --dir /tmp/rss [--classes 20 --per-class 1000 --size 64 --steps 50]
[--cache-batch 256] [--tokenizer-ch 16] [--no-mirror]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    """Random-colour blobs, one folder per class (skipped when the folder is complete)."""
    from PIL import Image

    if (root / "done").is_file():
        return
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for c in range(classes):
        d = root / "train" / f"n{c:08d}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, size // 3))]
            blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[..., None]
            img = np.where(blob, rng.integers(0, 256, 3), rng.integers(0, 256, 3)) + rng.normal(0, 8, (size, size, 3))
            Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:05d}.png")
    (root / "done").write_text("ok")


class TreeMemory:
    """Samples, every 50 ms, the proportional set size (PSS) of this process plus all its descendants (DataLoader
    workers), so shared pages are not counted once per worker, split into its anonymous part (the processes' own
    memory: heap, tensors, batches) and its file-backed part (mapped libraries and memory-mapped caches, pages the
    kernel can drop and reread; its PSS also depends on how many other processes on the machine map the same
    libraries). Keeps the peak of the total with its split at that moment, and the peak of the anonymous part (MiB)."""

    FIELDS = ("Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")

    def __init__(self) -> None:
        import threading

        self.peak = {f: 0.0 for f in self.FIELDS}
        self.peak_anon = 0.0
        self.anon: list[tuple[float, float]] = []  # (seconds, anonymous PSS) of every sample
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def _pids(pid: int) -> list[int]:
        out = [pid]
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for k in kids:
                out += TreeMemory._pids(int(k))
        return out

    @staticmethod
    def _rollup_kb(pid: int) -> dict[str, int]:
        out: dict[str, int] = {}
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
                name, value = line.split(":", 1)
                if name in TreeMemory.FIELDS:
                    out[name] = int(value.split()[0])
        except OSError:
            pass
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = {f: 0.0 for f in self.FIELDS}
            for pid in self._pids(os.getpid()):
                for f, kb in self._rollup_kb(pid).items():
                    now[f] += kb / 1024
            if now["Pss"] > self.peak["Pss"]:
                self.peak = now
            self.peak_anon = max(self.peak_anon, now["Pss_Anon"] + now["Pss_Shmem"])
            self.anon.append((time.perf_counter() - self._t0, now["Pss_Anon"] + now["Pss_Shmem"]))

    def stop(self) -> dict[str, float]:
        """Stop sampling; the peak PSS, its anonymous and file-backed parts then, and the peak anonymous PSS (MiB)."""
        self._stop.set()
        self._thread.join()
        end = self.anon[-1][0] if self.anon else 1.0
        tenths = [
            max((a for t, a in self.anon if k * end / 10 <= t <= (k + 1) * end / 10), default=0.0) for k in range(10)
        ]
        return {
            "peak_pss_mb": self.peak["Pss"],
            "anon_at_peak_mb": self.peak["Pss_Anon"] + self.peak["Pss_Shmem"],
            "file_at_peak_mb": self.peak["Pss_File"],
            "peak_anon_mb": self.peak_anon,
            "peak_anon_by_tenth_mb": tenths,
        }


NODATA_BATCHES = 20  # encoding batches of the cache-nodata phase (the peak is reached within a few)
PHASES = ("baseline", "cache-nodata", "cache", "train-nodata", "train")


def _train(gen: Any, get_batch: Any, n: int, steps: int, run_dir: Path) -> None:
    """``steps`` steps of the trainer at batch 64 from scratch in ``run_dir``."""
    import shutil

    from benchkit.core.config import TrainConfig
    from benchkit.training.trainer import fit

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = TrainConfig(steps=steps, batch_size=64, lr=1e-4, warmup_steps=5, checkpoint_every=steps, log_every=10)
    fit(
        gen,
        lambda m, b: m.loss(b),
        get_batch,
        n,
        cfg,
        run_dir,
        seed=0,
        fingerprint=f"rss{steps}",
        resume=False,
        show_progress=False,
    )


def phase(
    name: str,
    root: Path,
    size: int,
    steps: int,
    workers: int,
    mirror: bool,
    cache_batch: int = 256,
    tokenizer_ch: int = 0,
) -> dict[str, float]:
    memory = TreeMemory()
    import torch

    import benchkit.generators
    import benchkit.heads
    import benchkit.tokenizers  # noqa: F401
    from benchkit.core.interfaces import Batch
    from benchkit.core.registry import GENERATORS, TOKENIZERS
    from benchkit.data.lazy import LazyImageFolder
    from benchkit.training.tokencache import ShardedTokenCache, build_token_cache

    torch.manual_seed(0)
    ch = {"ch": tokenizer_ch} if tokenizer_ch else {}  # a narrower encoder: the same data path, less compute
    tok = TOKENIZERS.create("kl", image_size=size, channel_mult=[1, 1, 2, 2], **ch).eval()  # 64 px -> 8x8x4
    spec = tok.specs["continuous"]
    gen = GENERATORS.create("mar", spec=spec, head="diffloss", num_classes=1000)
    data = LazyImageFolder(root / "train", image_size=size)
    t0 = time.perf_counter()
    out: dict[str, float] = {"images": len(data)}
    encode = lambda x: tok.encode_for_cache(x.float().div(127.5).sub(1), "continuous")  # noqa: E731
    if name == "cache":
        for mirrored in (False, True) if mirror else (False,):
            build_token_cache(
                data,
                encode,
                root / f"cache{'-hflip' if mirrored else ''}",
                key="rss",
                shard_size=max(1, 2048 // cache_batch) * cache_batch,
                batch_size=cache_batch,
                workers=workers,
                mirrored=mirrored,
                progress=False,
            )
    elif name == "cache-nodata":  # the same encoding work on random batches: no files, workers or shards
        with torch.no_grad():
            for _ in range(NODATA_BATCHES):
                encode(torch.randint(0, 256, (cache_batch, 3, size, size), dtype=torch.uint8))
    elif name == "train":
        cache = ShardedTokenCache(root / "cache")
        flipped = ShardedTokenCache(root / "cache-hflip") if mirror else cache

        def get_batch(idx: torch.Tensor) -> Batch:
            pick = (torch.rand(len(idx)) < 0.5).view(-1, 1, 1, 1)
            cached = torch.where(pick, flipped[idx], cache[idx])
            return Batch(tok.tokens_from_cache(cached, "continuous"), data.labels[idx])

        _train(gen, get_batch, len(data), steps, root / "run")
    elif name == "train-nodata":  # the same training steps on random tokens held by nobody
        _train(
            gen,
            lambda idx: Batch(torch.randn(len(idx), *spec.token_shape), data.labels[idx]),
            len(data),
            steps,
            root / "run-nodata",
        )
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.update(seconds=time.perf_counter() - t0, own_peak_rss_mb=own, **memory.stop())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, required=True)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--phase", choices=PHASES)
    p.add_argument("--no-mirror", action="store_true", help="cache the images only, not their mirrors too")
    p.add_argument("--cache-batch", type=int, default=256, help="images per encoding batch while caching")
    p.add_argument("--tokenizer-ch", type=int, default=0, help="KL encoder base width (0: the tiny default)")
    a = p.parse_args()
    if a.phase:
        print(
            json.dumps(
                phase(a.phase, a.dir, a.size, a.steps, a.workers, not a.no_mirror, a.cache_batch, a.tokenizer_ch)
            )
        )
        return
    t0 = time.perf_counter()
    make_folder(a.dir, a.classes, a.per_class, a.size)
    n = a.classes * a.per_class
    disk = sum(f.stat().st_size for f in (a.dir / "train").rglob("*.png")) / 2**20
    decoded = n * 3 * a.size**2 / 2**20
    print(
        f"folder: {n} images at {a.size} px, {disk:.0f} MiB of PNG, decoded {decoded:.0f} MiB "
        f"(made in {time.perf_counter() - t0:.0f} s); load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
    )
    import shutil

    for old in ("cache", "cache-hflip", "run", "run-nodata"):  # every phase measured from scratch
        shutil.rmtree(a.dir / old, ignore_errors=True)
    print(f"cache batch {a.cache_batch}, {a.workers} workers, mirrors {'no' if a.no_mirror else 'yes'}\n")
    print(
        "| phase | seconds | peak PSS (MiB) | anon + file at the peak | peak anon PSS | anon above baseline | "
        "peak RSS, main process |\n|---|---:|---:|---:|---:|---:|---:|"
    )
    res: dict[str, dict[str, float]] = {}
    for name in PHASES:
        args = [
            sys.executable,
            __file__,
            "--dir",
            str(a.dir),
            "--size",
            str(a.size),
            "--steps",
            str(a.steps),
            "--workers",
            str(a.workers),
            "--phase",
            name,
            "--cache-batch",
            str(a.cache_batch),
            "--tokenizer-ch",
            str(a.tokenizer_ch),
        ] + (["--no-mirror"] if a.no_mirror else [])
        r = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        res[name] = r
        print(
            f"| {name} | {r['seconds']:.1f} | {r['peak_pss_mb']:.0f} | {r['anon_at_peak_mb']:.0f} + "
            f"{r['file_at_peak_mb']:.0f} | {r['peak_anon_mb']:.0f} | "
            f"{r['peak_anon_mb'] - res['baseline']['peak_anon_mb']:.0f} | {r['own_peak_rss_mb']:.0f} |"
        )
    for name in ("cache", "train"):  # a leak or anything kept per batch would make the later tenths rise
        print(
            f"peak anon PSS of {name} in each tenth of its run (MiB): "
            + " ".join(f"{x:.0f}" for x in res[name].get("peak_anon_by_tenth_mb", []))
        )
    cache_mb = sum(f.stat().st_size for f in a.dir.glob("cache*/*.npy")) / 2**20
    share = {
        k: (
            res[k]["peak_pss_mb"] - res[f"{k}-nodata"]["peak_pss_mb"],
            res[k]["peak_anon_mb"] - res[f"{k}-nodata"]["peak_anon_mb"],
        )
        for k in ("cache", "train")
    }
    print(
        f"\ndecoded data {decoded:.0f} MiB; the data path's share (phase minus its no-data twin), PSS / anon PSS: "
        f"caching {share['cache'][0]:.0f} / {share['cache'][1]:.0f} MiB, "
        f"training {share['train'][0]:.0f} / {share['train'][1]:.0f} MiB"
    )
    print(f"token caches on disk: {cache_mb:.0f} MiB; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("RESULT " + json.dumps({"images": n, "size": a.size, "decoded_mb": decoded, "cache_mb": cache_mb, **res}))


if __name__ == "__main__":
    main()
