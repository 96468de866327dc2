"""The ADM evaluation suite (Dhariwal & Nichol 2021, openai/guided-diffusion ``evaluations/evaluator.py``): its
``.npz`` batches, and FID, sFID, IS and improved precision/recall computed with its formulas on given features.

Batches: ``arr_0`` uint8 [N, H, W, 3] images (NHWC), optionally ``arr_1`` int labels; a reference batch (e.g.
``VIRTUAL_imagenet256_labeled.npz``: 10,000 images plus statistics of the whole training set) also holds ``mu``
[2048], ``sigma`` [2048, 2048] (Inception pool_3) and ``mu_s`` [2023], ``sigma_s`` [2023, 2023] (spatial features).
ADM's evaluator takes FID and sFID from those statistics and precision/recall from the features of ``arr_0``.

Features, from torch-fidelity's port of the same 2015-12-05 TF Inception graph (``FeatureExtractorInceptionV3``):
- pool: its ``"2048"`` output (ADM's ``pool_3:0``); IS logits: ``"logits_unbiased"`` (ADM multiplies pool_3 by the
  ``softmax/logits/MatMul`` weights without the bias; so does torch-fidelity).
- spatial (sFID): ADM reads ``mixed_6/conv:0``, the ReLU output of the 1x1 branch of the graph's 7th mixed block
  (17 x 17 x 192), and keeps channels 0..6, flattened in NHWC order (h, w, c): 7 * 17 * 17 = 2023 values.
  torch-fidelity's weight conversion maps ``mixed_6/conv/*`` to ``Mixed_6d.branch1x1`` (a BasicConv2d: conv, batch
  norm, ReLU), but does not expose that layer (its outputs are 64, 192, 768, 2048, logits_unbiased, logits; "768"
  is the average-pooled ``Mixed_6e`` output, not this map). ``adm_inception_features`` takes it with a forward hook
  on ``Mixed_6d.branch1x1`` and reduces it with ``adm_spatial_features``.
Both feed the images at their own size to the graph, which resizes to 299 with TF1 bilinear interpolation; torch-
fidelity reproduces that resize.

Deviations: statistics, FID and IS are computed in float64 (ADM: float32 activations); pairwise distances in float32
by default (``dtype=torch.float64`` on request), where ADM uses float16 whenever the result is finite, so precision and
recall can differ in the third decimal; they are blocked (``block`` x ``block``), so 50,000 x 10,000 features never
need a full distance matrix (measured: 3 min for 10k x 50k 2048-d features on 2 CPU cores).
"""

from __future__ import annotations

import itertools
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from benchkit.core.errors import ConfigError
from benchkit.core.files import atomic_write

POOL_DIM = 2048
SPATIAL_CHANNELS, SPATIAL_GRID = 7, 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_GRID * SPATIAL_GRID  # 2023
STAT_SHAPES = {"mu": (POOL_DIM,), "sigma": (POOL_DIM, POOL_DIM), "mu_s": (SPATIAL_DIM,), "sigma_s": (SPATIAL_DIM,) * 2}
SPATIAL_MODULE = "Mixed_6d.branch1x1"  # torch-fidelity's name of ADM's mixed_6/conv


# ---------------------------------------------------------------------------------------------- npz batches


