"""``benchkit import`` as a user runs it: the written directories load with ``load_run``, keep the official outputs,
record their provenance, and ``benchkit sample`` draws a PNG grid from them."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from benchkit.core.registry import TOKENIZERS
from benchkit.importers import kl16
from benchkit.importers.api import imported_provenance

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "official"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def imported(run_cli, args: list[str]) -> Path:  # type: ignore[no-untyped-def]
    code, out, err = run_cli(["import", *args])
    assert code == 0, err
    assert "imported" in err and "sha256" in err
    return Path(out.strip().splitlines()[-1])


def check_png(path: Path, rows: int, cols: int, side: int) -> None:
    with Image.open(path) as im:
        im.load()
        assert im.mode == "RGB" and im.width >= cols * side and im.height >= rows * side, im.size


@pytest.mark.slow
def test_rq_stage1_and_stage2_import_then_sample(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from benchkit.training.loading import load_run

    tok = imported(run_cli, ["rqvae", str(FIX / "rq" / "stage1" / "model.pt"), "--out-dir", str(tmp_path)])
    run = imported(run_cli, ["rqtransformer", str(FIX / "rq" / "stage2" / "model.pt"), "--tokenizer", str(tok)])
    assert run.parent == tmp_path / "runs" and (run / "config.json").is_file() and (run / "env.json").is_file()
    prov = imported_provenance(run)
    assert prov["sha256"] == sha256(FIX / "rq" / "stage2" / "model.pt")
    assert (prov["container_key"], prov["ema"]) == ("state_dict", False)
    assert prov["arch_from"].endswith("config.yaml")
    # the stored run still gives the official logits
    r = load_run(run)
    io = load_file(FIX / "rq" / "stage2" / "io.safetensors")
    with torch.no_grad():
        z = r.generator(io["codes"].reshape(2, 64, 4), io["labels"])
        logits = r.generator.head(z).reshape(io["logits"].shape)
    assert (logits - io["logits"]).abs().max().item() <= 1e-4
    code, out, err = run_cli(["sample", str(run), "--per-class", "1"])
    assert code == 0, err
    check_png(Path(out.strip().splitlines()[-1]), rows=10, cols=1, side=32)


def official_kl_file(path: Path) -> Path:
    """A KL autoencoder in the released container and layout that yields MAR-fixture tokens (128 px -> 8x8x16);
    seeded random weights: it only gives the MAR fixture a tokenizer to sample through."""
    torch.manual_seed(0)
    tok = TOKENIZERS.create(
        "kl", image_size=128, backbone="ldm", ch=32, channel_mult=(1, 1, 1, 1, 1), num_res_blocks=1, z_channels=16
    )
    torch.save({"model": kl16.to_official(tok.state_dict())}, path)
    return path


@pytest.mark.slow
def test_kl_and_mar_import_then_sample(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    from benchkit.training.loading import load_run

    ckpt = official_kl_file(tmp_path / "kl.ckpt")
    tok = imported(run_cli, ["kl16", str(ckpt), "--image-size", "128", "--out-dir", str(tmp_path / "res")])
    assert json.loads((tok / "import.json").read_text())["arch_from"] == "checkpoint shapes"
    mar_file = FIX / "mar" / "checkpoint-last.pth"
    run = imported(
        run_cli, ["mar", str(mar_file), "--tokenizer", str(tok), "--arch", str(FIX / "mar" / "fixture.json")]
    )
    prov = imported_provenance(run)
    assert (prov["container_key"], prov["ema"], prov["sha256"]) == ("model_ema", True, sha256(mar_file))
    r = load_run(run)
    assert r.cfg.sample.steps == 64 and r.cfg.sample.diffusion_steps == 100 and r.cfg.sample.cfg_schedule == "linear"
    assert r.tokenizer.module.scale.item() == pytest.approx(kl16.MAR_SCALE)
    io = load_file(FIX / "mar" / "io.safetensors")
    with torch.no_grad():
        z = r.generator.condition(io["tokens"].reshape(4, 64, 16), io["labels"], io["orders"], 48)
    assert (z - io["z_cond_masked48"]).abs().max().item() <= 1e-5
    code, out, err = run_cli(["sample", str(run), "--per-class", "1", "--steps", "4"])
    assert code == 0, err
    check_png(Path(out.strip().splitlines()[-1]), rows=10, cols=1, side=128)


def test_import_errors_are_one_line(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    mar_file = str(FIX / "mar" / "checkpoint-last.pth")
    cases = [
        (["import", "vqgan", mar_file], r"unknown import kind 'vqgan'; valid: mar, rqtransformer, kl16, rqvae"),
        (["import", "mar", mar_file], r"needs --tokenizer DIR"),
        (["import", "kl16", mar_file, "--out-dir", str(tmp_path)], r"not an LDM autoencoder state dict"),
        (
            ["import", "kl16", str(FIX / "kl16" / "kl16.ckpt"), "--container-key", "ema", "--out-dir", str(tmp_path)],
            r"has no 'ema' entry; it holds: model",
        ),
    ]
    for args, pattern in cases:
        code, _, err = run_cli(args)
        assert code in (1, 2) and re.search(pattern, err), (args, err)
        assert "Traceback" not in err
