"""Imported official checkpoints reproduce the official outputs (tests/fixtures/official, see SOURCE.md there).

Every tensor of each fixture's io.safetensors is compared with what benchkit computes from the same inputs after
``load_official``; the tolerance is the one in the fixture's fixture.json (codes exactly). The last tests show the
comparison can fail: the non-EMA entry of the MAR container, or one perturbed weight, moves the outputs far
outside the tolerance.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS, TOKENIZERS
from benchkit.importers import common, kl16, mar, rq

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "official"
TOL_MAR, TOL = 1e-5, 1e-4  # fixture.json: "float32, max abs diff <= 1e-5" (mar), "<= 1e-4" (kl16, rq)


def test_fixture_tolerances_are_the_stated_ones() -> None:
    texts = {
        d: json.loads((FIX / d / "fixture.json").read_text())["tolerance"]
        for d in ("mar", "kl16", "rq/stage1", "rq/stage2")
    }
    assert "1e-5" in texts["mar"] and all("1e-4" in texts[d] for d in ("kl16", "rq/stage1", "rq/stage2"))
    assert "codes exactly equal" in texts["rq/stage1"]


def load_mar(file: str = "checkpoint-last.pth", key: str | None = None, arch: str | None = None) -> torch.nn.Module:
    path = FIX / "mar" / file
    container = common.read_container(path)
    state, _ = common.pick_weights(container, mar.CONTAINER_KEYS, path, key)
    args, _ = mar.resolve_arch(arch, container, path)
    gen, head = mar.component_options(args)
    model = GENERATORS.create(
        "mar",
        spec=TokenSpec("continuous", (8, 8), dim=16),
        head="diffloss",
        head_options=head,
        num_classes=int(args["class_num"]),
        **gen,
    )
    common.load_official(model, state, mar.KEYMAP, "mar", mar.extra_tensors(16))
    return model.eval()


@torch.no_grad()
def mar_diffs(model: torch.nn.Module) -> dict[str, float]:
    io = load_file(FIX / "mar" / "io.safetensors")
    tokens = io["tokens"].reshape(io["tokens"].shape[0], -1, io["tokens"].shape[-1])
    out = {}
    for n in (48, 64):
        for which, labels in (("cond", io["labels"]), ("uncond", torch.full_like(io["labels"], model.num_classes))):
            z = model.condition(tokens, labels, io["orders"], n)
            out[f"z_{which}_masked{n}"] = (z - io[f"z_{which}_masked{n}"]).abs().max().item()
    net = model.head.net
    pred = net(io["diffloss_x"], net.embed(io["diffloss_t"], io["diffloss_c"]))
    out["diffloss_net_out"] = (pred - io["diffloss_net_out"]).abs().max().item()
    return out


def test_mar_reproduces_every_official_output() -> None:
    diffs = mar_diffs(load_mar(arch=str(FIX / "mar" / "fixture.json")))
    assert len(diffs) == 5 and max(diffs.values()) <= TOL_MAR, diffs


def test_mar_selftrained_container_loads_with_its_args() -> None:
    """The self-trained container carries an argparse.Namespace: plain weights_only refuses it, ours reads it."""
    path = FIX / "mar" / "checkpoint-selftrained.pth"
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path, weights_only=True)
    diffs = mar_diffs(load_mar("checkpoint-selftrained.pth"))  # the architecture comes from its args
    assert max(diffs.values()) <= TOL_MAR, diffs


def test_mar_non_ema_entry_fails_the_check() -> None:
    diffs = mar_diffs(load_mar(key="model", arch=str(FIX / "mar" / "fixture.json")))
    assert max(diffs.values()) > 100 * TOL_MAR, diffs


def load_kl() -> torch.nn.Module:
    state, _ = common.pick_weights(common.read_container(FIX / "kl16" / "kl16.ckpt"), kl16.CONTAINER_KEYS, "kl16")
    options, _ = kl16.tokenizer_options(None, state)
    tok = TOKENIZERS.create("kl", image_size=32, **options)
    common.load_official(tok, state, kl16.KEYMAP, "kl16", kl16.extra_tensors())
    return tok.eval()


@torch.no_grad()
def kl_diffs(tok: torch.nn.Module) -> dict[str, float]:
    io = load_file(FIX / "kl16" / "io.safetensors")
    mean, logvar = tok.moments(io["images"])
    return {
        "posterior_mean": (mean.permute(0, 3, 1, 2) - io["posterior_mean"]).abs().max().item(),
        "posterior_logvar": (logvar.permute(0, 3, 1, 2) - io["posterior_logvar"]).abs().max().item(),
        "decoded_mean": (tok.decode_raw(mean) - io["decoded_mean"]).abs().max().item(),
    }


def test_kl16_reproduces_every_official_output() -> None:
    tok = load_kl()
    assert tok.cfg.attn_levels == (1,) and tok.cfg.decoder_attn_levels == () and tok.cfg.num_res_blocks == 2
    assert tok.scale.item() == pytest.approx(0.2325)
    diffs = kl_diffs(tok)
    assert max(diffs.values()) <= TOL, diffs


def test_perturbed_kl_weight_fails_the_check() -> None:
    tok = load_kl()
    with torch.no_grad():
        tok.encoder.mid.attn_1.q.weight.add_(0.05)
    assert max(kl_diffs(tok).values()) > 10 * TOL


def load_rqvae() -> torch.nn.Module:
    path = FIX / "rq" / "stage1" / "model.pt"
    state, _ = common.pick_weights(common.read_container(path), rq.CONTAINER_KEYS, path)
    options, size = rq.rqvae_options(rq.read_config(path, None, rq.RQVAE_ARCHS)[0])
    tok = TOKENIZERS.create("rq", image_size=size, **options)
    common.load_official(tok, state, rq.rqvae_keymap(options["depth"]), "rqvae", {"scale": torch.tensor(1.0)})
    return tok.eval()


@torch.no_grad()
def test_rqvae_reproduces_codes_exactly_and_outputs() -> None:
    tok, io = load_rqvae(), load_file(FIX / "rq" / "stage1" / "io.safetensors")
    assert tok.codebook.embed.shape == (64, 32)  # the padding row is dropped
    latent = tok._latent(io["images"])
    assert (latent - io["latent"]).abs().max().item() <= TOL
    assert torch.equal(tok.encode(io["images"], "discrete"), io["codes"])
    decoded = tok.decode_raw(tok.code_embeddings(io["codes"]).sum(-2))
    assert (decoded - io["decoded"]).abs().max().item() <= TOL


@torch.no_grad()
def test_perturbed_codebook_changes_the_codes() -> None:
    tok, io = load_rqvae(), load_file(FIX / "rq" / "stage1" / "io.safetensors")
    tok.codebook.embed.mul_(-1.0)
    assert not torch.equal(tok.encode(io["images"], "discrete"), io["codes"])


def load_rqt(tok: torch.nn.Module) -> torch.nn.Module:
    path = FIX / "rq" / "stage2" / "model.pt"
    state, _ = common.pick_weights(common.read_container(path), rq.CONTAINER_KEYS, path)
    gen, head, classes = rq.rqt_options(rq.read_config(path, None, rq.RQT_ARCHS)[0])
    model = GENERATORS.create(
        "rqtransformer", spec=tok.specs["discrete"], head="ce", head_options=head, num_classes=classes, **gen
    )
    common.load_official(model, state, rq.RQT_KEYMAP, "rqtransformer", {"codebook": tok.codebook.embed})
    return model.eval()


@torch.no_grad()
def rqt_logits(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    io = load_file(FIX / "rq" / "stage2" / "io.safetensors")
    codes = io["codes"]
    z = model(codes.reshape(codes.shape[0], -1, codes.shape[-1]), io["labels"])
    return model.head(z).reshape(io["logits"].shape), io["logits"]


def test_rqtransformer_reproduces_teacher_forced_logits() -> None:
    logits, want = rqt_logits(load_rqt(load_rqvae()))
    assert (logits - want).abs().max().item() <= TOL
    assert torch.equal(logits.argmax(-1), want.argmax(-1))


def test_rqtransformer_without_the_stage1_codebook_fails_the_check() -> None:
    tok = load_rqvae()
    with torch.no_grad():
        tok.codebook.embed.add_(0.1)  # another codebook feeds input_mlp / head_mlp
    logits, want = rqt_logits(load_rqt(tok))
    assert (logits - want).abs().max().item() > 10 * TOL