@dataclass(frozen=True, eq=False)
class AdmBatch:
    """An ADM ``.npz`` batch: image count and shape (images are streamed, not held), statistics and labels if any."""

    path: Path
    num_images: int
    image_shape: tuple[int, int, int] | None  # (H, W, 3)
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    labels: np.ndarray | None = None

    @property
    def has_stats(self) -> bool:
        """True when the batch carries mu, sigma, mu_s and sigma_s."""
        return self.mu is not None

    def iter_images(self, batch_size: int = 500) -> Iterator[np.ndarray]:
        """uint8 NHWC arrays of at most ``batch_size`` images, read from ``arr_0`` in order without loading it all."""
        if self.image_shape is None:
            raise ConfigError(f"{self.path} holds no images (arr_0)")
        per_image = int(np.prod(self.image_shape))
        with zipfile.ZipFile(self.path) as z, z.open("arr_0.npy") as f:
            _npy_header(f, self.path)
            for start in range(0, self.num_images, batch_size):
                n = min(batch_size, self.num_images - start)
                data = f.read(n * per_image)
                if len(data) != n * per_image:
                    raise ConfigError(f"{self.path}: arr_0 ends after {start} + {len(data) // per_image} images")
                yield np.frombuffer(data, dtype=np.uint8).reshape(n, *self.image_shape)

    def load_images(self) -> np.ndarray:
        """All images, uint8 [N, H, W, 3] (N * H * W * 3 bytes of memory)."""
        parts = list(self.iter_images())
        return np.concatenate(parts) if parts else np.zeros((0, *(self.image_shape or (0, 0, 3))), np.uint8)


def _npy_header(f: IO[bytes], path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(f)
    raise ConfigError(f"{path}: arr_0.npy has an unknown .npy format version {version}")


def read_adm_batch(path: str | Path, *, need_images: bool = True, need_stats: bool = True) -> AdmBatch:
    """Read an ADM batch (a reference batch by default: images and statistics); one ConfigError line for a missing
    file, missing keys (listing those found), or arrays of the wrong shape or dtype. Images stay on disk."""
    path = Path(path)
    kind = "reference batch" if need_stats else "batch"
    if not path.is_file():
        raise ConfigError(
            f"ADM {kind} {path} not found (an .npz with arr_0 images [N,H,W,3] uint8 and mu/sigma/mu_s/"
            "sigma_s statistics, e.g. guided-diffusion's VIRTUAL_imagenet256_labeled.npz)"
        )
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"ADM {kind} {path} is not an .npz file")
    with zipfile.ZipFile(path) as z:
        found = sorted(n[: -len(".npy")] for n in z.namelist() if n.endswith(".npy"))
    required = (["arr_0"] if need_images else []) + (list(STAT_SHAPES) if need_stats else [])
    present_stats = [k for k in STAT_SHAPES if k in found]
    missing = [k for k in required if k not in found]
    if not missing and present_stats and len(present_stats) < len(STAT_SHAPES):
        missing = [k for k in STAT_SHAPES if k not in found]  # statistics come as all four or none
    if missing:
        raise ConfigError(
            f"ADM {kind} {path} lacks {', '.join(missing)}; found {', '.join(found) or 'no arrays'} (expected arr_0 "
            "images [N,H,W,3] uint8" + (" and mu, sigma, mu_s, sigma_s" if need_stats else "") + ")"
        )
    num, shape = 0, None
    if "arr_0" in found:
        with zipfile.ZipFile(path) as z, z.open("arr_0.npy") as f:
            full, fortran, dtype = _npy_header(f, path)
        if dtype != np.uint8 or len(full) != 4 or full[-1] != 3 or fortran:
            order = " (Fortran order)" if fortran else ""
            raise ConfigError(f"ADM {kind} {path}: arr_0 must be uint8 [N,H,W,3] (NHWC), got {dtype} {full}{order}")
        num, shape = int(full[0]), (int(full[1]), int(full[2]), 3)
    with np.load(path, allow_pickle=False) as npz:
        stats = {k: np.asarray(npz[k]) for k in present_stats}
        labels = np.asarray(npz["arr_1"]) if "arr_1" in found else None
    for k, arr in stats.items():
        if arr.shape != STAT_SHAPES[k] or arr.dtype.kind != "f":
            raise ConfigError(f"ADM {kind} {path}: {k} must be float {STAT_SHAPES[k]}, got {arr.dtype} {arr.shape}")
    if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (num,)):
        raise ConfigError(
            f"ADM {kind} {path}: arr_1 (labels) must be integers of shape ({num},), got {labels.dtype} {labels.shape}"
        )
    return AdmBatch(path, num, shape, labels=labels, **{k: v.astype(np.float64) for k, v in stats.items()})


