"""Generation quality: FID, IS, KID and precision/recall through torch-fidelity, FID and KID again through clean-fid.

- FID (Heusel et al. 2017, arXiv 1706.08500): ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)) of Gaussian fits
  to the features of samples and held-out images.
- IS (Salimans et al. 2016, arXiv 1606.03498): exp E_x KL(p(y|x) || p(y)), mean and std over ``isc_splits`` chunks.
- KID (Binkowski et al. 2018, arXiv 1801.01401): unbiased MMD^2 with kernel (x.y/d + 1)^3 over 100 random subsets.
- Precision/recall (Kynkaanniemi et al. 2019, arXiv 1904.06991): k=3 nearest-neighbour balls in feature space.
- FID-infinity (Chong & Forsyth 2020, arXiv 1911.07023): FID is biased in 1/N; fit FID_N = a + b/N over several
  subset sizes and report the intercept a. It and the Frechet distance itself live in ``benchkit.metrics.frechet``.

torch-fidelity (https://github.com/toshas/torch-fidelity, v0.4.0) gets the images as in-memory uint8 Datasets and the
feature network registered by ``benchkit.metrics.features``. clean-fid (https://github.com/GaParmar/clean-fid, 0.1.35)
recomputes FID with ``frechet_distance`` (scipy sqrtm instead of torch-fidelity's eigenvalues) and KID with
``kernel_distance`` on features from benchkit's own pass through the same network; the two FIDs must agree
(``fid_rel_diff``), which catches a stale cache, a wrong layer or a resize slipping in.

Deviations:
- clean-fid's folder and generator pipelines are not used: they resize to 299 even for custom networks and cannot use
  a custom network for KID. Its metric functions get features from the same network with no resize instead.
- Reference features and statistics of the held-out images are cached by benchkit, keyed by ``ref_key``, a content
  hash of the images, their count and the network's weights hash; torch-fidelity's own cache gets the same key.
- Precision/recall use the same network's features as FID (torch-fidelity's default and the paper's are VGG-16
  fc2, whose weights would need a download).
- FID-infinity spaces subset sizes from N/5 to N (the paper: 5k to 50k, N/10 to N), since N is small here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from benchkit.core.files import atomic_write
from benchkit.core.progress import progress_bar
from benchkit.metrics.features import Extractor, content_hash, safe_name
from benchkit.metrics.frechet import feature_stats, fid_infinity

log = logging.getLogger(__name__)

FIDELITY_KEYS = {
    "fid": "frechet_inception_distance",
    "is_mean": "inception_score_mean",
    "is_std": "inception_score_std",
    "kid_mean": "kernel_inception_distance_mean",
    "kid_std": "kernel_inception_distance_std",
    "precision": "precision",
    "recall": "recall",
    "f_score": "f_score",
}
MIN_IMAGES = 5  # precision/recall need k+1 = 4 neighbours; FID needs a covariance


class _Uint8Images(Dataset):
    """uint8 [N,3,H,W] as a Dataset of [3,H,W] tensors (what torch-fidelity's extractors accept)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def _check_images(x: torch.Tensor, name: str) -> None:
    if not torch.is_tensor(x) or x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        got = f"{x.dtype} {tuple(x.shape)}" if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} images must be uint8 [N,3,H,W] (use benchkit.data.base.to_uint8), got {got}")
    if len(x) < MIN_IMAGES:
        raise ValueError(f"{name}: need at least {MIN_IMAGES} images for FID/KID/precision-recall, got {len(x)}")


# ---------------------------------------------------------------------------------------------- reference cache


class RefStats(NamedTuple):
    """Features [M,D] float32 and Gaussian statistics (float64) of the reference images, with their cache file."""

    feats: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray
    path: Path
    loaded: bool  # True when read from the cache file


def ref_cache_name(real: torch.Tensor, ref_key: str) -> str:
    """``<ref_key>-n<M>-<content hash>``: the reference's identity, without the network."""
    return f"{safe_name(ref_key)}-n{len(real)}-{content_hash(real)[:12]}"


