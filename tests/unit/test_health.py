"""Sample health: verdicts on synthetic tokens, a diverging head and a constant generator end to end through
``generate_images``, the rows and tables that carry the verdict, tuning that never picks a failing setting, and
images bit-identical with and without the check."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from benchkit.core.checkpoint import save_checkpoint
from benchkit.core.config import RunConfig, SampleSettings, resolve
from benchkit.core.interfaces import TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.metrics import health as H
from benchkit.metrics.health import SampleHealth, token_reference
from benchkit.sampling.generate import generate_images
from benchkit.training.artifacts import TrainedRun, TrainedTokenizer

GRID, DIM, VOCAB, CLASSES = (2, 2), 3, 16, 3


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _summary(tokens: torch.Tensor, reference: H.TokenReference | None, images: torch.Tensor | None = None):  # noqa: ANN202
    check = SampleHealth(reference)
    for part in tokens.split(16):  # streamed, as generate_images feeds it
        check.update_tokens(part)
    if images is not None:
        for part in images.split(16):
            check.update_images(part)
    return check.summary()


# ------------------------------------------------------------------------------------------ synthetic verdicts
TRAIN = _randn(400, 4, 4, 8, seed=1)  # continuous training tokens, unit std per channel
IMAGES = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def test_samples_like_the_training_tokens_are_ok() -> None:
    s = _summary(_randn(100, 4, 4, 8, seed=3), token_reference(TRAIN), IMAGES)
    assert s.health == "ok" and s.health_reason is None and not s.failed
    assert s.token_nonfinite == 0 and s.sample_distinct == 1.0
    assert s.token_std_ratio_max is not None and s.token_std_ratio_min is not None
    assert 0.8 < s.token_std_ratio_min <= s.token_std_ratio_max < 1.25
    assert s.token_out_of_range == 0
    assert s.sample_pixel_std is not None and s.sample_pixel_std > 50


def test_a_huge_std_is_diverged() -> None:
    """MAR's diverged Diffusion Loss: sampled std ~2800 where the data's is ~1."""
    s = _summary(2800 * _randn(100, 4, 4, 8, seed=3), token_reference(TRAIN), IMAGES)
    assert s.health == "diverged" and s.failed
    assert s.token_std_ratio_max is not None and 2000 < s.token_std_ratio_max < 4000
    assert s.token_out_of_range is not None and s.token_out_of_range > 0.99
    assert "training std" in (s.health_reason or "")


def test_a_shift_off_the_training_range_is_diverged_and_a_hot_sampler_is_not() -> None:
    ref = token_reference(TRAIN)
    assert _summary(8 + _randn(100, 4, 4, 8, seed=3), ref).health == "diverged"
    assert _summary(1.5 * _randn(100, 4, 4, 8, seed=3), ref).health == "ok"  # temperature 1.5: too hot, not broken
    # bounded but 3x too wide (an undertrained Diffusion Loss): weak, not meaningless
    wide = _summary(3 * (2 * torch.rand(100, 4, 4, 8, generator=torch.Generator().manual_seed(3)) - 1) * 1.7, ref)
    assert wide.health == "ok" and wide.token_std_ratio_max is not None and wide.token_std_ratio_max > 2.5


def test_a_single_non_finite_value_is_diverged() -> None:
    tokens = _randn(100, 4, 4, 8, seed=3)
    tokens[7, 1, 2, 3] = float("nan")
    s = _summary(tokens, token_reference(TRAIN), IMAGES)
    assert s.health == "diverged" and s.token_nonfinite == pytest.approx(1 / tokens.numel())
    tokens[7, 1, 2, 3] = float("inf")
    assert _summary(tokens, None).health == "diverged"  # no reference needed for that


def test_constant_samples_are_collapsed() -> None:
    const = torch.full((100, 3, 8, 8), 90, dtype=torch.uint8)
    s = _summary(torch.zeros(100, 4, 4, 8), token_reference(TRAIN), const)
    assert s.health == "collapsed" and s.failed
    assert s.sample_distinct == pytest.approx(0.01) and s.sample_pixel_std == 0.0
    assert s.token_std_ratio_min is not None and s.token_std_ratio_min < H.COLLAPSED_STD_RATIO
    # one channel lost is enough
    shrunk = _randn(100, 4, 4, 8, seed=3)
    shrunk[..., 5] *= 0.01
    assert _summary(shrunk, token_reference(TRAIN)).health == "collapsed"
    # constant images alone (diverse tokens a decoder ignores)
    assert _summary(_randn(100, 4, 4, 8, seed=3), token_reference(TRAIN), const).health == "collapsed"


def test_discrete_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    ref = token_reference(torch.randint(0, 10, (300, 4, 4), generator=g))  # ids 10..15 never used in training
    ok = _summary(torch.randint(0, 10, (100, 4, 4), generator=g), ref)
    assert ok.health == "ok" and ok.token_std_ratio_max is None and ok.token_out_of_range == 0
    unseen = _summary(torch.randint(10, 16, (100, 4, 4), generator=g), ref)
    assert unseen.token_out_of_range == 1.0 and unseen.health == "ok"  # reported, not judged (see the module)
    same = torch.randint(0, 10, (1, 4, 4), generator=g).expand(100, 4, 4)
    assert _summary(same, ref).health == "collapsed"
    greedy = torch.randint(0, 10, (CLASSES, 4, 4), generator=g).repeat(30, 1, 1)  # one sample per class
    assert _summary(greedy, ref).sample_distinct == pytest.approx(CLASSES / 90)
    assert _summary(greedy, ref).health == "collapsed"


def test_a_nearly_constant_training_channel_does_not_read_as_divergence() -> None:
    """A code dimension the training tokens barely use (std 1e-4) against samples that keep it small (1e-3)."""
    train = TRAIN.clone()
    train[..., 0] *= 1e-4
    sampled = _randn(100, 4, 4, 8, seed=3)
    sampled[..., 0] *= 1e-3
    assert _summary(sampled, token_reference(train)).health == "ok"


def test_nothing_seen_is_unchecked_and_a_mismatched_reference_is_dropped() -> None:
    assert SampleHealth(token_reference(TRAIN)).summary().health == "unchecked"
    assert not H.is_failing("unchecked") and H.is_failing("diverged") and not H.is_failing(None)
    s = _summary(_randn(50, 4, 4, 6, seed=3), token_reference(TRAIN))  # 6 channels against 8
    assert s.health == "ok" and s.token_std_ratio_max is None


def test_updates_leave_their_arguments_alone() -> None:
    tokens, images = _randn(20, 4, 4, 8, seed=3).double(), IMAGES[:20].clone()
    before = tokens.clone(), images.clone()
    check = SampleHealth(token_reference(TRAIN))
    check.update_tokens(tokens)
    check.update_images(images)
    assert torch.equal(tokens, before[0]) and torch.equal(images, before[1])


# ------------------------------------------------------------------------- end to end through generate_images
SPECS = {
    "continuous": TokenSpec("continuous", GRID, 1, dim=DIM),
    "discrete": TokenSpec("discrete", GRID, 1, vocab_size=VOCAB),
}
HEAD = {"continuous": "diffloss", "discrete": "ce"}
HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "continuous": {"width": 32, "depth": 1, "batch_mul": 1, "sampling_steps": 3},
    "discrete": {},
}


class PoolTokenizer(nn.Module):
    """A stand-in tokenizer: continuous tokens are the image average-pooled to the grid, ids a quantisation of it;
    decoding upsamples them back (so different tokens give different images)."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def encode_for_cache(self, images: torch.Tensor, kind: str) -> torch.Tensor:
        pooled = nn.functional.adaptive_avg_pool2d(images, GRID).permute(0, 2, 3, 1) * 4  # [B, 2, 2, 3]
        if kind == "continuous":
            return pooled
        return ((pooled.mean(-1).tanh() + 1) / 2 * (VOCAB - 1)).round().long()

    def tokens_from_cache(self, cached: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> Any:
        return cached

    def decode(self, tokens: torch.Tensor, kind: str) -> torch.Tensor:
        x = tokens.float() if kind == "continuous" else tokens.float()[..., None].expand(*tokens.shape, DIM) / VOCAB
        return nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(8, 8)).tanh()