def nchw_to_nhwc(images: torch.Tensor) -> np.ndarray:
    """benchkit's uint8 [N, 3, H, W] tensor -> ADM's uint8 [N, H, W, 3] array."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images [N,3,H,W], got {images.dtype} {tuple(images.shape)}")
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def _chunks(
    images: np.ndarray | Iterable[np.ndarray], num_images: int | None
) -> tuple[Iterator[np.ndarray], int, tuple]:
    """(chunks, image count, image shape) of an NHWC array or of an iterable of NHWC chunks (count given)."""
    if isinstance(images, np.ndarray):
        images, num_images = [images], len(images) if num_images is None else num_images
    if num_images is None:
        raise ValueError("num_images is required when images come as an iterable of chunks")
    it = iter(images)
    first = next(it, None)
    shape = tuple(first.shape[1:]) if isinstance(first, np.ndarray) and first.ndim == 4 else (0, 0, 3)
    return itertools.chain([] if first is None else [first], it), num_images, shape


def write_adm_batch(
    path: str | Path,
    images: np.ndarray | Iterable[np.ndarray],
    *,
    num_images: int | None = None,
    labels: np.ndarray | None = None,
    stats: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write uint8 NHWC ``images`` as an uncompressed ADM ``.npz`` (``arr_0``; ``arr_1`` = labels; ``stats`` = all of
    mu, sigma, mu_s, sigma_s for a reference batch), atomically. ``images`` may be an iterable of NHWC chunks with
    their total ``num_images``: they are streamed into the file (50,000 samples at 256 px need not fit in memory)."""
    chunks, n, shape = _chunks(images, num_images)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N,H,W,3] (NHWC; see nchw_to_nhwc), got image shape {shape}")
    arrays: dict[str, np.ndarray] = {}
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape != (n,):
            raise ValueError(f"labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
        arrays["arr_1"] = labels.astype(np.int64)
    if stats is not None:
        if sorted(stats) != sorted(STAT_SHAPES):
            raise ValueError(f"stats must hold exactly {', '.join(STAT_SHAPES)}, got {', '.join(sorted(stats))}")
        for k, v in stats.items():
            if np.shape(v) != STAT_SHAPES[k]:
                raise ValueError(f"{k} must have shape {STAT_SHAPES[k]}, got {np.shape(v)}")
            arrays[k] = np.asarray(v, dtype=np.float64)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n, *shape)}

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open("arr_0.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                written = 0
                for c in chunks:
                    if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 4 or c.shape[1:] != shape:
                        raise ValueError(f"image chunks must be uint8 [n, *{shape}] (NHWC), got {np.shape(c)}")
                    f.write(np.ascontiguousarray(c).tobytes())
                    written += len(c)
                if written != n:
                    raise ValueError(f"num_images is {n} but the chunks held {written} images")
            for name, arr in arrays.items():
                with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)

    atomic_write(Path(path), write)
    return Path(path)


# ---------------------------------------------------------------------------------------------- features


def adm_spatial_features(spatial: torch.Tensor | np.ndarray) -> np.ndarray:
    """Inception ``mixed_6/conv`` maps [N, C >= 7, 17, 17] (NCHW) -> ADM's sFID vectors [N, 2023] (same dtype): channels
    0..6, flattened in ADM's NHWC order, so entry (h * 17 + w) * 7 + c holds channel c at row h, column w."""
    x = spatial.detach().cpu().numpy() if isinstance(spatial, torch.Tensor) else np.asarray(spatial)
    if x.ndim != 4 or x.shape[1] < SPATIAL_CHANNELS or x.shape[2:] != (SPATIAL_GRID, SPATIAL_GRID):
        raise ValueError(f"expected spatial features [N, >=7, 17, 17], got {x.shape}")
    return np.ascontiguousarray(x[:, :SPATIAL_CHANNELS].transpose(0, 2, 3, 1)).reshape(len(x), SPATIAL_DIM)


