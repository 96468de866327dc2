"""FD-DINOv2 and CMMD networks (benchkit.metrics.dinov2, benchkit.metrics.cmmd) on randomly initialised weights of the
real architectures, saved here in the releases' own key layouts, against forwards written out by hand in this file;
the missing-file errors; and CMMD's MMD against a direct O(n^2) NumPy computation."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from benchkit.core.errors import ConfigError
from benchkit.metrics import cmmd, dinov2, pretrained
from benchkit.metrics.extractor import register_with_fidelity
from benchkit.metrics.frechet import fid_from_features

needs_timm = pytest.mark.skipif(importlib.util.find_spec("timm") is None, reason="timm is not installed")
needs_open_clip = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None, reason="open_clip not installed")


@pytest.fixture()
def two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------- by-hand networks


def pil_input(
    images: torch.Tensor | list[torch.Tensor], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Centre square, PIL bicubic to ``size``, [0, 1], (x - mean) / std: the reference pipelines' preprocessing."""
    out = []
    for one in images:
        im = one.permute(1, 2, 0).numpy()
        h, w = im.shape[:2]
        s = min(h, w)
        im = im[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        out.append(np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255)
    x = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def attention(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, wo: torch.Tensor, bo: torch.Tensor, heads: int):
    n, t, d = x.shape
    q, k, v = (x @ w.T + b).reshape(n, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
    return (a @ v).transpose(1, 2).reshape(n, t, d) @ wo.T + bo


def ln(x: torch.Tensor, sd: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"].float(), sd[name + ".bias"].float(), eps)


def rand(g: torch.Generator, *shape: int, std: float = 1.0, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * std + mean


def release_dinov2(dim: int, depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of the DINOv2 release (dinov2_vit*14_pretrain.pth)."""
    g = torch.Generator().manual_seed(seed)
    sd = {
        "cls_token": rand(g, 1, 1, dim),
        "pos_embed": rand(g, 1, 1 + 37 * 37, dim, std=0.5),
        "mask_token": torch.zeros(1, dim),
        "patch_embed.proj.weight": rand(g, dim, 3, 14, 14, std=(3 * 196) ** -0.5),
        "patch_embed.proj.bias": rand(g, dim, std=0.1),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        for norm in ("norm1", "norm2"):
            sd[p + norm + ".weight"], sd[p + norm + ".bias"] = rand(g, dim, std=0.1, mean=1), rand(g, dim, std=0.1)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = rand(g, 3 * dim, dim, std=dim**-0.5), rand(g, 3 * dim)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rand(g, dim, dim, std=dim**-0.5), rand(g, dim, std=0.1)
        sd[p + "ls1.gamma"], sd[p + "ls2.gamma"] = rand(g, dim, std=0.1, mean=0.3), rand(g, dim, std=0.1, mean=0.3)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rand(g, 4 * dim, dim, std=dim**-0.5), rand(g, 4 * dim)
        sd[p + "mlp.fc2.weight"] = rand(g, dim, 4 * dim, std=(4 * dim) ** -0.5)
        sd[p + "mlp.fc2.bias"] = rand(g, dim, std=0.1)
    sd["norm.weight"], sd["norm.bias"] = rand(g, dim, std=0.1, mean=1), rand(g, dim, std=0.1)
    return sd


def dinov2_by_hand(sd: dict[str, torch.Tensor], images: torch.Tensor, heads: int) -> torch.Tensor:
    """The release's forward at 224 px, written out: patches, CLS, position table interpolated by its rule, blocks
    with LayerScale, final norm, CLS token."""
    x = pil_input(images, 224, pretrained.IMAGENET_MEAN, pretrained.IMAGENET_STD)
    x = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x], dim=1)
    dim = x.shape[-1]
    table = sd["pos_embed"][:, 1:].reshape(1, 37, 37, dim).permute(0, 3, 1, 2)
    table = F.interpolate(table, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic", antialias=False)
    x = x + torch.cat([sd["pos_embed"][:, :1], table.permute(0, 2, 3, 1).reshape(1, 256, dim)], dim=1)
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    for i in range(depth):
        p = f"blocks.{i}."
        h = ln(x, sd, p + "norm1", 1e-6)
        a = attention(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"], sd[p + "attn.proj.weight"],
                      sd[p + "attn.proj.bias"], heads)  # fmt: skip
        x = x + sd[p + "ls1.gamma"] * a
        h = F.gelu(ln(x, sd, p + "norm2", 1e-6) @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + sd[p + "ls2.gamma"] * (h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"])
    return ln(x, sd, "norm", 1e-6)[:, 0]


# ---------------------------------------------------------------------------------------------- DINOv2


@needs_timm
def test_dinov2_vit_s_release_file_matches_the_forward_by_hand(tmp_path: Path) -> None:
    sd = release_dinov2(384, 12)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(sd, path)
    net = dinov2.load_dinov2(dinov2.DinoV2Config(arch="dinov2-vit-s-14", weights_file=str(path)))
    images = torch.randint(0, 256, (3, 3, 256, 256), dtype=torch.uint8)
    feats = dinov2.dinov2_features(net, images, batch_size=2)
    with torch.no_grad():
        want = dinov2_by_hand(sd, images, heads=6)
    assert feats.shape == (3, 384) and feats.dtype == torch.float32
    assert want.std() > 0.1 and (feats[0] - feats[1]).abs().max() > 1e-2  # non-degenerate features
    torch.testing.assert_close(feats, want, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(net(images[:, :, :224, :224]), dinov2_by_hand(sd, images[:, :, :224, :224], 6),
                               rtol=2e-5, atol=2e-5)  # fmt: skip  # no resize at 224
    # chunked block names of the training checkpoints load the same
    chunked = {(f"blocks.{int(k.split('.')[1]) // 3}." + k[len("blocks.") :] if k.startswith("blocks.") else k): v
               for k, v in sd.items()}  # fmt: skip
    torch.save(chunked, tmp_path / "chunked.pth")
    assert any(k.startswith("blocks.3.9.") for k in chunked)
    again = dinov2.DinoV2Net(dinov2.build_dinov2(tmp_path / "chunked.pth"))
    torch.testing.assert_close(dinov2.dinov2_features(again, images), feats)


class Images(Dataset):
    """uint8 [N, 3, H, W] as the Dataset of [3, H, W] tensors that torch-fidelity reads."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


@needs_timm
def test_dinov2_fd_through_torch_fidelity(tmp_path: Path) -> None:
    import torch_fidelity

    torch.save(release_dinov2(384, 12, seed=1), tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = dinov2.DinoV2Config(arch="dinov2-vit-s-14", weights_file=str(tmp_path / "dinov2_vits14_pretrain.pth"))
    spec = dinov2.dinov2_extractor_spec(cfg)
    assert spec["tag"].startswith("dinov2-vit-s-14@") and spec["logits_layer"] is None
    register_with_fidelity(spec["fidelity_name"], spec["fidelity_class"])
    a = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8)
    b = (a.int() // 2 + 60).to(torch.uint8)
    tf = torch_fidelity.calculate_metrics(
        input1=Images(a),
        input2=Images(b),
        fid=True,
        feature_extractor=spec["fidelity_name"],
        feature_extractor_weights_path=str(spec["weights_path"]),
        cuda=False,
        batch_size=4,
        verbose=False,
        cache=False,
        save_cpu_ram=True,
    )
    net = dinov2.load_dinov2(cfg)
    ours = fid_from_features(dinov2.dinov2_features(net, a), dinov2.dinov2_features(net, b))
    assert ours > 1.0
    assert tf["frechet_inception_distance"] == pytest.approx(ours, rel=1e-4)


@needs_timm
def test_dinov2_missing_and_wrong_files(no_weights: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("built a network although the weights file is missing")

    build = dinov2.build_dinov2
    monkeypatch.setattr(dinov2, "build_dinov2", no_build)
    with pytest.raises(ConfigError) as e:
        dinov2.load_dinov2(dinov2.DinoV2Config())
    msg = str(e.value)
    hub = no_weights / "torch" / "hub" / "checkpoints" / "dinov2_vitl14_pretrain.pth"
    assert "\n" not in msg and "never downloads" in msg and str(hub) in msg and "dinov2_vitl14_pretrain.pth" in msg
    with pytest.raises(ConfigError, match=r"option weights_file=/nowhere/w.pth"):
        dinov2.load_dinov2(dinov2.DinoV2Config(weights_file="/nowhere/w.pth"))
    monkeypatch.setattr(dinov2, "build_dinov2", build)
    folder = no_weights / "weights"
    folder.mkdir()
    torch.save(release_dinov2(384, 12), folder / "dinov2_vits14_pretrain.pth")
    monkeypatch.setenv(pretrained.WEIGHTS_DIR_ENV, str(folder))
    cfg = dinov2.DinoV2Config(arch="dinov2-vit-s-14")
    assert dinov2.find_dinov2_weights(cfg) == folder / "dinov2_vits14_pretrain.pth"
    bad = dinov2.DinoV2Config(arch="dinov2-vit-b-14", weights_file=str(folder / "dinov2_vits14_pretrain.pth"))
    with pytest.raises(ConfigError, match="not a dinov2-vit-b-14 checkpoint.*width 384, depth 12"):
        dinov2.load_dinov2(bad)
    with pytest.raises(ConfigError, match="unknown DINOv2 arch 'dinov2-vit-x'"):
        dinov2.DinoV2Config(arch="dinov2-vit-x")
    (folder / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="could not read weights"):
        dinov2.build_dinov2(folder / "junk.pth")


@needs_timm
@pytest.mark.slow
def test_dinov2_vit_l_release_file(tmp_path: Path, two_threads: None) -> None:
    sd = release_dinov2(1024, 24, seed=2)
    torch.save(sd, tmp_path / "dinov2_vitl14_pretrain.pth")
    net = dinov2.load_dinov2(dinov2.DinoV2Config(weights_file=str(tmp_path / "dinov2_vitl14_pretrain.pth")))
    images = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    feats = dinov2.dinov2_features(net, images)
    with torch.no_grad():
        want = dinov2_by_hand(sd, images, heads=16)
    assert feats.shape == (2, 1024)
    torch.testing.assert_close(feats, want, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------------------------- CLIP and CMMD


def np_mmd(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2))

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def unit_rows(rng: np.random.Generator, n: int, d: int, shift: float = 0.0) -> np.ndarray:
    x = rng.standard_normal((n, d)) + shift
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_mmd_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x, y = unit_rows(rng, 60, 32), unit_rows(rng, 45, 32, shift=0.3)
    for block in (4096, 7):
        assert cmmd.mmd2_rbf(x, y, block=block) == pytest.approx(np_mmd(x, y, 10.0), rel=1e-9, abs=1e-15)
        assert cmmd.mmd2_rbf(x, y, sigma=0.5, block=block) == pytest.approx(np_mmd(x, y, 0.5), rel=1e-9)
    assert cmmd.cmmd(x, y) == pytest.approx(1000 * np_mmd(x, y, 10.0), rel=1e-9)
    assert cmmd.cmmd(y, x) == pytest.approx(cmmd.cmmd(x, y), rel=1e-12)
    assert cmmd.cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd.cmmd(x, y) > 1e-3  # the shifted set is measurably different
    with pytest.raises(ValueError, match="widths differ"):
        cmmd.mmd2_rbf(x, y[:, :8])


def openai_clip_l14_336(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in the layout of OpenAI's ViT-L-14-336px.pt (its TorchScript archive's state_dict, mostly
    float16), text tower included (zeros: benchkit never reads it)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"input_resolution": torch.tensor(336), "context_length": torch.tensor(77),
                                   "vocab_size": torch.tensor(49408), "logit_scale": torch.tensor(4.6)}  # fmt: skip
    w = 1024
    v = {
        "conv1.weight": rand(g, w, 3, 14, 14, std=588**-0.5),
        "class_embedding": rand(g, w),
        "positional_embedding": rand(g, 577, w, std=0.5),
        "proj": rand(g, w, 768, std=w**-0.5),
    }
    for name in ("ln_pre", "ln_post"):
        v[name + ".weight"], v[name + ".bias"] = rand(g, w, std=0.1, mean=1), rand(g, w, std=0.1)
    for i in range(24):
        p = f"transformer.resblocks.{i}."
        for name in ("ln_1", "ln_2"):
            v[p + name + ".weight"], v[p + name + ".bias"] = rand(g, w, std=0.1, mean=1), rand(g, w, std=0.1)
        v[p + "attn.in_proj_weight"], v[p + "attn.in_proj_bias"] = rand(g, 3 * w, w, std=w**-0.5), rand(g, 3 * w)
        v[p + "attn.out_proj.weight"] = rand(g, w, w, std=0.5 * w**-0.5)
        v[p + "attn.out_proj.bias"] = rand(g, w, std=0.1)
        v[p + "mlp.c_fc.weight"], v[p + "mlp.c_fc.bias"] = rand(g, 4 * w, w, std=2 * w**-0.5), rand(g, 4 * w)
        v[p + "mlp.c_proj.weight"] = rand(g, w, 4 * w, std=0.5 * (4 * w) ** -0.5)
        v[p + "mlp.c_proj.bias"] = rand(g, w, std=0.1)
    sd.update({"visual." + k: t.half() for k, t in v.items()})
    t = 768
    text = {"token_embedding.weight": (49408, t), "positional_embedding": (77, t), "ln_final.weight": (t,),
            "ln_final.bias": (t,), "text_projection": (t, 768)}  # fmt: skip
    for i in range(12):
        p = f"transformer.resblocks.{i}."
        for name in ("ln_1", "ln_2", "attn.out_proj", "mlp.c_fc", "mlp.c_proj"):
            out = {"mlp.c_fc": 4 * t}.get(name, t)
            into = {"mlp.c_proj": 4 * t}.get(name, t)
            text[p + name + ".weight"] = (t,) if name.startswith("ln") else (out, into)
            text[p + name + ".bias"] = (out,)
        text |= {p + "attn.in_proj_weight": (3 * t, t), p + "attn.in_proj_bias": (3 * t,)}
    sd.update({k: torch.zeros(shape, dtype=torch.float16) for k, shape in text.items()})
    return sd


def clip_by_hand(sd: dict[str, torch.Tensor], images: list[torch.Tensor]) -> torch.Tensor:
    """OpenAI's VisionTransformer forward, written out (QuickGELU, LayerNorm eps 1e-5), then L2-normalised."""
    v = {k[len("visual.") :]: t.float() for k, t in sd.items() if k.startswith("visual.")}
    x = pil_input(images, 336, pretrained.CLIP_MEAN, pretrained.CLIP_STD)
    x = F.conv2d(x, v["conv1.weight"], stride=14).flatten(2).transpose(1, 2)
    x = torch.cat([v["class_embedding"].expand(len(x), 1, -1), x], dim=1) + v["positional_embedding"]
    x = ln(x, v, "ln_pre", 1e-5)
    for i in range(24):
        p = f"transformer.resblocks.{i}."
        x = x + attention(ln(x, v, p + "ln_1", 1e-5), v[p + "attn.in_proj_weight"], v[p + "attn.in_proj_bias"],
                          v[p + "attn.out_proj.weight"], v[p + "attn.out_proj.bias"], 16)  # fmt: skip
        h = ln(x, v, p + "ln_2", 1e-5) @ v[p + "mlp.c_fc.weight"].T + v[p + "mlp.c_fc.bias"]
        x = x + (h * torch.sigmoid(1.702 * h)) @ v[p + "mlp.c_proj.weight"].T + v[p + "mlp.c_proj.bias"]
    return F.normalize(ln(x[:, 0], v, "ln_post", 1e-5) @ v["proj"], dim=-1)


@needs_open_clip
@pytest.mark.slow
def test_clip_l14_336_openai_file_and_cmmd(tmp_path: Path, two_threads: None) -> None:
    sd = openai_clip_l14_336()
    torch.save(sd, tmp_path / "ViT-L-14-336px.pt")
    net = cmmd.load_clip(cmmd.ClipConfig(weights_file=str(tmp_path / "ViT-L-14-336px.pt")))
    g = torch.Generator().manual_seed(3)
    square = torch.randint(0, 256, (1, 3, 256, 256), dtype=torch.uint8, generator=g)
    ramp = torch.linspace(0, 255, 340).expand(1, 3, 300, 340)  # a smooth, wide image: centre-cropped to 300 x 300
    wide = (ramp * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)).round().to(torch.uint8)
    emb = torch.cat([cmmd.clip_embeddings(net, square), cmmd.clip_embeddings(net, wide)])
    with torch.no_grad():
        want = clip_by_hand(sd, [square[0], wide[0]])
    assert emb.shape == (2, 768)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    assert (emb[0] - emb[1]).abs().max() > 1e-2
    # measured: 1e-7 apart; GELU in place of OpenAI's QuickGELU would be 8e-4 apart
    torch.testing.assert_close(emb, want, rtol=2e-5, atol=2e-5)
    e = emb.double().numpy()
    assert cmmd.cmmd(e[:1], e[1:]) == pytest.approx(1000 * np_mmd(e[:1], e[1:], 10.0), rel=1e-9)


@needs_open_clip
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script is deprecated; OpenAI's files need it
def test_clip_missing_and_wrong_files(no_weights: Path) -> None:
    with pytest.raises(ConfigError) as e:
        cmmd.load_clip(cmmd.ClipConfig())
    msg = str(e.value)
    assert "\n" not in msg and "ViT-L-14-336px.pt" in msg and "never downloads" in msg
    assert str(no_weights / "torch" / "hub" / "checkpoints" / cmmd.FIDELITY_CLIP_FILE) in msg  # torch-fidelity's
    assert str(no_weights / "home" / ".cache" / "clip" / "ViT-L-14-336px.pt") in msg  # the clip package's

    class Tiny(nn.Module):  # a TorchScript archive, like OpenAI's release file, of the wrong network
        def __init__(self) -> None:
            super().__init__()
            self.visual = nn.Linear(2, 2)
            self.register_buffer("input_resolution", torch.tensor(336))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual(x)

    path = no_weights / "tiny.pt"
    torch.jit.script(Tiny()).save(str(path))
    assert set(pretrained.load_state_dict_file(path)) == {"visual.weight", "visual.bias", "input_resolution"}
    assert cmmd.clip_tag(path).startswith("clip-vit-l-14-336@")  # not OpenAI's file: the tag says which one
    with pytest.raises(ConfigError, match="not a CLIP ViT-L/14@336 checkpoint.*missing.*unexpected"):
        cmmd.load_clip(cmmd.ClipConfig(weights_file=str(path)))


def test_resize_modes_agree() -> None:
    noise = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    smooth = F.avg_pool2d(noise.float(), 9, 1, 4).mul(3).sub(250).clamp(0, 255).to(torch.uint8)
    for images, worst in ((noise, 30), (smooth, 4)):  # PIL rounds to uint8 between its two passes: noise is worst
        pil = pretrained.resize_uint8(images, 224, "pil")
        by_hand = (pil_input(images, 224, (0, 0, 0), (1, 1, 1)) * 255).round().to(torch.uint8)
        assert torch.equal(pil, by_hand)
        diff = (pretrained.resize_uint8(images, 224, "torch").int() - pil.int()).abs()
        assert diff.max() <= worst and diff.float().mean() < 0.5
    images = noise
    assert pretrained.resize_uint8(images, 256) is images
    with pytest.raises(ConfigError, match="resize mode"):
        pretrained.resize_uint8(images, 224, "nearest")