def reference_stats(real: torch.Tensor, extractor: Extractor, *, cache_dir: Path, ref_key: str) -> RefStats:
    """Features and statistics of the held-out images, cached per (ref_key, images, count, network weights)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = Path(cache_dir) / "ref_stats"
    path = root / f"{ref_cache_name(real, ref_key)}-{extractor.cache_id}.safetensors"
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                feats, mu, sigma = f.get_tensor("feats"), f.get_tensor("mu"), f.get_tensor("sigma")
            log.debug("reference statistics loaded from %s", path)
            return RefStats(feats, mu.numpy(), sigma.numpy(), path, True)
        except Exception as e:  # a truncated cache entry is recomputed, not fatal
            log.warning("reference cache %s is unreadable (%s); recomputing", path, e)
    feats = extractor.features(real)
    mu, sigma = feature_stats(feats)
    meta = {
        "ref_key": ref_key,
        "features": extractor.tag,
        "weights_sha256": extractor.weights_hash,
        "n": str(len(real)),
    }
    tensors = {"feats": feats.contiguous(), "mu": torch.from_numpy(mu), "sigma": torch.from_numpy(sigma)}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
    return RefStats(feats, mu, sigma, path, False)


# ---------------------------------------------------------------------------------------------- the two back-ends


def fidelity_metrics(**kwargs: Any) -> dict[str, float]:
    """``torch_fidelity.calculate_metrics``, refusing option names it does not know (it ignores them silently)."""
    import torch_fidelity
    from torch_fidelity.defaults import DEFAULTS

    unknown = sorted(k for k in kwargs if k not in DEFAULTS)
    assert not unknown, f"torch-fidelity would silently ignore {unknown}"
    return dict(torch_fidelity.calculate_metrics(**kwargs))


def cleanfid_fid(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """clean-fid's ``frechet_distance`` (scipy sqrtm); NaN if it fails (``cleanfid_fid_or_reason`` says why)."""
    return cleanfid_fid_or_reason(mu1, sigma1, mu2, sigma2)[0]


