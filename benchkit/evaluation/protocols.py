"""Evaluation protocols beside benchkit's own (``eval.protocol``, docs/evaluation.md): ADM's evaluator against a
reference batch, the optional CMMD and FD-DINOv2 columns, and a run's samples exported as an ADM sample batch.

- ``adm_quality``: the columns of guided-diffusion's ``evaluations/evaluator.py`` for uint8 samples against the
  ``.npz`` of ``eval.reference_batch``: ``fid`` (pool_3 features of the samples against the batch's ``mu``/``sigma``),
  ``sfid`` (``mixed_6/conv`` features against ``mu_s``/``sigma_s``), ``is_mean`` (chunks of 5,000 in sample order, no
  spread), ``precision``/``recall`` (k = 3, against the pool features of the batch's ``arr_0`` images), with
  ``benchkit.metrics.adm``'s formulas on torch-fidelity's Inception-V3; plus ``fid_cleanfid``/``fid_rel_diff`` (clean-
  fid's Frechet distance of the same statistics, a second computation) and the labels ``protocol = "adm"``,
  ``reference`` (the file's name) and ``features``. The batch's pool features are cached under the run's cache
  directory (``<out_dir>/_cache/protocols/``), keyed by the file's sha256 and the Inception weights' hash.
- ``extra_quality``: ``cmmd`` (``benchkit.metrics.cmmd``) and ``fd_dinov2`` (Frechet distance of DINOv2 CLS features,
  ``benchkit.metrics.dinov2``) of the samples against held-out images or the ADM batch's images, whose embeddings are
  cached the same way; ``cmmd_features`` / ``fd_dinov2_features`` name the weights.
- ``export_npz``: ``n`` samples of a run, labels balanced (0, 1, ..., K-1, 0, ...: every run of 5,000 consecutive
  samples, one of ADM's IS chunks, holds every class equally often when K divides 5,000), streamed chunk by chunk into
  an ADM ``arr_0``/``arr_1`` file that guided-diffusion's evaluator reads; chunk c is sampled with seed
  ``seed * 1_000_003 + c``, as ``benchkit.metrics.refstats.streamed_fid`` does.

Deviation: samples are scored on one process (under torchrun the other ranks do not share the work).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchkit.core.config import EvalConfig, RunConfig, apply_override, from_dict
from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write
from benchkit.core.progress import progress_bar
from benchkit.core.threads import apply_threads
from benchkit.metrics import adm
from benchkit.metrics.cmmd import ClipConfig, clip_embeddings, clip_tag, cmmd, find_clip_weights, load_clip
from benchkit.metrics.configured import cache_dir, reference_key
from benchkit.metrics.dinov2 import DinoV2Config, dinov2_features, find_dinov2_weights, load_dinov2
from benchkit.metrics.extractor import safe_name, sha256_file
from benchkit.metrics.features import check_protocol, load_extractor  # noqa: F401  (check_protocol re-exported)
from benchkit.metrics.frechet import feature_stats, frechet_distance
from benchkit.metrics.health import SampleHealth
from benchkit.metrics.quality import (
    MIN_IMAGES,
    cleanfid_fid_or_reason,
    compare_fids,
    ref_cache_name,
)
from benchkit.sampling.generate import SampleSettings, balanced_labels
from benchkit.training.artifacts import TrainedRun
from benchkit.training.loading import load_run

log = logging.getLogger(__name__)

Images = torch.Tensor | Iterable[torch.Tensor]
"""uint8 images [N, 3, H, W], or an iterable of such chunks (samples streamed as they are generated)."""
CHUNK = 500  # images per pass through the networks when they come as one tensor
ADM_IS_SPLIT = 5000  # ADM's Inception Score chunk


# ---------------------------------------------------------------------------------------------- labels and identity


def protocol_labels(cfg: RunConfig, n_reference: int) -> dict[str, str]:
    """The ``protocol`` and ``reference`` labels of a row of ``cfg``: ``adm`` and the batch's file name, or
    ``benchkit`` and the reference statistics' file name or the held-out set's cache name."""
    ev = cfg.eval
    if ev.protocol == "adm" and ev.reference_batch:
        return {"protocol": "adm", "reference": Path(ev.reference_batch).name}
    reference = Path(ev.reference_stats).name if ev.reference_stats else reference_key(cfg, n_reference)
    return {"protocol": "benchkit", "reference": reference}


def row_identity(ev: EvalConfig) -> tuple[Any, ...]:
    """What the protocol settings add to an evaluation row's id: nothing at the defaults (every earlier row id stays),
    else ``protocol``, the reference batch's sha256 (its content, not its path), ``cmmd`` and ``fd_dinov2``."""
    batch = sha256_file(Path(ev.reference_batch))[:16] if ev.reference_batch else None
    extra = {"protocol": ev.protocol if ev.protocol != "benchkit" else None, "reference_batch": batch}
    kept = {k: v for k, v in {**extra, "cmmd": ev.cmmd, "fd_dinov2": ev.fd_dinov2}.items() if v}
    return (kept,) if kept else ()