def _generator(kind: str) -> Any:
    torch.manual_seed(0)
    return GENERATORS.create(
        "ar", spec=SPECS[kind], head=HEAD[kind], head_options=HEAD_OPTIONS[kind], num_classes=CLASSES,
        width=32, depth=2, num_heads=2,
    ).eval()  # fmt: skip


def _train_images(n: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


def _run(kind: str, tmp_path: Path, cfg: RunConfig | None = None) -> TrainedRun:
    tok = TrainedTokenizer(PoolTokenizer(), tmp_path / "tok", "fp", None)
    combo = SimpleNamespace(kind=kind, spec=SPECS[kind])
    return TrainedRun(cfg or RunConfig(), _generator(kind), tok, combo, tmp_path / "run", None)  # type: ignore[arg-type]


def _patch_head(gen: Any, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    original = gen.head.sample

    def sample(cond: torch.Tensor, **kw: Any) -> torch.Tensor:
        out = original(cond, **kw)
        if how == "huge":
            return out * 1e5
        if how == "randn":  # well-behaved: the training tokens' spread
            return torch.randn(out.shape, generator=kw.get("generator"), device=out.device)
        return torch.zeros_like(out)

    monkeypatch.setattr(gen.head, "sample", sample)


@pytest.mark.parametrize(("kind", "how", "verdict"), [
    ("continuous", "huge", "diverged"),
    ("continuous", "constant", "collapsed"),
    ("discrete", "constant", "collapsed"),
])  # fmt: skip
def test_a_broken_head_is_caught_end_to_end(
    kind: str, how: str, verdict: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _run(kind, tmp_path)
    reference = run.token_reference(_train_images())
    assert reference is not None and reference.kind == kind
    _patch_head(run.generator, monkeypatch, how)
    check = SampleHealth(reference)
    labels = torch.arange(24) % CLASSES
    images = run.sample_images(labels, SampleSettings(), seed=0, batch_size=8, health=check)
    s = check.summary()
    assert s.health == verdict, s
    assert len(images) == 24 and s.row()["health"] == verdict
    assert set(s.row()) >= {"health", "token_std_ratio_max", "token_std_ratio_min", "token_out_of_range"}
    assert {"token_nonfinite", "sample_distinct", "sample_pixel_std"} <= set(s.row())


def test_a_well_behaved_continuous_head_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run("continuous", tmp_path)
    # reference tokens of unit spread, as the tokenizer scale makes them
    monkeypatch.setattr(run, "_cached_tokens", lambda: _randn(256, *GRID, DIM, seed=4))
    _patch_head(run.generator, monkeypatch, "randn")
    check = SampleHealth(run.token_reference())
    run.sample_images(torch.arange(48) % CLASSES, SampleSettings(), seed=0, batch_size=16, health=check)
    assert check.summary().health == "ok", check.summary()


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_images_are_bit_identical_with_and_without_the_check(kind: str) -> None:
    gen, tok = _generator(kind), PoolTokenizer()
    labels = torch.arange(10) % CLASSES
    settings = SampleSettings(cfg=2.0)
    plain = generate_images(gen, tok, kind, labels, settings, seed=3, batch_size=4)  # type: ignore[arg-type]
    check = SampleHealth(token_reference(tok.encode_for_cache(_train_images().float() / 127.5 - 1, kind)))
    seen = generate_images(gen, tok, kind, labels, settings, seed=3, batch_size=4, health=check)  # type: ignore[arg-type]
    assert torch.equal(plain, seen)
    assert check.samples == 10 and check.images == 10


def test_the_reference_comes_from_the_token_cache_when_there_is_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-memory cache (safetensors) and sharded cache: read, spread over the rows, never re-encoded; another
    tokenizer's cache is ignored."""
    run = _run("continuous", tmp_path)
    monkeypatch.setattr(run.tokenizer.module, "encode_for_cache", lambda *a: pytest.fail("encoded despite a cache"))
    cache = 3 + _randn(2000, *GRID, DIM, seed=6)
    (tmp_path / "tok").mkdir()
    save_checkpoint(tmp_path / "tok" / "tokens-continuous", {"cache": cache}, {"fingerprint": "fp", "n": 2000})
    ref = run.token_reference()
    assert ref is not None and ref.n_samples == 500  # every 4th row: at most REFERENCE_IMAGES
    assert ref.mean is not None and torch.allclose(ref.mean, torch.full((DIM,), 3.0, dtype=torch.float64), atol=0.1)
    assert run.token_reference() is ref  # once per run

    shards = tmp_path / "tok2" / "tokens-continuous-shards"
    shards.mkdir(parents=True)
    np.save(shards / "shard-00000.npy", (-2 + _randn(700, *GRID, DIM, seed=7)).numpy())
    index = {"n": 700, "shard_size": 700, "key": "fp2-continuous", "mirrored": False}
    (shards / "index.json").write_text(json.dumps(index))
    other = _run("continuous", tmp_path)
    other.tokenizer = TrainedTokenizer(other.tokenizer.module, tmp_path / "tok2", "fp2", None)
    monkeypatch.setattr(other.tokenizer.module, "encode_for_cache", lambda *a: pytest.fail("encoded"))
    ref2 = other.token_reference()
    assert ref2 is not None and ref2.n_samples == 350 and ref2.mean is not None and float(ref2.mean.mean()) < -1.8

    stranger = _run("continuous", tmp_path)
    stranger.tokenizer = TrainedTokenizer(PoolTokenizer(), tmp_path / "tok", "another-fp", None)
    assert stranger.token_reference() is None  # the cache is another tokenizer's and no images were given


# --------------------------------------------------------------------------------------------- rows and tables
def test_generator_rows_and_the_table_carry_the_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import benchkit.evaluation.evaluate as ev
    from benchkit.results.report import write_report
    from benchkit.results.store import read_rows
    from benchkit.results.tables import write_tables

    monkeypatch.setattr(ev, "generation_metrics", lambda fake, *a, **k: {"fid": 12.5, "features": "test"})
    monkeypatch.setattr(ev, "sampling_cost", lambda *a: {"images_per_s": 1.0})
    monkeypatch.setattr(ev, "run_train_flops", lambda run: 0)
    results = tmp_path / "results"
    labels = torch.arange(24) % CLASSES
    for i, how in enumerate(("randn", "huge")):
        run = _run("continuous", tmp_path / how)
        monkeypatch.setattr(run, "_cached_tokens", lambda: _randn(256, *GRID, DIM, seed=4))
        _patch_head(run.generator, monkeypatch, how)
        run.token_reference(_train_images())
        s = SampleSettings(steps=4, temperature=1.0 + i)
        row = ev._measure_generator(run, s, f"r{i}", labels, _train_images(), None, 1, results, True, first=False)
        assert row is not None and row["health"] == ("ok" if how == "randn" else "diverged")
        assert row["fid"] == 12.5 and row["token_std_ratio_max"] is not None
    rows = read_rows(results)
    assert list(rows["health"]) == ["ok", "diverged"]
    written = write_tables(rows, results)
    table = pd.read_csv(written["table.csv"])
    cols = list(table.columns)
    assert cols.index("health") == cols.index("fid") + 1 or cols.index("health") > cols.index("fid")
    assert {"token_std_ratio_max", "token_std_ratio_min", "token_out_of_range", "token_nonfinite"} <= set(cols)
    assert sorted(table["health"]) == ["diverged", "ok"]
    md = written["table.md"].read_text()
    assert "WARNING: 1 row(s) failed the sample health check" in md and "temperature=2.0] diverged" in md
    html = write_report(results, out_root=tmp_path).read_text(encoding="utf-8")
    assert "\u26a0 DIVERGED" in html and "failed the sample health check" in html


# ---------------------------------------------------------------------------------------------------- tuning
def test_tune_never_picks_a_failing_candidate(caplog: pytest.LogCaptureFixture) -> None:
    from benchkit.evaluation.tuning import tune

    val = (128 + 40 * _randn(200, 3, 4, 4, seed=9)).clamp(0, 255).to(torch.uint8)

    def sample(s: SampleSettings) -> torch.Tensor:  # std = temperature: 1.0 is the best match
        return (128 + 40 * s.temperature * _randn(200, 3, 4, 4, seed=0)).clamp(0, 255).to(torch.uint8)

    def features(x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1)[:, :6]

    opts = [SampleSettings(temperature=t) for t in (0.5, 1.0, 2.0)]
    assert tune(opts, sample, features, val)[0].temperature == 1.0  # the healthy truth
    with caplog.at_level(logging.INFO, logger="benchkit.evaluation.tuning"):
        best, scored = tune(opts, sample, features, val, failure=lambda s: "diverged" if s.temperature == 1.0 else None)
    assert best.temperature != 1.0
    assert math.isinf(dict((s.temperature, v) for s, v in scored)[1.0])
    assert sum("skipping" in r.message for r in caplog.records) == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="benchkit.evaluation.tuning"):
        best, _ = tune(opts, sample, features, val, failure=lambda s: "collapsed")
    assert best == opts[0]
    assert any("every candidate failed" in r.message and r.levelno == logging.WARNING for r in caplog.records)


def test_tune_run_health_checks_each_candidates_samples(monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidate whose tokens hold NaN is skipped before its samples are featurised; the base is kept."""
    import benchkit.training.artifacts
    from benchkit.evaluation.tuning import tune_run

    def fake_images(generator, tokenizer, kind, labels, s, *, seed, batch_size, health=None, **_):  # noqa: ANN001, ANN202
        tokens = _randn(len(labels), 2, 2, 3, seed=int(10 * s.cfg))
        if s.cfg == 2.0:
            tokens[0, 0, 0, 0] = float("nan")
        if health is not None:
            health.update_tokens(tokens)
        return torch.randint(
            0, 256, (len(labels), 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
        )

    monkeypatch.setattr(benchkit.training.artifacts, "generate_images", fake_images)
    featurised: list[int] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        featurised.append(len(x))
        return x.float().flatten(1)[:, :6]

    cfg = resolve("tiny", None, ["data.image_size=16", "eval.tune=[{ cfg = 2.0 }]", "eval.tune_samples=8"])
    tok = TrainedTokenizer(None, Path("tok"), "fp", None)
    run = TrainedRun(cfg, None, tok, SimpleNamespace(kind="continuous"), Path("run"), None)  # type: ignore[arg-type]
    out = tune_run(run, [cfg.sample.settings()], SimpleNamespace(features=features), torch.empty(0), 10)
    assert out == [cfg.sample.settings()] and featurised == [8, 8]  # validation, base; never the NaN candidate


# ------------------------------------------------------------------------------------------------ two ranks
def _rank(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        check = SampleHealth(token_reference(TRAIN))
        tokens = _randn(40, 4, 4, 8, seed=3)
        check.update_tokens(tokens[rank::2] if rank == 0 else torch.cat([tokens[1::2], tokens[:4]]))  # 4 repeats
        check.update_images(IMAGES[rank * 50 : (rank + 1) * 50])
        check.all_reduce()
        if rank == 0:
            Path(out).write_text(json.dumps(check.summary().row()))
    finally:
        dist.destroy_process_group()


def test_all_reduce_over_two_ranks_equals_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "row.json"
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_rank, args=(f"tcp://127.0.0.1:{port}", str(out)), nprocs=2, join=True)
    tokens = _randn(40, 4, 4, 8, seed=3)
    single = SampleHealth(token_reference(TRAIN))
    single.update_tokens(torch.cat([tokens, tokens[:4]]))
    single.update_images(IMAGES)
    want, got = single.summary().row(), json.loads(out.read_text())
    assert got["sample_distinct"] == pytest.approx(40 / 44) and got["health"] == want["health"] == "ok"
    for key in ("token_std_ratio_max", "token_std_ratio_min", "token_out_of_range", "sample_pixel_std"):
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