def cleanfid_fid_or_reason(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> tuple[float, str]:
    """(clean-fid's FID, "") or (NaN, why it failed); its warnings and prints go to the debug log."""
    from cleanfid import fid as cfid
    from scipy.linalg import LinAlgWarning

    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            # SciPy 1.17 deprecates sqrtm(disp=...), which clean-fid 0.1.35 passes; singular products warn too.
            warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
            warnings.simplefilter("ignore", LinAlgWarning)
            value = float(cfid.frechet_distance(mu1, sigma1, mu2, sigma2))
    except TypeError as e:  # SciPy >= 1.18 removed `disp`
        return float("nan"), f"clean-fid failed ({e}); it needs scipy<1.18"
    except ValueError as e:  # "Imaginary component X": its sqrtm check has an absolute tolerance of 1e-3
        return float("nan"), f"clean-fid's sqrtm failed ({e}): the covariance product is ill-conditioned"
    if printed.getvalue().strip():
        log.debug("clean-fid: %s", printed.getvalue().strip())
    return value, ""


def compare_fids(fid: float, cleanfid: tuple[float, str]) -> dict[str, float | str]:
    """Check torch-fidelity's FID against clean-fid's ``(value, failure reason)``.

    Returns ``fid_cleanfid`` and ``fid_rel_diff``, plus ``fid_invalid`` (the reason) when the two are not the same
    number within 1e-3 relative: clean-fid failed, either is not finite, or they disagree. Then both FIDs of the
    row are untrustworthy (degenerate statistics, or a bug); one warning line says so.
    """
    value, reason = cleanfid
    out: dict[str, float | str] = {"fid_cleanfid": value, "fid_rel_diff": abs(fid - value) / max(abs(fid), 1e-12)}
    if not reason and not (math.isfinite(fid) and math.isfinite(value)):
        reason = f"non-finite FID (torch-fidelity {fid:.6g}, clean-fid {value:.6g})"
    elif not reason and not abs(fid - value) <= 1e-3 * abs(fid) + 1e-6:
        reason = (
            f"torch-fidelity FID {fid:.6g} and clean-fid FID {value:.6g} disagree "
            f"(relative difference {out['fid_rel_diff']:.2g})"
        )
    if reason:
        out["fid_invalid"] = reason
        log.warning("FID not valid: %s (torch-fidelity gave %.6g)", reason, fid)
    return out


def cleanfid_kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    subset_size: int,
    seed: int,
    subsets: int = 100,
    dtype: type[np.floating] = np.float32,
) -> float:
    """clean-fid's ``kernel_distance`` with the global numpy RNG seeded, then restored, on features of ``dtype``:
    float32 by default, as clean-fid's own ``compute_kid`` passes them (float64 gives the same value up to rounding,
    slower: ``benchmarks/metric_costs.py``)."""
    from cleanfid import fid as cfid

    a, b = np.asarray(feats1, dtype=dtype), np.asarray(feats2, dtype=dtype)
    state = np.random.get_state()
    np.random.seed(seed)  # clean-fid draws subsets from the unseeded global RNG
    try:
        return float(cfid.kernel_distance(a, b, num_subsets=subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


def class_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """Overall accuracy of argmax(logits [N,K]) against labels [N], and per class (NaN where a class has none)."""
    pred = logits.argmax(dim=1).cpu()
    labels = labels.cpu().long()
    hit = (pred == labels).double()
    per_class = []
    for k in range(logits.shape[1]):
        mask = labels == k
        per_class.append(float(hit[mask].mean()) if mask.any() else float("nan"))
    return float(hit.mean()), per_class


# ---------------------------------------------------------------------------------------------- main entry


def generation_metrics(
    fake: torch.Tensor,
    real: torch.Tensor,
    extractor: Extractor,
    *,
    cache_dir: Path,
    ref_key: str,
    labels: torch.Tensor | None = None,
    kid_subset_size: int | None = None,
    prc: bool = True,
    device: torch.device,
    isc_splits: int = 10,
    kid_subsets: int = 100,
    fid_inf: bool = False,
    clean_fid: bool = True,
    seed: int = 2020,
) -> dict[str, float | str]:
    """FID, IS, KID, precision/recall (torch-fidelity), FID/KID (clean-fid), class accuracy of uint8 samples.

    ``fake`` uint8 [N,3,H,W] are the samples, ``real`` uint8 [M,3,H,W] the held-out reference, named ``ref_key`` in
    the caches; ``labels`` [N] are the classes the samples were asked for. Keys: features, n_samples, n_ref, fid,
    [is_mean, is_std, isc_splits], kid_mean, kid_std, kid_subset_size, [precision, recall, f_score], [fid_cleanfid,
    kid_cleanfid, fid_rel_diff], [class_acc, class_acc_min], [fid_inf]. A network without logits (``extractor.
    has_logits`` False: DINOv2) gives no IS and no class accuracy: those keys are absent, not NaN.
    """
    _check_images(fake, "fake")
    _check_images(real, "real")
    if fake.shape[1:] != real.shape[1:]:
        raise ValueError(f"fake {tuple(fake.shape[1:])} and real {tuple(real.shape[1:])} images differ in size")
    fake, real = fake.cpu(), real.cpu()  # torch-fidelity's loader pins and moves batches itself
    n, m = len(fake), len(real)
    device = torch.device(device)
    kid_size = min(1000 if kid_subset_size is None else kid_subset_size, n, m)
    if kid_subset_size is not None and kid_size < kid_subset_size:
        log.info("KID subset size %d > images (%d samples, %d reference); using %d", kid_subset_size, n, m, kid_size)
    splits = max(1, min(isc_splits, n // 2))
    cache_dir = Path(cache_dir)

    with progress_bar(f"features and statistics of {n} samples, {m} references", 3) as bar:
        # 1. torch-fidelity on in-memory uint8 Datasets; the reference's cache name holds its content hash and the
        #    network's name holds the weights hash, so no cached entry can belong to other images or weights.
        tf = fidelity_metrics(
            input1=_Uint8Images(fake),
            input2=_Uint8Images(real),
            isc=extractor.has_logits,  # a network without logits (DINOv2) gives no IS
            fid=True,
            kid=True,
            prc=prc,
            **extractor.fidelity_kwargs(),
            cuda=device.type == "cuda",
            batch_size=extractor.batch_size,
            save_cpu_ram=True,
            verbose=False,
            isc_splits=splits,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_size,
            cache=True,
            cache_root=str(cache_dir / "fidelity"),
            rng_seed=seed,
            input2_cache_name=f"benchkit-{ref_cache_name(real, ref_key)}",
        )
        out: dict[str, float | str] = {"features": extractor.tag, "n_samples": n, "n_ref": m}
        for key, tf_key in FIDELITY_KEYS.items():
            if tf_key in tf:
                out[key] = float(tf[tf_key])
        if extractor.has_logits:
            out["isc_splits"] = splits
        out["kid_subset_size"] = kid_size
        bar(1, 3)

        # 2. benchkit's own pass through the same network: sample features and logits, cached reference statistics
        ref = reference_stats(real, extractor, cache_dir=cache_dir, ref_key=ref_key)
        bar(2, 3)
        fake_feats, fake_logits = extractor.features_and_logits(fake)
        bar(3, 3)
        mu, sigma = feature_stats(fake_feats)

        # 3. clean-fid on those features: an independent FID (scipy sqrtm) and KID
        if clean_fid:
            out.update(compare_fids(float(out["fid"]), cleanfid_fid_or_reason(mu, sigma, ref.mu, ref.sigma)))
            out["kid_cleanfid"] = cleanfid_kid(fake_feats.numpy(), ref.feats.numpy(), kid_size, seed, kid_subsets)

        # 4. class accuracy of the dataset classifier on the samples, against the requested labels
        if labels is not None and extractor.num_classes is not None and fake_logits is not None:
            labels = torch.as_tensor(labels).cpu().long()
            if labels.shape != (n,):
                raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
            if labels.min() < 0 or labels.max() >= extractor.num_classes:
                raise ValueError(f"labels must lie in [0, {extractor.num_classes}) for features {extractor.tag}")
            overall, per_class = class_accuracy(fake_logits, labels)
            out["class_acc"] = overall
            out["class_acc_min"] = min(a for a in per_class if a == a)  # the worst requested class (NaN: not requested)

        # 5. optional FID-infinity against the cached reference statistics
        if fid_inf:
            out["fid_inf"] = fid_infinity(fake_feats, ref.mu, ref.sigma, seed=seed).fid_inf
    return out