# ---------------------------------------------------------------------------------------------- helpers


def _chunks(images: Images, size: int = CHUNK) -> Iterator[torch.Tensor]:
    """uint8 [n, 3, H, W] chunks of ``images`` (a tensor is cut into ``size`` images; an iterable is passed on)."""
    parts = (images[i : i + size] for i in range(0, len(images), size)) if torch.is_tensor(images) else images
    for c in parts:
        if not torch.is_tensor(c) or c.dtype != torch.uint8 or c.ndim != 4 or c.shape[1] != 3:
            got = f"{c.dtype} {tuple(c.shape)}" if torch.is_tensor(c) else type(c).__name__
            raise ValueError(f"samples must be uint8 [N,3,H,W] (use benchkit.data.base.to_uint8), got {got}")
        yield c


def _batch_chunks(batch: adm.AdmBatch, size: int = CHUNK) -> Iterator[torch.Tensor]:
    """The images of an ADM batch as uint8 NCHW chunks, read from the file as they are needed."""
    for part in batch.iter_images(size):
        yield torch.from_numpy(part.copy()).permute(0, 3, 1, 2).contiguous()


def _batch_id(batch: adm.AdmBatch) -> str:
    return f"adm-{sha256_file(batch.path)[:16]}"


def _load(path: Path) -> np.ndarray | None:
    """The cached float32 features at ``path``; None when absent or unreadable (then recomputed)."""
    if not path.is_file():
        return None
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        log.warning("cached features %s are unreadable (%s); recomputing", path, e)
        return None


def _save(path: Path, feats: np.ndarray) -> np.ndarray:
    """Store ``feats`` as float32 .npy at ``path`` (atomically); returns what was stored."""
    arr = np.ascontiguousarray(feats, dtype=np.float32)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)

    atomic_write(path, write)
    return arr


# ---------------------------------------------------------------------------------------------- CMMD and FD-DINOv2


@dataclass(frozen=True)
class Embedder:
    """One network of an extra column: the column, its features' tag, a cache id that changes with the weights, and
    uint8 NCHW -> float32 [n, D] on the CPU."""

    column: str
    tag: str
    cache_id: str
    embed: Callable[[torch.Tensor], torch.Tensor]


