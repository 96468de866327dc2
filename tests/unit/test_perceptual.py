"""LPIPS, the optional tokenizer metric and loss (benchkit.metrics.perceptual), from local files only: a random-weight
AlexNet checkpoint written into a temporary TORCH_HOME stands in for torchvision's, so nothing is downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from benchkit.core.config import TrainConfig, resolve
from benchkit.core.errors import ConfigError
from benchkit.core.registry import TOKENIZERS
from benchkit.metrics.perceptual import BACKBONE_FILES, load_lpips, lpips_loss, lpips_per_image, lpips_unavailable

pytest.importorskip("lpips", reason="the lpips package is in the test extra (pip install 'benchkit[lpips]')")

# torchvision AlexNet's feature convolutions: index in ``features`` -> (in, out, kernel)
ALEXNET_CONVS = {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3), 10: (256, 256, 3)}


@pytest.fixture()
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub: LPIPS looks for its backbone in <TORCH_HOME>/hub/checkpoints."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints" / BACKBONE_FILES["alex"]


def write_alexnet(path: Path) -> dict[str, torch.Tensor]:
    """A random-weight checkpoint with torchvision AlexNet's feature layers (the ones LPIPS reads)."""
    torch.manual_seed(0)
    state = {}
    for i, (cin, cout, k) in ALEXNET_CONVS.items():
        conv = nn.Conv2d(cin, cout, k)
        state[f"features.{i}.weight"], state[f"features.{i}.bias"] = conv.weight.detach(), conv.bias.detach()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    """Smooth random 32x32 images in [-1, 1] (an upsampled 8x8 grid)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)


def test_missing_weights_give_one_line_naming_the_file_and_where(torch_home: Path) -> None:
    reason = lpips_unavailable()
    assert reason is not None and f"put {BACKBONE_FILES['alex']} at {torch_home}" in reason
    assert "never downloads" in reason and "\n" not in reason
    with pytest.raises(ConfigError, match="alexnet-owt-7be5be79.pth at .*torch/hub/checkpoints"):
        load_lpips()
    with pytest.raises(ConfigError, match="alexnet-owt-7be5be79.pth"):
        lpips_loss(0.5)
    given = torch_home.parent / "mine.pth"
    assert f"at {given}" in str(lpips_unavailable(path=str(given)))
    tok = TOKENIZERS.create("vq", image_size=32, ch=8, codebook_size=32).eval()
    x = images(2)
    torch.manual_seed(1)
    plain = lpips_loss(0.0)(tok, x)  # weight 0: the tokenizer's own loss, nothing loaded
    torch.manual_seed(1)
    assert torch.equal(plain.loss, tok.loss(x).loss) and "lpips" not in plain.logs


def test_lpips_is_zero_for_identical_images_and_grows_with_distortion(torch_home: Path) -> None:
    state = write_alexnet(torch_home)
    assert lpips_unavailable() is None
    model = load_lpips()
    assert torch.equal(
        model.net.state_dict()["slice2.3.weight"], state["features.3.weight"]
    )  # the file's backbone, not a random one
    x = images()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    d = [float(lpips_per_image(model, x, (x + s * noise).clamp(-1, 1)).mean()) for s in (0.0, 0.05, 0.2, 0.8)]
    assert d[0] == 0.0 and d[1] > 0 and d == sorted(d) and d[3] > 2 * d[1], d
    as_uint8 = ((x + 1) * 127.5).round().to(torch.uint8)
    assert lpips_per_image(model, as_uint8, as_uint8).abs().max() == 0


def test_lpips_loss_adds_the_weighted_term_and_reaches_the_encoder(torch_home: Path) -> None:
    write_alexnet(torch_home)
    tok = TOKENIZERS.create("kl", image_size=32, ch=8).eval()
    x, loss = images(2), lpips_loss(0.5)
    torch.manual_seed(3)  # the same posterior sample in both calls
    out = loss(tok, x)
    torch.manual_seed(3)
    base = tok.loss(x)
    assert out.logs["lpips"] > 0
    assert out.loss.item() == pytest.approx(base.loss.item() + 0.5 * out.logs["lpips"], rel=1e-6)
    out.loss.backward()
    assert tok.encoder.conv_in.weight.grad is not None and tok.encoder.conv_in.weight.grad.abs().sum() > 0


def test_tokenizer_table_gets_an_lpips_column_only_with_the_weights(torch_home: Path) -> None:
    from benchkit.evaluation.tokenizers import _lpips
    from benchkit.results.tables import table_columns

    cfg = resolve("tiny")
    x = ((images() + 1) * 127.5).round().to(torch.uint8)
    assert _lpips(x, x, cfg, torch.device("cpu")) == {}
    write_alexnet(torch_home)
    assert _lpips(x, x, cfg, torch.device("cpu")) == {"lpips": 0.0}
    rows = pd.DataFrame([{"kind": "tokenizer", "tokenizer": "vq", "ssim": 0.9, "lpips": 0.1, "params": 5}])
    assert table_columns(rows, kind="tokenizer", provenance=False) == ["tokenizer", "ssim", "lpips", "params"]
    rows["lpips"] = None
    assert "lpips" not in table_columns(rows, kind="tokenizer", provenance=False)


def test_lpips_weight_is_a_checked_tokenizer_training_option() -> None:
    from benchkit.training.artifacts import run_fingerprint, tokenizer_fingerprint

    base = resolve("tiny")
    off = resolve("tiny", overrides=["tokenizer_train.lpips_weight=0"])
    on = resolve("tiny", overrides=["tokenizer_train.lpips_weight=0.1"])
    assert "lpips_weight" not in TrainConfig().identity()  # 0 (off) keeps the fingerprints made before the option
    assert tokenizer_fingerprint(base) == tokenizer_fingerprint(off) != tokenizer_fingerprint(on)
    assert run_fingerprint(base) != run_fingerprint(on)
    with pytest.raises(ConfigError, match="lpips_weight must be >= 0"):
        resolve("tiny", overrides=["tokenizer_train.lpips_weight=-1"])
    with pytest.raises(ConfigError, match="train.lpips_weight applies to tokenizer training only"):
        resolve("tiny", overrides=["train.lpips_weight=0.5"])


def test_train_tokenizer_refuses_an_lpips_weight_without_the_weights(
    torch_home: Path, tmp_path: Path, run_cli: Callable[[list[str]], tuple[int, str, str]]
) -> None:
    code, out, err = run_cli(
        [
            "train-tokenizer",
            "vq",
            "--out-dir",
            str(tmp_path / "out"),
            "--no-progress",
            "--set",
            "data.options={num_train = 64, num_test = 64}",
            "--set",
            "tokenizer.options.ch=8",
            "--set",
            "tokenizer_train.lpips_weight=0.5",
        ]
    )
    assert code == 2 and f"put {BACKBONE_FILES['alex']} at {torch_home}" in err, err
    assert not list((tmp_path / "out").rglob("*.safetensors"))  # refused before any training step
