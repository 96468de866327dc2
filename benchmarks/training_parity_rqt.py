"""Training parity: the official RQ-Transformer (kakaobrain/rq-vae-transformer) trained with benchkit's recipe on
benchkit's cached RQ codes, against benchkit's own RQ-Transformer trained the same way, scored by the same
``benchkit eval``.

    python benchmarks/training_parity_rqt.py --rq-code /path/to/rq-vae-transformer       # 3 seeds each, the default run
    python benchmarks/training_parity_rqt.py --rq-code PATH --steps 20 --samples 100 --seeds 2   # a smoke run

``--rq-code`` is a checkout of github.com/kakaobrain/rq-vae-transformer (never part of benchkit), put on
``sys.path`` at run time; omegaconf must be installed (``pip install omegaconf``). The checkout is never written;
two things are changed in memory only while it runs here:

- ``rqvae/models/rqtransformer/configs.py`` declares dataclass fields whose default is a dataclass instance
  (``block: AttentionBlockConfig = AttentionBlockConfig()``), which Python 3.11+ refuses ("mutable default").
  Its source is parsed, each such default becomes ``field(default_factory=AttentionBlockConfig)``, and the module
  compiled from that is registered in ``sys.modules`` before ``transformers.py`` is imported.
- On a device without CUDA its ``tensor.cuda()`` calls stay on that device while it trains.

The official model reads the stage-1 code vectors through an RQ-VAE object (``get_code_emb_with_depth``); here an
adapter over the codebook of benchkit's RQ tokenizer of that seed stands in for it: the same codebook that
``benchkit import rqtransformer`` copies into the imported model.

Per training seed: ``benchkit train`` trains benchkit's RQ-Transformer of the default run (``sweeps/tiny.toml``) as
configured there (learned code embeddings, label dropout for CFG) and with the official settings
(``code_embedding = "codebook"``, no label dropout), at the steps the budget gives the default one; the official
``RQTransformer`` of the same sizes is trained on the same seed's cached RQ codes by benchkit's own loop
(``trainer.fit``: same batches, optimizer, schedule, clipping, EMA), saved in the release format (``model.pt`` with
``config.yaml`` beside it) and imported with ``benchkit import rqtransformer``; ``benchkit eval`` scores all three
at CFG 1 (the official model has no guidance) at temperatures 1.0 and 0.8. One table, one verdict per benchkit row
and setting (Welch's t-test over seeds). How, what and why: docs/training-parity.md.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import math
import sys
import types
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # parity_common sits beside this script
import parity_common
from parity_common import (
    ParityError,
    SeedFid,
    add_run_options,
    begin,
    check_code,
    check_counts,
    cuda_calls_on,
    finish,
    import_run,
    recipe_of,
    run_flags,
    run_main,
    sampling_overrides,
    train_benchkit,
)

from benchkit.core.checkpoint import load_checkpoint
from benchkit.core.config import RunConfig
from benchkit.core.distributed import pick_device
from benchkit.core.identity import fingerprint
from benchkit.core.interfaces import LossOutput, TokenSpec
from benchkit.core.registry import GENERATORS, HEADS, TOKENIZERS
from benchkit.training.artifacts import run_fingerprint, seed_configs
from benchkit.training.checks import check, load_splits
from benchkit.training.tokenizer import random_mirror, train_tokenizer
from benchkit.training.tokens import token_cache
from benchkit.training.trainer import CHECKPOINT, fit

COMBO = ("rq", "rqtransformer", "ce")
SETTINGS = ((1.0, 1.0), (1.0, 0.8))  # (cfg, temperature): no guidance (the official model has none), two temperatures
REPO, CODE = "kakaobrain/rq-vae-transformer", "rqvae/models/rqtransformer/transformers.py"
PACKAGE = "rqvae.models.rqtransformer"
VARIANTS = {
    "official": "official RQ-Transformer (kakaobrain), codebook inputs, no label drop",
    "default": "benchkit, default (learned code embeddings, label drop 0.1)",
    "codebook": "benchkit, official settings (code_embedding=codebook, label_drop=0)",
}


def _is_dataclass_decorator(node: ast.expr) -> bool:
    f = node.func if isinstance(node, ast.Call) else node
    return (isinstance(f, ast.Name) and f.id == "dataclass") or (isinstance(f, ast.Attribute) and f.attr == "dataclass")


def patch_dataclass_defaults(source: str, filename: str = "<source>") -> tuple[ast.Module, int]:
    """(``source`` parsed, how many defaults were changed): in every ``@dataclass`` class, a field whose default is
    an instance of a dataclass of the same module (``x: Cfg = Cfg(...)``) gets ``field(default_factory=...)``
    instead, which Python 3.11+ accepts; nothing else changes."""
    tree = ast.parse(source, filename)
    classes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    names = {c.name for c in classes if any(_is_dataclass_decorator(d) for d in c.decorator_list)}
    changed = 0
    for cls in (c for c in classes if c.name in names):
        for stmt in cls.body:
            if not isinstance(stmt, ast.AnnAssign):
                continue
            call = stmt.value
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in names):
                continue
            no_args = ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
            bare = not (call.args or call.keywords)
            factory: ast.expr = ast.Name(call.func.id, ast.Load()) if bare else ast.Lambda(no_args, call)
            field = ast.Attribute(ast.Name("_parity_dataclasses", ast.Load()), "field", ast.Load())
            stmt.value = ast.Call(field, [], [ast.keyword("default_factory", factory)])
            changed += 1
    body, at = tree.body, 0
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        at = 1  # after the module docstring
    while at < len(body) and isinstance(body[at], ast.ImportFrom) and body[at].module == "__future__":  # type: ignore[attr-defined]
        at += 1  # and after its __future__ imports, which must come first
    body.insert(at, ast.Import([ast.alias("dataclasses", "_parity_dataclasses")]))
    return ast.fix_missing_locations(tree), changed


def load_patched_module(path: Path, name: str) -> types.ModuleType:
    """The module ``name`` compiled from ``path`` after :func:`patch_dataclass_defaults`, registered in
    ``sys.modules`` (so a later ``import name`` gets it); ParityError with the reason when it fails."""
    module = types.ModuleType(name)
    module.__file__, module.__package__ = str(path), name.rpartition(".")[0]
    sys.modules[name] = module
    try:
        tree, _ = patch_dataclass_defaults(path.read_text(), str(path))
        exec(compile(tree, str(path), "exec", dont_inherit=True), module.__dict__)  # not our __future__s
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is one line for the user
        sys.modules.pop(name, None)
        raise ParityError(f"cannot load {str(path)!r}: {type(e).__name__}: {e}") from None
    return module


def require_omegaconf() -> None:
    """ParityError (one line, with the fix) unless omegaconf, which the official configs use, is installed."""
    try:
        importlib.import_module("omegaconf")
    except ImportError:
        raise ParityError(
            "the official RQ-Transformer needs omegaconf, not installed here: pip install omegaconf"
        ) from None


def load_official_rqt(code: Path) -> tuple[type[torch.nn.Module], Any]:
    """(``RQTransformer``, ``RQTransformerConfig``) of the checkout at ``code`` (put first on ``sys.path``), its
    ``configs.py`` loaded through :func:`load_patched_module`; ParityError when it cannot load."""
    for name in [n for n in sys.modules if n == "rqvae" or n.startswith("rqvae.")]:
        del sys.modules[name]  # a checkout loaded before must not answer for this one
    sys.path.insert(0, str(code))
    configs = load_patched_module(code / PACKAGE.replace(".", "/") / "configs.py", f"{PACKAGE}.configs")
    try:
        rqt_cls: type[torch.nn.Module] = importlib.import_module(f"{PACKAGE}.transformers").RQTransformer
        return rqt_cls, configs.RQTransformerConfig
    except Exception as e:  # noqa: BLE001 - any failure of foreign code is one line for the user
        raise ParityError(f"cannot import {PACKAGE}.transformers from {str(code)!r}: {type(e).__name__}: {e}") from None


class CodebookAux:
    """Stands in for the official RQ-VAE where the RQ-Transformer reads code vectors: ``get_code_emb_with_depth``
    of codes [..., D] is the codebook rows [..., D, C] (one shared codebook, as in every release)."""

    def __init__(self, codebook: torch.Tensor) -> None:
        self.codebook = codebook.detach()

    def get_code_emb_with_depth(self, codes: torch.Tensor) -> tuple[torch.Tensor, None]:
        """The code vector of every code, depth kept as its own axis (the official method's contract)."""
        return F.embedding(codes, self.codebook), None


def official_arch(gen: Any, spec: TokenSpec, code_dim: int, num_classes: int) -> dict[str, Any]:
    """The ``arch`` section of the official config for benchkit's ``rqtransformer`` options ``gen`` on ``spec``
    (discrete codes h x w x D of a shared codebook of ``code_dim`` vectors): same width, blocks of the spatial
    (body) and depth (head) stacks, heads, vocabulary, positions and dropout, code vectors as inputs (the path of
    every release, which ``benchkit import rqtransformer`` requires)."""
    if spec.kind != "discrete" or spec.depth < 2 or len(spec.grid) != 2:
        raise ParityError(f"the RQ-Transformer needs discrete stacked codes on a 2-D grid, got {spec}")
    if gen.mlp_ratio != 4.0:
        raise ParityError(f"the official blocks have an MLP ratio of 4, benchkit's model has {gen.mlp_ratio}")

    def stack(layers: int) -> dict[str, Any]:
        return {
            "n_layer": layers,
            "block": {"n_head": gen.num_heads, "attn_pdrop": gen.dropout, "resid_pdrop": gen.dropout},
        }

    return {
        "type": "rq-transformer",
        "vocab_size": int(spec.vocab_size or 0),
        "block_size": [*spec.grid, spec.depth],
        "embed_dim": gen.width,
        "input_embed_dim": code_dim,
        **dict.fromkeys(("shared_tok_emb", "shared_cls_emb", "input_emb_vqvae", "head_emb_vqvae"), True),
        "cumsum_depth_ctx": True,
        "vocab_size_cond": num_classes,
        "block_size_cond": 1,
        "embd_pdrop": 0.0,  # benchkit's transformer has no embedding dropout
        "body": stack(gen.spatial_depth),
        "head": stack(gen.depth_depth),
    }


def code_dim_of(cfg: RunConfig) -> int:
    """The code dimension of ``cfg``'s RQ tokenizer (ParityError for another tokenizer)."""
    if cfg.tokenizer.name != "rq":
        raise ParityError(f"the RQ-Transformer parity needs the rq tokenizer, the job has {cfg.tokenizer.name!r}")
    return int(TOKENIZERS.make_config("rq", cfg.tokenizer.options).code_dim)


def arch_of(cfg: RunConfig, num_classes: int) -> dict[str, Any]:
    """:func:`official_arch` of benchkit's generator of ``cfg``."""
    gen = GENERATORS.make_config(cfg.generator.name, cfg.generator.options)  # the options with defaults filled in
    return official_arch(gen, check(cfg).spec, code_dim_of(cfg), num_classes)


def codebook_sets(cfg: RunConfig) -> list[str]:
    """``--set`` overrides that give benchkit's model the official settings: code vectors from the tokenizer's
    codebook as inputs (``code_embedding = "codebook"``), and no label dropout (the official model has none)."""
    code = f'generator.options.code_embedding="codebook" generator.options.codebook_dim={code_dim_of(cfg)}'
    return [*code.split(), "generator.options.label_drop=0.0"]


def release_config(arch: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    """The ``config.yaml`` beside a saved model: ``arch``, and the sampling filter of ``cfg``'s ce head (so the
    imported model samples as benchkit's does)."""
    h = HEADS.make_config(cfg.head.name, cfg.head.options)
    return {"arch": arch, "experiment": {"sample": {"top_k": int(h.top_k), "top_p": float(h.top_p)}}}


def save_official(
    rdir: Path, raw: dict[str, torch.Tensor], ema: dict[str, torch.Tensor], config: dict[str, Any], epoch: int
) -> Path:
    """``rdir/model.pt`` = ``{state_dict, state_dict_ema, epoch}`` (the release layout, EMA entry included) with
    ``rdir/config.yaml`` beside it, the model last (its presence marks a finished save); returns the model file."""
    import yaml

    rdir.mkdir(parents=True, exist_ok=True)
    (rdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tmp, pt = rdir / "model.pt.tmp", rdir / "model.pt"
    torch.save({"state_dict": raw, "state_dict_ema": ema, "epoch": epoch}, tmp)
    tmp.replace(pt)
    return pt


def build_official(rqt: tuple[type[torch.nn.Module], Any], arch: dict[str, Any]) -> torch.nn.Module:
    """The official model of ``arch`` (its config filled in by the official ``RQTransformerConfig.create``)."""
    from omegaconf import OmegaConf

    rqt_cls, config_cls = rqt
    return rqt_cls(config_cls.create(OmegaConf.create(arch)))


def train_official(rqt: tuple[type[torch.nn.Module], Any], c: RunConfig, out: Path, progress: bool) -> Path:
    """Train the official RQ-Transformer on the cached codes of ``c``'s tokenizer with ``c``'s recipe; returns the
    saved ``model.pt`` (reused when present)."""
    rdir = out / "official" / f"seed-{c.seed}"
    if (rdir / "model.pt").is_file() and (rdir / "config.yaml").is_file():
        return rdir / "model.pt"
    device = pick_device(c.device)
    combo = check(c)
    train, _ = load_splits(c)
    tok = train_tokenizer(c, train, progress=progress)
    cache, labels = token_cache(tok, combo.kind, train), train.labels
    mirror = token_cache(tok, combo.kind, train, mirrored=True) if c.train.hflip else None
    arch = arch_of(c, train.num_classes)
    torch.manual_seed(c.seed)
    model = build_official(rqt, arch).to(device)  # initialised by its own constructor, as released
    aux = CodebookAux(tok.module.codebook.embed.to(device))  # what the import copies into the model

    def get_batch(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cached = cache[idx] if mirror is None else random_mirror(cache[idx], mirror[idx])
        return tok.module.tokens_from_cache(cached.to(device), combo.kind), labels[idx].to(device)  # [B, h, w, D]

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> LossOutput:
        codes, cond = batch
        return LossOutput(m.compute_loss(m(codes, aux, cond=cond), codes), {})  # type: ignore[operator]

    fp = fingerprint("training-parity-official-rqt", run_fingerprint(c), arch)
    with cuda_calls_on(device), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast", category=FutureWarning)
        fit(model, loss_fn, get_batch, len(train), c.train, rdir, seed=c.seed, fingerprint=fp, show_progress=progress)
    tensors, _ = load_checkpoint(rdir / CHECKPOINT)
    raw = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k: v.detach().cpu() for k, v in model.state_dict().items()}  # fit leaves the EMA weights in the model
    epoch = math.ceil(c.train.steps * c.train.batch_size / len(train))
    return save_official(rdir, raw, ema, release_config(arch, c), epoch)


def eval_overrides(samples: int, reference: int) -> list[str]:
    """``benchkit eval --set`` values: the settings of SETTINGS (one step per position, as the model needs)."""
    return sampling_overrides(SETTINGS, samples, reference)


def format_table(results: dict[str, dict[str, list[SeedFid]]]) -> tuple[str, list[str]]:
    """(markdown table, verdict lines) of ``results[variant][setting label]``."""
    return parity_common.format_table(results, VARIANTS, SETTINGS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rq-code", required=True, help=f"a checkout of github.com/{REPO} ({CODE} inside)")
    add_run_options(p, Path("results/training-parity-rqt"))
    return check_counts(p, p.parse_args(argv))


def run(a: argparse.Namespace) -> dict[str, Any]:
    """The whole comparison; returns the JSON record (the table is in ``record["table"]``)."""
    code = check_code(a.rq_code, CODE, REPO, "--rq-code")
    require_omegaconf()
    rqt = load_official_rqt(code)
    plan, out, progress = begin(a, COMBO)
    cfg, steps = plan.cfg, plan.steps
    arch = arch_of(cfg, load_splits(cfg)[0].num_classes)  # refuses a shape the official model cannot take, early
    print(f"training parity: {steps} steps per model, {a.seeds} seed(s), recipe {recipe_of(cfg)}", file=sys.stderr)
    flags = run_flags(a.threads, progress)
    runs = {"default": train_benchkit(plan.pinned, flags)}
    runs["codebook"] = train_benchkit([*plan.pinned, *codebook_sets(cfg)], flags)
    runs["official"] = []
    for c, tok_run in zip(seed_configs(cfg), runs["default"]):
        pt = train_official(rqt, c, out, progress)
        runs["official"].append(import_run(["rqtransformer", str(pt), "--tokenizer", str(tok_run)]))
    sets = eval_overrides(a.samples, a.reference)
    return finish(a, plan, runs, sets, flags, VARIANTS, SETTINGS, rq_code=str(code), official_arch=arch)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the table and the verdicts (exit 2 with one line on a bad setup)."""
    return run_main(parse_args(argv), run)


if __name__ == "__main__":
    sys.exit(main())