class AdmFeatures(NamedTuple):
    """ADM's three feature sets of some images: pool_3 [N, 2048], spatial [N, 2023], unbiased logits [N, 1008]."""

    pool: np.ndarray
    spatial: np.ndarray
    logits: np.ndarray


@torch.inference_mode()
def adm_inception_features(inception: nn.Module, images: torch.Tensor, batch_size: int = 50) -> AdmFeatures:
    """Pool, spatial and logit features of uint8 images [N, 3, H, W] from torch-fidelity's Inception-V3 module (e.g.
    ``Extractor.module`` of the ``inception`` features: it must output ``"2048"`` and ``"logits_unbiased"``); the
    spatial map is taken by a forward hook on ``Mixed_6d.branch1x1`` (ADM's ``mixed_6/conv``)."""
    names = list(getattr(inception, "features_list", []))
    if "2048" not in names or "logits_unbiased" not in names:
        raise ValueError(f"the Inception module must output '2048' and 'logits_unbiased', has {names}")
    grabbed: list[torch.Tensor] = []
    hook = inception.get_submodule(SPATIAL_MODULE).register_forward_hook(
        lambda _m, _i, out: grabbed.append(out[:, :SPATIAL_CHANNELS].float().cpu())
    )
    device = next(inception.parameters()).device
    pools, spatials, logits = [], [], []
    try:
        for i in range(0, len(images), batch_size):
            out = dict(zip(names, inception(images[i : i + batch_size].to(device))))
            pools.append(out["2048"].double().cpu().numpy())
            logits.append(out["logits_unbiased"].double().cpu().numpy())
            spatials.append(adm_spatial_features(grabbed.pop()))
    finally:
        hook.remove()
    if not pools:
        return AdmFeatures(np.zeros((0, POOL_DIM)), np.zeros((0, SPATIAL_DIM)), np.zeros((0, 1008)))
    return AdmFeatures(np.concatenate(pools), np.concatenate(spatials), np.concatenate(logits))


# ---------------------------------------------------------------------------------------------- formulas


def adm_statistics(feats: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``np.cov(rowvar=False)``, N - 1 normalisation) of features [N, D], float64."""
    f = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def adm_frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """ADM's Frechet distance: scipy ``sqrtm`` of sigma1 sigma2; if that is not finite, retried with ``eps`` added to
    both diagonals; an imaginary part on the diagonal above 1e-3 is an error, smaller ones are dropped."""
    from scipy import linalg  # late: scipy is slow to import and only needed here

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape}/{sigma1.shape} and {mu2.shape}/{sigma2.shape}")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag)):.3g} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _ref_stats(ref: AdmBatch, spatial: bool) -> tuple[np.ndarray, np.ndarray]:
    mu, sigma = (ref.mu_s, ref.sigma_s) if spatial else (ref.mu, ref.sigma)
    if mu is None or sigma is None:
        raise ConfigError(f"{ref.path} holds no reference statistics (mu, sigma, mu_s, sigma_s)")
    return mu, sigma


def adm_fid(pool_feats: np.ndarray | torch.Tensor, ref: AdmBatch) -> float:
    """FID of sample pool features [N, 2048] against the reference batch's ``mu`` / ``sigma``."""
    return adm_frechet_distance(*adm_statistics(pool_feats), *_ref_stats(ref, spatial=False))


def adm_sfid(spatial_feats: np.ndarray | torch.Tensor, ref: AdmBatch) -> float:
    """sFID of sample spatial features [N, 2023] (``adm_spatial_features``) against ``mu_s`` / ``sigma_s``."""
    return adm_frechet_distance(*adm_statistics(spatial_feats), *_ref_stats(ref, spatial=True))


