"""Per-row tuning: the grid, the pick, the validation split, and a search whose best setting is known."""

from __future__ import annotations

import pytest
import torch

from benchkit.core.errors import ConfigError
from benchkit.evaluation.tuning import candidates, pick_best, rows_to_tune, tune, tune_settings, validation_images
from benchkit.sampling.generate import SampleSettings


def test_candidates_start_at_the_base_and_drop_repeats() -> None:
    base = SampleSettings(steps=8, temperature=1.0)
    out = candidates(base, [{"temperature": 1.0}, {"temperature": 0.8}, {"cfg": 2.0, "cfg_schedule": "linear"}])
    assert out == [
        base,
        SampleSettings(steps=8, temperature=0.8),
        SampleSettings(steps=8, cfg=2.0, cfg_schedule="linear"),
    ]
    with pytest.raises(ConfigError, match=r"eval.tune\[0\] has key 'steps'.*valid: temperature, cfg, cfg_schedule"):
        candidates(base, [{"steps": 4}])
    with pytest.raises(ConfigError, match=r"eval.tune\[1\]: temperature must be >= 0"):
        candidates(base, [{"cfg": 2.0}, {"temperature": -0.5}])


def test_pick_best_takes_the_lowest_score_first_on_ties() -> None:
    opts = [SampleSettings(temperature=t) for t in (0.5, 1.0, 1.5, 2.0)]
    best, scored = pick_best(opts, lambda s: abs(s.temperature - 1.25))
    assert best.temperature == 1.0  # 1.0 and 1.5 tie: the first wins
    assert [v for _, v in scored] == [0.75, 0.25, 0.25, 0.75]


@pytest.mark.parametrize("metric", ["kid", "fid"])
def test_tuning_finds_the_known_best_temperature(metric: str) -> None:
    """Samples are noise of std = temperature; the validation images have std 1: temperature 1 is the best."""

    def sample(s: SampleSettings) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        return (128 + 40 * s.temperature * torch.randn(400, 3, 4, 4, generator=g)).clamp(0, 255).to(torch.uint8)

    def features(x: torch.Tensor) -> torch.Tensor:
        return x.float().flatten(1)[:, :6]

    val = (128 + 40 * torch.randn(400, 3, 4, 4, generator=torch.Generator().manual_seed(9))).clamp(0, 255)
    grid = candidates(SampleSettings(temperature=0.5), [{"temperature": t} for t in (0.25, 1.0, 2.0, 3.0)])
    best, scored = tune(grid, sample, features, val.to(torch.uint8), metric=metric)
    assert best.temperature == 1.0
    assert len(scored) == 5 and min(v for _, v in scored) == dict((s.temperature, v) for s, v in scored)[1.0]


def test_validation_split_is_neither_train_nor_test_reference() -> None:
    from benchkit.data.loading import load_dataset

    val = validation_images("shapes", {"num_train": 50, "num_test": 50}, torch.empty(0), 50, 40, image_size=16)
    train = load_dataset("shapes", split="train", image_size=16, num_train=50, num_test=50).images
    test = load_dataset("shapes", split="test", image_size=16, num_train=50, num_test=50).images
    assert val.shape == (40, 3, 16, 16)
    for other in (train, test):
        assert not any(torch.equal(v, o) for v in val for o in other)
    spare = torch.arange(10).view(10, 1, 1, 1).to(torch.uint8).expand(10, 3, 2, 2)
    assert torch.equal(validation_images("cifar10", {}, spare, 6, 4, image_size=2), spare[6:])
    with pytest.raises(ConfigError, match="needs 5 validation images after the 6 test reference images"):
        validation_images("cifar10", {}, spare, 6, 5, image_size=2)


def test_every_row_that_only_changes_untuned_fields_is_tuned_on_its_own() -> None:
    """MAR's base (8 steps) and its 16-step sweep row each get their own best CFG; an explicit CFG row is kept."""
    base = SampleSettings(steps=8)
    rows = [base, SampleSettings(steps=16), SampleSettings(steps=8, cfg=2.0, cfg_schedule="linear")]
    assert rows_to_tune(rows) == [True, True, False]
    best_cfg = {8: 3.0, 16: 2.0}  # the known best scale of each step count
    searched: list[tuple[int, str]] = []

    def tune_one(options: list[SampleSettings], row: str) -> SampleSettings:
        searched.append((len(options), row))
        return min(options, key=lambda s: abs(s.cfg - best_cfg[s.steps]))

    grid = [{"cfg": c, "cfg_schedule": "linear"} for c in (2.0, 3.0)]
    out = tune_settings(rows, grid, tune_one)
    assert out == [
        SampleSettings(steps=8, cfg=3.0, cfg_schedule="linear"),
        SampleSettings(steps=16, cfg=2.0, cfg_schedule="linear"),
        rows[2],
    ]
    assert searched == [(3, ""), (3, " [" + rows[1].label() + "]")]
    # a tuned row that lands on an explicit row's setting is not measured twice
    assert tune_settings(rows, grid, lambda o, r: o[1] if r == "" else o[0]) == [rows[2], rows[1]]


