"""benchmarks/training_parity_rqt.py: its own logic (the in-memory patch of the official configs, the loader, the
official architecture and settings, the release-format save and its import, the table and verdicts, errors),
without the official code or omegaconf: synthetic sources and the conformance fixtures stand in for them."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml
from conftest import load_benchmark
from safetensors.torch import load_file

from benchkit.core.config import RunConfig, resolve
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.evaluation.commands import eval_overrides
from benchkit.importers import common, rq
from benchkit.importers.api import import_checkpoint, import_tokenizer
from benchkit.training.loading import load_run

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "official" / "rq"
ONE, COOL = "CFG 1, T 1.0", "CFG 1, T 0.8"

# A configs.py with the official file's problem: dataclass fields whose default is a dataclass instance.
CONFIGS = '''"""Synthetic configs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Block:
    n_head: int = 1


@dataclass
class Stack:
    n_layer: int = 1
    block: Block = Block()


@dataclass
class TopConfig:
    width: int = 8
    body: Stack = Stack()
    head: Stack = Stack(n_layer=3)


class NotADataclass:
    block = Block()
'''


@pytest.fixture(scope="module")
def tp() -> Iterator[ModuleType]:
    yield from load_benchmark("training_parity_rqt")


@pytest.fixture
def clean_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """sys.path and the ``rqvae`` / synthetic modules as they were before the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    for name in [n for n in sys.modules if n.split(".")[0] in ("rqvae", "synthetic_configs")]:
        del sys.modules[name]


def default_cfg(tp: ModuleType, extra: tuple[str, ...] = ()) -> RunConfig:
    return resolve("tiny", None, [*tp.parity_common.base_overrides("tiny", tp.COMBO), *extra])


def fake_checkout(root: Path, transformers: str) -> Path:
    pkg = root / "rqvae" / "models" / "rqtransformer"
    pkg.mkdir(parents=True)
    (root / "rqvae" / "__init__.py").write_text("")
    (root / "rqvae" / "models" / "__init__.py").write_text("from .rqtransformer import RQTransformer  # noqa\n")
    (pkg / "__init__.py").write_text("from .configs import TopConfig\nfrom .transformers import RQTransformer\n")
    (pkg / "configs.py").write_text(CONFIGS + "\nRQTransformerConfig = TopConfig\n")
    (pkg / "transformers.py").write_text(transformers)
    return root


def test_the_synthetic_source_has_the_official_problem_and_the_patch_fixes_it(
    tp: ModuleType, tmp_path: Path, clean_modules: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sys.version_info >= (3, 11):
        raw = ModuleType("synthetic_configs_raw")
        monkeypatch.setitem(sys.modules, raw.__name__, raw)
        with pytest.raises(ValueError, match="mutable default"):
            exec(compile(CONFIGS, "configs.py", "exec", dont_inherit=True), raw.__dict__)
    tree, changed = tp.patch_dataclass_defaults(CONFIGS)
    assert changed == 3  # Stack.block, TopConfig.body, TopConfig.head; the plain class is left alone
    path = tmp_path / "configs.py"
    path.write_text(CONFIGS)
    module = tp.load_patched_module(path, "synthetic_configs")
    assert sys.modules["synthetic_configs"] is module and path.read_text() == CONFIGS  # the file is not changed
    a, b = module.TopConfig(), module.TopConfig()
    assert a.body == module.Stack(1, module.Block(1)) and a.head.n_layer == 3  # the arguments are kept
    assert a.body is not b.body and a.body.block is not b.body.block  # one fresh default per instance
    assert isinstance(module.NotADataclass.block, module.Block)
    field = {f.name: f for f in dataclasses.fields(module.Stack)}["block"]
    assert field.default_factory is module.Block and field.type == "Block"  # the source's own annotations future


def test_the_patched_module_keeps_its_own_annotations(tp: ModuleType, tmp_path: Path, clean_modules: None) -> None:
    path = tmp_path / "configs.py"  # no __future__ import: real classes as field types, as OmegaConf reads them
    path.write_text(CONFIGS.replace("from __future__ import annotations\n", ""))
    module = tp.load_patched_module(path, "synthetic_configs")
    assert {f.name: f.type for f in dataclasses.fields(module.TopConfig)}["body"] is module.Stack


def test_patch_leaves_a_clean_source_alone(tp: ModuleType) -> None:
    source = (
        "from dataclasses import dataclass, field\n\n@dataclass\nclass A:\n    x: list = field(default_factory=list)\n"
    )
    tree, changed = tp.patch_dataclass_defaults(source)
    assert changed == 0
    scope: dict[str, object] = {"__name__": "clean"}
    exec(compile(tree, "clean.py", "exec", dont_inherit=True), scope)
    assert scope["A"]().x == []  # type: ignore[operator]


def test_a_failing_module_is_one_line_and_not_registered(tp: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(tp.ParityError) as e:
        tp.load_patched_module(path, "synthetic_configs_broken")
    assert str(e.value) == f"cannot load {str(path)!r}: RuntimeError: boom"
    assert "synthetic_configs_broken" not in sys.modules


def test_load_official_rqt_uses_the_patched_configs(tp: ModuleType, tmp_path: Path, clean_modules: None) -> None:
    code = fake_checkout(
        tmp_path,
        "import torch\nfrom .configs import RQTransformerConfig\n\n\nclass RQTransformer(torch.nn.Module):\n"
        "    def __init__(self, config):\n        super().__init__()\n        self.config = config\n",
    )
    rqt_cls, config_cls = tp.load_official_rqt(code)
    assert rqt_cls.__module__ == "rqvae.models.rqtransformer.transformers" and sys.path[0] == str(code)
    configs = sys.modules["rqvae.models.rqtransformer.configs"]
    assert config_cls is configs.TopConfig and configs.__file__ == str(code / "rqvae/models/rqtransformer/configs.py")
    assert rqt_cls(config_cls()).config.head.n_layer == 3


def test_a_checkout_that_does_not_import_is_one_line(tp: ModuleType, tmp_path: Path, clean_modules: None) -> None:
    code = fake_checkout(tmp_path, "import not_a_module_here\n")
    with pytest.raises(tp.ParityError) as e:
        tp.load_official_rqt(code)
    assert str(e.value) == (
        f"cannot import rqvae.models.rqtransformer.transformers from {str(code)!r}: ModuleNotFoundError: "
        "No module named 'not_a_module_here'"
    )


def test_missing_rq_code_is_one_line(tp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tp.main(["--rq-code", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: --rq-code {str(tmp_path)!r} holds no rqvae/models/rqtransformer/transformers.py; pass a checkout "
        "of github.com/kakaobrain/rq-vae-transformer"
    )
    assert not (tmp_path / "out").exists()  # nothing was trained


def test_missing_omegaconf_is_one_line_naming_the_install(
    tp: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_checkout(tmp_path, "")
    monkeypatch.setitem(sys.modules, "omegaconf", None)  # what an environment without it gives
    assert tp.main(["--rq-code", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: the official RQ-Transformer needs omegaconf, not installed here: pip install omegaconf"
    assert not (tmp_path / "out").exists()


def test_arguments(tp: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    a = tp.parse_args(["--rq-code", "x"])
    assert (a.seeds, a.samples, a.reference, a.steps, a.budget_flops, a.json) == (3, 1000, 5000, None, None, None)
    assert (a.out, a.device, a.threads) == (Path("results/training-parity-rqt"), "auto", None)
    with pytest.raises(SystemExit) as e:
        tp.parse_args(["--rq-code", ".", "--seeds", "0"])
    assert e.value.code == 2 and "--seeds must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tp.parse_args(["--steps", "5"])  # --rq-code is required


def test_official_arch_is_the_default_runs_shape(tp: ModuleType) -> None:
    cfg = default_cfg(tp)
    stack = {"block": {"n_head": 4, "attn_pdrop": 0.0, "resid_pdrop": 0.0}}
    assert tp.arch_of(cfg, 10) == {
        "type": "rq-transformer",
        "vocab_size": 256,
        "block_size": [4, 4, 4],
        "embed_dim": 64,
        "input_embed_dim": 16,
        "shared_tok_emb": True,
        "shared_cls_emb": True,
        "input_emb_vqvae": True,
        "head_emb_vqvae": True,
        "cumsum_depth_ctx": True,
        "vocab_size_cond": 10,
        "block_size_cond": 1,
        "embd_pdrop": 0.0,
        "body": {"n_layer": 3, **stack},
        "head": {"n_layer": 1, **stack},
    }


def test_the_official_arch_imports_as_benchkits_model_with_the_official_settings(tp: ModuleType) -> None:
    official = default_cfg(tp, tuple(tp.codebook_sets(default_cfg(tp))))
    g = GENERATORS.make_config("rqtransformer", official.generator.options)
    assert (g.code_embedding, g.codebook_dim, g.label_drop) == ("codebook", 16, 0.0)
    gen, head, classes = rq.rqt_options(tp.arch_of(official, 10))
    assert {k: getattr(g, k) for k in gen} == gen  # width, blocks, heads, dropout, label drop, code path
    assert classes == 10
    default = GENERATORS.make_config("rqtransformer", default_cfg(tp).generator.options)
    assert (default.code_embedding, default.label_drop) == ("learned", 0.1)  # what VARIANTS["default"] says


def test_official_arch_refusals(tp: ModuleType) -> None:
    spec = TokenSpec("discrete", (4, 4), depth=4, vocab_size=256)
    g = GENERATORS.make_config("rqtransformer", {"width": 64})
    with pytest.raises(tp.ParityError, match="MLP ratio of 4"):
        tp.official_arch(dataclasses.replace(g, mlp_ratio=2.0), spec, 16, 10)
    with pytest.raises(tp.ParityError, match="discrete stacked codes"):
        tp.official_arch(g, TokenSpec("continuous", (4, 4), depth=4, dim=16), 16, 10)
    with pytest.raises(tp.ParityError, match="needs the rq tokenizer, the job has 'vq'"):
        tp.code_dim_of(resolve("tiny", None, ['tokenizer.name="vq"']))


def test_codebook_aux_gives_the_code_vectors_per_depth(tp: ModuleType) -> None:
    book = torch.randn(7, 3)
    codes = torch.tensor([[[0, 6], [2, 2]]])  # [B=1, positions 2, depth 2]
    emb, extra = tp.CodebookAux(book).get_code_emb_with_depth(codes)
    assert extra is None and emb.shape == (1, 2, 2, 3)
    assert torch.equal(emb[0, 0, 1], book[6]) and torch.equal(emb[0, 1, 0], book[2])


def test_eval_overrides_are_cfg_1_at_two_temperatures(tp: ModuleType) -> None:
    cfg = eval_overrides(default_cfg(tp), tp.eval_overrides(100, 300))
    s = cfg.sample
    assert (s.steps, s.cfg, s.temperature, s.cfg_schedule) == (None, 1.0, 1.0, "constant")
    assert cfg.eval.sweep == [{"cfg": 1.0, "temperature": 0.8}]
    assert cfg.eval.tune == [] and cfg.eval.seed_spread is False
    assert (cfg.eval.num_samples, cfg.eval.num_reference) == (100, 300)


def test_format_table_and_verdicts(tp: ModuleType) -> None:
    f = tp.SeedFid
    results = {
        "official": {ONE: [f(0, 10.0, "ok"), f(1, 12.0, "ok"), f(2, 14.0, "ok")], COOL: [f(0, 50.0), f(1, 52.0)]},
        "default": {ONE: [f(0, 30.0, "ok"), f(1, 31.0, "ok"), f(2, 33.0, "collapsed")]},
        "codebook": {ONE: [f(0, 11.0, "ok"), f(1, 12.0, "ok"), f(2, 13.0, "ok")], COOL: [f(0, math.inf), f(1, 51)]},
    }
    table, verdicts = tp.format_table(results)
    lines = table.splitlines()
    assert lines[0] == "| model | sampling | FID seed 0 | FID seed 1 | FID seed 2 | mean | 95% CI | health |"
    assert len(lines) == 2 + 3 * 2  # 3 models x 2 settings
    assert lines[2] == f"| {tp.VARIANTS['official']} | {ONE} | 10.0 | 12.0 | 14.0 | 12.0 | ±5.0 | ok |"
    assert lines[3].endswith("| 30.0 | 31.0 | 33.0 | 31.3 | ±3.8 | collapsed 1/3 |")
    assert lines[4].startswith(f"| {tp.VARIANTS['codebook']} | {ONE} | 11.0 | 12.0 | 13.0 |")
    assert lines[6] == f"| {tp.VARIANTS['default']} | {COOL} | - | - | - | - | - | - |"
    assert verdicts[0].startswith(f"{ONE}, {tp.VARIANTS['default']}: benchkit NOT within the official model's")
    assert "higher (worse)" in verdicts[0]
    assert verdicts[1].startswith(f"{ONE}, {tp.VARIANTS['codebook']}: benchkit within the official model's interval")
    assert verdicts[2].endswith("not judged: Welch's t-test needs >= 2 finite FIDs with some spread on each side")
    assert "not judged" in verdicts[3]  # one finite FID left of the codebook row at T 0.8
    assert len(verdicts) == 4


def test_release_format_save_and_import_reproduce_the_official_logits(
    tp: ModuleType, tmp_path: Path, clean_modules: None
) -> None:
    """The official code's own weights (the stage-2 fixture) saved by the script as the trained EMA entry, with a
    perturbed raw entry, then imported: the imported run gives the official teacher-forced logits."""
    tok_dir = import_tokenizer("rqvae", FIX / "stage1" / "model.pt", out_dir=tmp_path)
    path = FIX / "stage2" / "model.pt"
    ema, _ = common.pick_weights(common.read_container(path), ("state_dict",), path)
    raw = {k: v + 0.5 for k, v in ema.items()}
    gen = GENERATORS.make_config("rqtransformer", {"width": 64, "spatial_depth": 2, "depth_depth": 2})
    arch = tp.official_arch(gen, TokenSpec("discrete", (8, 8), depth=4, vocab_size=64), 32, 10)
    pt = tp.save_official(tmp_path / "official", raw, ema, tp.release_config(arch, default_cfg(tp)), 3)
    saved = torch.load(pt, weights_only=True)
    assert sorted(saved) == ["epoch", "state_dict", "state_dict_ema"] and saved["epoch"] == 3
    assert yaml.safe_load((pt.parent / "config.yaml").read_text())["experiment"] == {
        "sample": {"top_k": 0, "top_p": 1.0}
    }
    assert not (pt.parent / "model.pt.tmp").exists()
    rdir, prov = import_checkpoint("rqtransformer", pt, tokenizer=tok_dir)
    assert prov["container_key"] == "state_dict_ema" and prov["arch_from"] == str(pt.parent / "config.yaml")
    run = load_run(rdir)
    assert run.cfg.head.options == {"top_k": 0, "top_p": 1.0}  # benchkit's ce head: no filtering
    assert torch.equal(run.generator.codebook, run.tokenizer.module.codebook.embed)
    io = load_file(FIX / "stage2" / "io.safetensors")
    codes = io["codes"]
    with torch.no_grad():
        z = run.generator(codes.reshape(codes.shape[0], -1, codes.shape[-1]), io["labels"])
        logits = run.generator.head(z).reshape(io["logits"].shape)
    assert (logits - io["logits"]).abs().max().item() <= 1e-4  # the fixture's tolerance
