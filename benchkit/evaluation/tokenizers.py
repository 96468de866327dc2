"""Measure a trained tokenizer: reconstructions of held-out images (rFID, PSNR, SSIM, LPIPS when installed),
codebook usage and perplexity, bits per image, encode and decode speed; one row appended to the results."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from benchkit.core import distributed as bdist
from benchkit.core.config import RunConfig
from benchkit.core.identity import fingerprint
from benchkit.data.base import ImageData, to_float, to_uint8
from benchkit.evaluation.evaluate import identity_fields, next_device, row_lock
from benchkit.metrics import cost
from benchkit.metrics.configured import cache_dir, config_extractor, reference_key
from benchkit.metrics.perceptual import load_lpips, lpips_per_image, lpips_unavailable
from benchkit.metrics.quality import generation_metrics
from benchkit.metrics.recon import bits_per_image, codebook_usage, psnr, ssim
from benchkit.results.store import append_row, has_row
from benchkit.sampling.grids import reconstruction_grid
from benchkit.training.artifacts import TrainedTokenizer, model_meta

log = logging.getLogger(__name__)


def evaluate_tokenizer(
    tok: TrainedTokenizer,
    cfg: RunConfig,
    train: ImageData,
    test: ImageData,
    results_dir: Path,
    *,
    skip_done: bool = True,
) -> dict[str, Any] | None:
    """Reconstruction quality (rFID with the generation features, PSNR, SSIM, LPIPS when its weights are present),
    codebook use, size and speed."""
    row_id = fingerprint("tok-row", tok.fingerprint, cfg.eval.features, cfg.eval.num_samples, cfg.eval.num_reference)
    if not bdist.is_main():
        return None
    with FileLock(str(row_lock(results_dir, row_id))):  # sweep shards sharing a tokenizer measure it once
        if skip_done and has_row(results_dir, row_id):
            return None
        return _measure_tokenizer(tok, cfg, train, test, results_dir, row_id)


def _lpips(recon: torch.Tensor, originals: torch.Tensor, cfg: RunConfig, device: torch.device) -> dict[str, float]:
    """``{"lpips": mean LPIPS}`` of the reconstructions when its weights are on disk, else ``{}`` and one log line
    saying which file to put where (the table then shows no lpips column, or ``-`` in this row)."""
    reason = lpips_unavailable(path=cfg.eval.lpips_weights)
    if reason is not None:
        log.info("no lpips in the tokenizer table: %s", reason)
        return {}
    model = load_lpips(path=cfg.eval.lpips_weights, device=device)
    return {"lpips": float(lpips_per_image(model, recon, originals).mean())}


def _measure_tokenizer(
    tok: TrainedTokenizer, cfg: RunConfig, train: ImageData, test: ImageData, results_dir: Path, row_id: str
) -> dict[str, Any]:
    """The tokenizer row (rank 0, under the row's lock)."""
    module, device = tok.module, next_device(cfg)
    n = min(cfg.eval.num_reference, len(test))
    originals = test.images[:n]
    recons, ids = [], []
    kinds = list(module.specs)
    with torch.no_grad():
        for i in range(0, n, 250):
            x = to_float(originals[i : i + 250]).to(device)
            recons.append(to_uint8(module.reconstruct(x)).cpu())
            if "discrete" in kinds:
                ids.append(module.encode(x, "discrete").cpu())
    recon = torch.cat(recons)
    extractor = config_extractor(cfg, train)
    quality = generation_metrics(
        recon,
        originals,
        extractor,
        cache_dir=cache_dir(cfg),
        ref_key=reference_key(cfg, n),
        labels=None,
        prc=False,
        device=device,
    )
    native = kinds[0]
    spec = module.specs[native]
    row: dict[str, Any] = {
        "row_id": row_id,
        "kind": "tokenizer",
        "run": tok.dir.name,
        "tokenizer": cfg.tokenizer.name,
        "token_kind": "/".join(kinds),
        "grid": f"{spec.grid[0]}x{spec.grid[1]}x{spec.depth}",
        "rfid": quality.get("fid"),
        "rfid_cleanfid": quality.get("fid_cleanfid"),
        "rfid_invalid": quality.get("fid_invalid"),
        "features": quality.get("features"),
        "protocol": "benchkit",  # reconstructions are always scored against held-out images
        "reference": reference_key(cfg, n),
        "n_samples": n,
        "psnr": float(psnr(recon, originals)),
        "ssim": float(ssim(recon, originals)),
        **_lpips(recon, originals, cfg, device),
        "params": cost.count_params(module),
        "config_fingerprint": tok.fingerprint,
        **identity_fields(cfg),
    }
    if ids:
        dspec = module.specs["discrete"]
        usage = codebook_usage(torch.cat(ids), dspec.vocab_size)
        row.update({k.replace("codebook_perplexity", "perplexity"): v for k, v in usage.items()})
        row["bits_per_image"] = bits_per_image(dspec.positions, dspec.depth, dspec.vocab_size)
    x = to_float(originals[: cfg.eval.cost_batch_size]).to(device)
    with torch.no_grad():
        tokens = module.encode(x, native)
        row["encode_images_per_s"] = cost.throughput(
            lambda: module.encode(x, native), batch_size=len(x), warmup=1, repeats=cfg.eval.cost_repeats
        )
        row["decode_images_per_s"] = cost.throughput(
            lambda: module.decode(tokens, native), batch_size=len(x), warmup=1, repeats=cfg.eval.cost_repeats
        )
    meta = model_meta(tok.dir)
    if meta:
        row.update(train_images_per_s=meta.get("train_images_per_s"), train_time_s=meta.get("train_time_s"))
    append_row(results_dir, row)
    reconstruction_grid(originals[:32], recon[:32], tok.dir / "reconstructions.png")
    return row