def extra_embedders(ev: EvalConfig, device: torch.device | str) -> list[Embedder]:
    """The networks of ``eval.fd_dinov2`` and ``eval.cmmd`` (none when both are off), loaded on ``device``."""
    out = []
    if ev.fd_dinov2:
        dcfg = DinoV2Config(arch=ev.fd_dinov2, weights_file=ev.dinov2_weights)
        digest = sha256_file(find_dinov2_weights(dcfg, option="eval.dinov2_weights"))
        dnet = load_dinov2(dcfg, device)
        tag, cache_id = f"{dcfg.arch}@{digest[:8]}", f"{dcfg.arch}-{dcfg.resize}-{digest[:16]}"
        out.append(Embedder("fd_dinov2", tag, cache_id, lambda x: dinov2_features(dnet, x, dcfg.batch_size)))
    if ev.cmmd:
        ccfg = ClipConfig(weights_file=ev.clip_weights)
        path = find_clip_weights(ccfg, option="eval.clip_weights")
        cnet = load_clip(ccfg, device)
        cache_id = f"clip-vit-l-14-336-{ccfg.resize}-{sha256_file(path)[:16]}"
        out.append(Embedder("cmmd", clip_tag(path), cache_id, lambda x: clip_embeddings(cnet, x, ccfg.batch_size)))
    return out


