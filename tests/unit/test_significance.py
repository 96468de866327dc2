"""Significance marks between adjacent rows, the bootstrap FID noise, and the head-deviation labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchkit.core.errors import ConfigError
from benchkit.evaluation.deviations import head_deviations
from benchkit.metrics.frechet import bootstrap_fid_std
from benchkit.results.significance import SIG_COLUMN, adjacent_significance, with_significance
from benchkit.results.tables import write_tables


def table() -> pd.DataFrame:
    # sorted by FID: d (10), a (12), c (12.5), b (30), a at another setting (40); e has no FID
    return pd.DataFrame(
        {
            "run": ["a", "b", "c", "d", "e", "a"],
            "fid": [12.0, 30.0, 12.5, 10.0, np.nan, 40.0],
            "seed_spread_fid": [1.0, 0.2, 0.4, 2.5, 0.1, np.nan],  # the last row (run a, another setting) uses a's 1.0
        }
    )


def test_adjacent_rows_marked_against_the_larger_spread() -> None:
    marks = adjacent_significance(table())
    # d vs a: gap 2.0 < max(2.5, 1.0) -> no; a vs c: 0.5 < 1.0 -> no; c vs b: 17.5 > 0.4 -> yes;
    # b vs a@40: 10 > max(0.2, 1.0 from run a) -> yes; a@40 is the last row with an FID; e has none
    assert marks.fillna("-").tolist() == ["no", "yes", "yes", "no", "-", "-"]


def test_tighter_spread_makes_the_same_gap_significant() -> None:
    df = table()
    df.loc[3, "seed_spread_fid"] = 0.5  # d's spread now below the 2.0 gap to a (a's is 1.0)
    assert adjacent_significance(df)[3] == "yes"
    df["seed_spread_fid"] = np.nan  # no noise estimate anywhere: nothing can be claimed
    assert adjacent_significance(df).isna().all()
    assert SIG_COLUMN not in with_significance(df).columns  # nothing to judge: no column
    with pytest.raises(ConfigError, match="needs a 'fid' column"):
        adjacent_significance(df.drop(columns="fid"))


def test_tables_carry_the_marks(tmp_path: Path) -> None:
    df = table().assign(kind="generator", head_deviations="none")
    written = write_tables(df, tmp_path)
    csv = pd.read_csv(written["table.csv"])
    # the table lists the rows by FID (no FID last); each keeps the mark of the test above
    assert csv["fid"].fillna(-1).tolist() == [10.0, 12.0, 12.5, 30.0, 40.0, -1]
    assert csv[SIG_COLUMN].fillna("-").tolist() == ["no", "no", "yes", "yes", "-", "-"]
    md = written["table.md"].read_text()
    assert "fid_gap_significant" in md and "head_deviations" in md


def test_bootstrap_noise_shrinks_with_more_samples() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4000, 4))
    mu, sigma = ref.mean(0), np.cov(ref, rowvar=False)
    small = bootstrap_fid_std(rng.normal(size=(50, 4)), mu, sigma, rounds=30)
    large = bootstrap_fid_std(rng.normal(size=(2000, 4)), mu, sigma, rounds=30)
    assert 0 < large < small
    with pytest.raises(ConfigError, match="rounds must be >= 2"):
        bootstrap_fid_std(ref, mu, sigma, rounds=1)


def test_head_deviations_list_what_differs_from_the_paper() -> None:
    assert head_deviations("diffloss", {}) == "learn_sigma=false; clip_x0=true"
    assert head_deviations("diffloss", {}, sampling_steps=50) == "learn_sigma=false; clip_x0=true; sampling_steps=50"
    assert head_deviations("diffloss", {"learn_sigma": True, "clip_x0": False}) == "none"
    assert head_deviations("ce", {}) == "none"
    assert head_deviations("ce", {"top_k": 5}) == "top_k=5"
    assert head_deviations("my_plugin_head", {}) == "unknown"
