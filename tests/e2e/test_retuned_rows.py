"""A model evaluated again under another tuning appears once in the tables, at the setting the latest tuning
chose; rows measured without tuning, and tuned rows of another evaluation (another sample count), stay."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _with_eval(run, **changes):  # the run with other eval options (they are not part of its identity)
    return dataclasses.replace(run, cfg=dataclasses.replace(run.cfg, eval=dataclasses.replace(run.cfg.eval, **changes)))


def test_a_retuned_model_keeps_only_its_latest_tuned_row(
    reference_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchkit.evaluation import evaluate, tuning
    from benchkit.results.store import read_rows
    from benchkit.results.tables import write_tables
    from benchkit.training.checks import load_splits
    from benchkit.training.loading import load_run

    run = load_run(reference_run)
    splits = load_splits(run.cfg)
    results = tmp_path / "results"
    base = run.cfg.sample.settings()
    picks: list[float] = []

    def fake_tune(run_, settings, *args):  # the tuning's choice without its sampling: cfg = the next pick
        if not run_.cfg.eval.tune:
            return settings
        return [dataclasses.replace(settings[0], cfg=picks.pop(0)), *settings[1:]]

    monkeypatch.setattr(tuning, "tune_run", fake_tune)
    plain = evaluate.evaluate_run(run, *splits, results)  # no eval.tune: never superseded
    assert plain[0]["cfg"] == base.cfg and "tuned_in" not in plain[0]

    tuned = _with_eval(run, tune=[{"cfg": 2.0}, {"cfg": 3.0}])
    picks += [2.0, 3.0, 2.0]
    first = evaluate.evaluate_run(tuned, *splits, results)
    second = evaluate.evaluate_run(tuned, *splits, results)
    assert first[0]["cfg"] == 2.0 and second[0]["cfg"] == 3.0
    assert first[0]["tuned_in"] == second[0]["tuned_in"]
    df = read_rows(results)
    assert sorted(df["cfg"]) == [base.cfg, 3.0]  # the cfg 2 row of the first tuning is left out
    assert "tuning_selection" not in set(df["kind"])

    # tuned again to the first choice: its stored row is current again (and not measured a second time)
    assert evaluate.evaluate_run(tuned, *splits, results) == []
    assert sorted(read_rows(results)["cfg"]) == [base.cfg, 2.0]

    # another evaluation of the same model (more samples) has rows of its own, which do not replace these
    more = _with_eval(tuned, num_samples=120)
    picks.append(3.0)
    evaluate.evaluate_run(more, *splits, results)
    df = read_rows(results)
    assert sorted(zip(df["cfg"], df["n_samples"])) == [(base.cfg, 100), (2.0, 100), (3.0, 120)]
    table = write_tables(df, results)
    assert (results / "table.csv").is_file() and table