def _embed(embedders: list[Embedder], chunks: Iterable[torch.Tensor]) -> dict[str, np.ndarray]:
    """Every embedder's float32 features of all images, in one pass over ``chunks``."""
    parts: dict[str, list[np.ndarray]] = {e.column: [] for e in embedders}
    for c in chunks:
        for e in embedders:
            parts[e.column].append(e.embed(c).float().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _extra_columns(
    embedders: list[Embedder],
    samples: dict[str, np.ndarray],
    ref_id: str,
    ref_chunks: Callable[[], Iterator[torch.Tensor]],
    root: Path,
) -> dict[str, float | str]:
    """The extra columns from the samples' embeddings and the reference's (cached; the missing ones in one pass)."""
    paths = {e.column: root / f"{safe_name(ref_id)}-{safe_name(e.cache_id)}.npy" for e in embedders}
    refs = {col: _load(path) for col, path in paths.items()}
    missing = [e for e in embedders if refs[e.column] is None]
    if missing:
        refs.update({col: _save(paths[col], f) for col, f in _embed(missing, ref_chunks()).items()})
    out: dict[str, float | str] = {}
    for e in embedders:
        ref, smp = refs[e.column], samples[e.column]
        assert ref is not None
        if e.column == "cmmd":
            out["cmmd"] = cmmd(torch.from_numpy(ref), torch.from_numpy(smp))
        else:  # FD-DINOv2: FID's Frechet distance on these features (eigenvalues; dgm-eval: scipy sqrtm)
            out[e.column] = frechet_distance(*feature_stats(smp), *feature_stats(ref))
        out[f"{e.column}_features"] = e.tag
    return out


def extra_quality(
    images: Images, real: torch.Tensor | adm.AdmBatch, cfg: RunConfig, device: torch.device | str
) -> dict[str, float | str]:
    """``cmmd`` and ``fd_dinov2`` (as ``cfg.eval`` asks; ``{}`` when neither) of uint8 samples against ``real``:
    held-out uint8 images [M, 3, H, W] or an ADM batch (its ``arr_0``), whose embeddings are cached per content and
    weights under ``<out_dir>/_cache/protocols/``."""
    embedders = extra_embedders(cfg.eval, device)
    if not embedders:
        return {}
    samples = _embed(embedders, _chunks(images))
    if isinstance(real, adm.AdmBatch):
        batch = real
        ref_id, ref_chunks = _batch_id(batch), lambda: _batch_chunks(batch)
    else:
        ref_id = ref_cache_name(real, reference_key(cfg, len(real)))
        ref_chunks = lambda: _chunks(real)  # noqa: E731
    return _extra_columns(embedders, samples, ref_id, ref_chunks, cache_dir(cfg) / "protocols")


# ---------------------------------------------------------------------------------------------- ADM


def adm_quality(
    images: Images, labels: torch.Tensor | None, cfg: RunConfig, device: torch.device | str
) -> dict[str, float | str]:
    """ADM's FID, sFID, IS, precision and recall of uint8 samples (a tensor or an iterable of chunks, read once)
    against ``eval.reference_batch``, plus the extra columns ``extra_quality`` computes (against the batch's images).

    ``labels``, the classes the samples were asked for, are checked against the sample count only: ADM's evaluator
    does not read labels. Keys: protocol, reference, features, n_samples, n_ref, fid, fid_cleanfid, fid_rel_diff,
    [fid_invalid], sfid, is_mean, precision, recall, [cmmd, cmmd_features], [fd_dinov2, fd_dinov2_features]."""
    ev = cfg.eval
    if ev.protocol != "adm" or not ev.reference_batch:
        raise ConfigError('adm_quality needs eval.protocol = "adm" and eval.reference_batch')
    if labels is not None and torch.is_tensor(images) and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} samples")
    batch = adm.read_adm_batch(ev.reference_batch)
    device = torch.device(device)
    root = cache_dir(cfg)
    extractor = load_extractor(
        "inception", train_data=None, cache_dir=root, device=device, weights_path=ev.inception_weights
    )
    net = extractor.module
    embedders = extra_embedders(ev, device)

    # 1. samples, one pass: ADM's three Inception feature sets and the extra networks' embeddings
    pools, spatials, logits = [], [], []
    extra: dict[str, list[np.ndarray]] = {e.column: [] for e in embedders}
    sizes: set[tuple[int, int]] = set()
    for c in _chunks(images):
        f = adm.adm_inception_features(net, c, batch_size=extractor.batch_size)
        pools.append(f.pool.astype(np.float32))
        spatials.append(f.spatial.astype(np.float32))
        logits.append(f.logits.astype(np.float32))
        sizes.add((int(c.shape[2]), int(c.shape[3])))
        for e in embedders:
            extra[e.column].append(e.embed(c).float().numpy())
    n = sum(len(p) for p in pools)
    if n < MIN_IMAGES:
        raise ValueError(f"need at least {MIN_IMAGES} samples for FID and precision/recall, got {n}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    if batch.image_shape is not None and sizes != {batch.image_shape[:2]}:
        log.warning(
            "samples of size %s scored against a reference batch of %s images", sorted(sizes), batch.image_shape
        )
    pool, spatial = np.concatenate(pools), np.concatenate(spatials)

    # 2. the batch's pool features (for precision/recall), cached per file content and Inception weights
    def ref_pool() -> np.ndarray:
        with progress_bar(f"Inception features of {batch.path.name}", batch.num_images) as bar:
            parts = []
            for c in _batch_chunks(batch):
                parts.append(adm.adm_inception_features(net, c, batch_size=extractor.batch_size).pool)
                bar(sum(len(p) for p in parts), batch.num_images)
        return np.concatenate(parts)

    ref_path = root / "protocols" / f"{_batch_id(batch)}-pool-{extractor.cache_id}.npy"
    ref = _load(ref_path)
    ref = _save(ref_path, ref_pool()) if ref is None else ref

    # 3. ADM's formulas; clean-fid's Frechet distance of the same statistics as a second computation
    assert batch.mu is not None and batch.sigma is not None  # read_adm_batch checked all four statistics
    fid = adm.adm_fid(pool, batch)
    pr = adm.adm_precision_recall(ref, pool, device=device)
    out: dict[str, float | str] = {
        "protocol": "adm",
        "reference": batch.path.name,
        "features": extractor.tag,
        "n_samples": n,
        "n_ref": batch.num_images,
        "fid": fid,
        **compare_fids(fid, cleanfid_fid_or_reason(*adm.adm_statistics(pool), batch.mu, batch.sigma)),
        "sfid": adm.adm_sfid(spatial, batch),
        "is_mean": adm.adm_inception_score(np.concatenate(logits), split_size=ADM_IS_SPLIT),
        "precision": pr.precision,
        "recall": pr.recall,
    }
    if embedders:
        samples = {k: np.concatenate(v) for k, v in extra.items()}
        out.update(
            _extra_columns(embedders, samples, _batch_id(batch), lambda: _batch_chunks(batch), root / "protocols")
        )
    return out


# ---------------------------------------------------------------------------------------------- export


def sample_chunks(
    run: TrainedRun,
    labels: torch.Tensor,
    settings: SampleSettings,
    *,
    seed: int,
    chunk: int,
    health: SampleHealth | None = None,
) -> Iterator[torch.Tensor]:
    """uint8 samples of ``run`` for ``labels``, ``chunk`` at a time, chunk c with seed ``seed * 1_000_003 + c``
    (``streamed_fid``'s scheme): what ``export_npz`` writes, and a stream ``adm_quality`` can score."""
    for c, start in enumerate(range(0, len(labels), chunk)):
        yield run.sample_images(labels[start : start + chunk], settings, seed=seed * 1_000_003 + c, health=health)


def export_npz(
    run: TrainedRun,
    path: str | Path,
    n: int | None = None,
    *,
    settings: SampleSettings | None = None,
    seed: int | None = None,
    chunk: int | None = None,
) -> Path:
    """Write ``n`` samples of ``run`` (default ``eval.num_samples``) as an ADM sample batch at ``path``: ``arr_0``
    uint8 [n, H, W, 3], ``arr_1`` the labels, balanced (0, 1, ..., K-1, 0, ...). Streamed: at most ``chunk``
    images (default 4 x ``sample.batch_size``) are in memory; written atomically. ``settings`` default to the run's
    ``[sample]`` setting, ``seed`` to the run's."""
    cfg = run.cfg
    n = cfg.eval.num_samples if n is None else n
    if n < 1:
        raise ConfigError(f"the number of samples to export must be >= 1, got {n}")
    settings = settings or cfg.sample.settings()
    chunk = chunk or 4 * cfg.sample.batch_size
    labels = balanced_labels(n, run.generator.num_classes)
    stream = sample_chunks(run, labels, settings, seed=cfg.seed if seed is None else seed, chunk=chunk)

    def nhwc() -> Iterator[np.ndarray]:
        done = 0
        with progress_bar(f"sampling {n} images into {Path(path).name}", n) as bar:
            for images in stream:
                done += len(images)
                bar(done, n)
                yield adm.nchw_to_nhwc(images)

    return adm.write_adm_batch(path, nhwc(), num_images=n, labels=labels.numpy())


@dataclass(frozen=True)
class ExportOutcome:
    """What ``benchkit export`` wrote. The fields are the keys of its ``--json``."""

    path: Path
    images: int
    classes: int
    settings: dict[str, Any]
    seed: int


def export_command(
    run_dir: Path,
    npz: Path,
    *,
    n: int | None = None,
    seed: int | None = None,
    overrides: list[str] | None = None,
    threads: int | None = None,
) -> ExportOutcome:
    """``benchkit export RUN --npz FILE``: load the run, apply ``sample.*`` ``overrides``, write ``n`` samples (default
    ``eval.num_samples``) as an ADM .npz (``export_npz``)."""
    npz = Path(npz)
    npz.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(npz.parent, os.W_OK):  # before minutes of sampling
        raise ConfigError(f"cannot write {str(npz)!r}: its folder is not writable")
    r = load_run(run_dir)
    apply_threads(threads if threads is not None else r.cfg.threads)
    if overrides:
        raw = r.cfg.to_dict()
        for o in overrides:
            if not o.startswith("sample."):
                raise ConfigError(f"export only accepts sample.* overrides, got {o!r}")
            apply_override(raw, o)
        r = dataclasses.replace(r, cfg=from_dict(RunConfig, raw, ""))
    seed = r.cfg.seed if seed is None else seed
    settings = r.cfg.sample.settings()
    path = export_npz(r, npz, n, settings=settings, seed=seed)
    count = r.cfg.eval.num_samples if n is None else n
    return ExportOutcome(path, count, r.generator.num_classes, dataclasses.asdict(settings), seed)