def adm_inception_score(logits: np.ndarray | torch.Tensor, split_size: int = 5000) -> float:
    """ADM's IS: softmax of the unbiased logits, exp(mean_x KL(p(y|x) || p(y))) in consecutive chunks of
    ``split_size`` samples (the last one may be smaller), averaged over chunks (no std)."""
    z = logits.detach().cpu().double().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits, np.float64)
    if z.ndim != 2 or len(z) == 0:
        raise ValueError(f"logits must be [N, K] with N >= 1, got {z.shape}")
    logp = z - z.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    scores = []
    for i in range(0, len(z), split_size):
        lp = logp[i : i + split_size]
        p = np.exp(lp)
        kl = (p * (lp - np.log(p.mean(axis=0, keepdims=True)))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores))


def _tensor(x: np.ndarray | torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    t = torch.as_tensor(x).to(device=device, dtype=dtype)
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(t.shape)}")
    return t


def _sqdist(a: torch.Tensor, an: torch.Tensor, b: torch.Tensor, bn: torch.Tensor) -> torch.Tensor:
    """Squared distances ||a_i||^2 - 2 a_i.b_j + ||b_j||^2, clamped at 0 (as ADM)."""
    return (an[:, None] - 2.0 * (a @ b.T) + bn[None, :]).clamp_min_(0)


def manifold_radii(
    feats: np.ndarray | torch.Tensor,
    k: int = 3,
    *,
    block: int = 4096,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Squared k-NN radius of every feature vector [N, D] within its own set: the (k+1)-th smallest squared distance
    of its row, the point itself (distance 0) counted first, as ADM's ``manifold_radii``. Blocked: memory O(block^2)."""
    x = _tensor(feats, dtype, device)
    if len(x) <= k:
        raise ValueError(f"need more than k = {k} feature vectors for k-NN radii, got {len(x)}")
    xn = (x * x).sum(1)
    radii = torch.empty(len(x), dtype=dtype, device=x.device)
    for i in range(0, len(x), block):
        best: torch.Tensor | None = None
        for j in range(0, len(x), block):
            d = _sqdist(x[i : i + block], xn[i : i + block], x[j : j + block], xn[j : j + block])
            d = d if best is None else torch.cat([best, d], dim=1)
            best = d.topk(min(k + 1, d.shape[1]), dim=1, largest=False, sorted=True).values
        assert best is not None
        radii[i : i + block] = best[:, k]
    return radii


class PrecisionRecall(NamedTuple):
    """Improved precision (share of samples inside the reference manifold) and recall (share of references inside the
    sample manifold)."""

    precision: float
    recall: float


def adm_precision_recall(
    ref_feats: np.ndarray | torch.Tensor,
    sample_feats: np.ndarray | torch.Tensor,
    k: int = 3,
    *,
    block: int = 4096,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> PrecisionRecall:
    """Improved precision/recall (Kynkaanniemi et al. 2019, arXiv 1904.06991) with k = 3 as ADM: a sample is in the
    reference manifold when its squared distance to some reference point is <= that point's squared k-NN radius
    (``manifold_radii``); recall swaps the roles. Blocked over both sets; memory O(block^2), not O(N * M)."""
    ref, smp = _tensor(ref_feats, dtype, device), _tensor(sample_feats, dtype, device)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"feature widths differ: {ref.shape[1]} and {smp.shape[1]}")
    r_ref = manifold_radii(ref, k, block=block, dtype=dtype, device=device)
    r_smp = manifold_radii(smp, k, block=block, dtype=dtype, device=device)
    rn, sn = (ref * ref).sum(1), (smp * smp).sum(1)
    smp_in = torch.zeros(len(smp), dtype=torch.bool, device=smp.device)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)
    for i in range(0, len(ref), block):
        for j in range(0, len(smp), block):
            d = _sqdist(ref[i : i + block], rn[i : i + block], smp[j : j + block], sn[j : j + block])
            smp_in[j : j + block] |= (d <= r_ref[i : i + block, None]).any(dim=0)
            ref_in[i : i + block] |= (d <= r_smp[None, j : j + block]).any(dim=1)
    return PrecisionRecall(float(smp_in.double().mean()), float(ref_in.double().mean()))