def test_kid_ranks_a_narrow_setting_as_many_samples_would_where_small_sample_fid_does_not() -> None:
    """Two settings: A has the reference's mean and spread; B is shrunk to 0.8x the spread (a lower temperature)
    and shifted by 0.1. With many samples A is the better one by both metrics. With about as many samples as
    feature dimensions (100 of 64, as tuning's 200 samples of wide features), FID's bias, which grows with the
    samples' own spread, favours the narrow B (10 of 10 seeds tried); KID, unbiased, picks A (10 of 10)."""
    d, n_small, n_big = 64, 100, 4000
    g = torch.Generator().manual_seed(3)

    def draw(n: int, scale: float, shift: float) -> torch.Tensor:
        return shift + scale * torch.randn(n, d, generator=g)

    opts = [SampleSettings(temperature=1.0), SampleSettings(temperature=0.8)]
    params = {1.0: (1.0, 0.0), 0.8: (0.8, 0.1)}
    ref_big, ref_small = draw(n_big, 1.0, 0.0), draw(n_small, 1.0, 0.0)
    big = {t: draw(n_big, *params[t]) for t in params}
    small = {t: draw(n_small, *params[t]) for t in params}
    for metric in ("fid", "kid"):  # the truth, at 4000 samples
        best, _ = tune(opts, lambda s: big[s.temperature], lambda x: x, ref_big, metric=metric)
        assert best.temperature == 1.0
    assert tune(opts, lambda s: small[s.temperature], lambda x: x, ref_small, metric="fid")[0].temperature == 0.8
    assert tune(opts, lambda s: small[s.temperature], lambda x: x, ref_small, metric="kid")[0].temperature == 1.0
    with pytest.raises(ConfigError, match="unknown eval.tune_metric 'mmd'; valid: kid, fid"):
        tune(opts, lambda s: small[s.temperature], lambda x: x, ref_small, metric="mmd")


def test_tune_run_scores_tune_samples_against_tune_reference_validation_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """``eval.tune_samples`` samples per candidate, scored against ``eval.tune_reference`` validation images (as many
    as the samples when unset); a reference below 2 is refused with the option's name."""
    from pathlib import Path
    from types import SimpleNamespace

    import benchkit.training.artifacts
    from benchkit.core.config import resolve
    from benchkit.evaluation.tuning import tune_run
    from benchkit.training.artifacts import TrainedRun, TrainedTokenizer

    def fake_images(generator, tokenizer, kind, labels, s, *, seed, batch_size, **_):  # noqa: ANN001, ANN202
        g = torch.Generator().manual_seed(int(10 * s.cfg))
        return torch.randint(0, 256, (len(labels), 3, 16, 16), generator=g, dtype=torch.uint8)

    monkeypatch.setattr(benchkit.training.artifacts, "generate_images", fake_images)
    featurised: list[int] = []

    def features(x: torch.Tensor) -> torch.Tensor:
        featurised.append(len(x))
        return x.float().flatten(1)[:, :6]

    for extra, expected in ((["eval.tune_reference=30"], [30, 8, 8]), ([], [8, 8, 8])):
        cfg = resolve("tiny", None, ["data.image_size=16", "eval.tune=[{ cfg = 2.0 }]", "eval.tune_samples=8", *extra])
        tok = TrainedTokenizer(None, Path("tok"), "fp", None)  # type: ignore[arg-type]
        run = TrainedRun(cfg, None, tok, SimpleNamespace(kind="tokens"), Path("run"), None)  # type: ignore[arg-type]
        featurised.clear()
        out = tune_run(run, [cfg.sample.settings()], SimpleNamespace(features=features), torch.empty(0), 10)
        assert featurised == expected and len(out) == 1 and out[0].cfg in (1.0, 2.0)
    with pytest.raises(ConfigError, match="tune_reference must be >= 2"):
        resolve("tiny", None, ["eval.tune_reference=1"])
