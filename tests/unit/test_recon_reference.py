"""PSNR and SSIM against torchmetrics (a test-only reference): PSNR is identical; torchmetrics' SSIM averages its
map over reflect-padded borders as well, so the comparison crops its full map to the positions the 11x11 window
covers without padding (Wang et al.'s and benchkit's convention), where the two agree."""

from __future__ import annotations

import pytest
import torch

from benchkit.metrics.recon import psnr_per_image, ssim_per_image

functional = pytest.importorskip("torchmetrics.functional.image", reason="torchmetrics is in the test extra")


def _pair(seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(4, 3, 32, 40, generator=g) * 255).round().to(torch.uint8)
    b = (a.float() + torch.randn(a.shape, generator=g) * noise).clamp(0, 255).round().to(torch.uint8)
    return a, b


@pytest.mark.parametrize("noise", [3.0, 20.0, 80.0])
def test_psnr_and_ssim_match_torchmetrics(noise: float) -> None:
    a, b = _pair(int(noise), noise)
    ref_psnr = functional.peak_signal_noise_ratio(
        b.double(), a.double(), data_range=255.0, reduction="none", dim=(1, 2, 3)
    )
    assert torch.allclose(psnr_per_image(a, b), ref_psnr, rtol=1e-6)
    _, full = functional.structural_similarity_index_measure(
        b.double(), a.double(), data_range=255.0, sigma=1.5, return_full_image=True, reduction="none"
    )
    valid = full[..., 5:-5, 5:-5].reshape(len(a), -1).mean(-1)  # 11x11 window: 5 padded positions per side
    assert torch.allclose(ssim_per_image(a, b), valid, atol=1e-6)
