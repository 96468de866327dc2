"""Training-seed statistics on known inputs: the t interval, Welch's test with Holm's correction, aggregation of
per-seed rows and the rank bootstrap."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchkit.results.seeds import (
    aggregate_seeds,
    holm,
    rank_stability,
    seed_significance,
    t_interval,
    table_rows,
    welch_p,
)
from benchkit.sweeps.commands import table_command


def test_t_interval_known_values() -> None:
    mean, sd, half = t_interval([1.0, 2.0, 3.0])
    assert (mean, sd) == (2.0, 1.0)
    assert half == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)  # t(0.975, 2) * sd / sqrt(n)
    assert t_interval([5.0])[0] == 5.0 and math.isnan(t_interval([5.0])[2])
    assert math.isnan(t_interval([])[0])


def test_holm_step_down() -> None:
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 1 * 0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adjusted = holm([0.2, float("nan"), 0.01])
    assert adjusted[0] == pytest.approx(0.2) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1 and monotone


def test_welch_p_matches_the_formula() -> None:
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 7.0]
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 3
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    assert welch_p(a, b) == pytest.approx(2 * stats.t.sf(abs(t), dof), rel=1e-9)
    assert math.isnan(welch_p([1.0], b)) and math.isnan(welch_p([2.0, 2.0], [2.0, 2.0]))


def _rows() -> pd.DataFrame:
    fids = {"a": [10.0, 11.0, 12.0], "b": [20.0, 21.0, 22.0], "c": [20.5, 21.0, 21.6]}
    rows = []
    for model, values in fids.items():
        for seed, fid in enumerate(values):
            rows.append(
                {
                    "model": model,
                    "generator": model,
                    "cfg": 1.0,
                    "seed": seed,
                    "fid": fid,
                    "kid_mean": fid / 10,
                    "class_acc": 0.5,
                    "row_id": f"{model}{seed}",
                }
            )
    rows.append({"model": "a", "generator": "a", "cfg": 3.0, "seed": 0, "fid": 9.0, "row_id": "a-cfg3"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # file order is not seed order


def test_aggregate_seeds_folds_one_model_and_setting() -> None:
    agg = aggregate_seeds(_rows()).set_index(["model", "cfg"])
    assert len(agg) == 4 and not [c for c in agg.columns if c.startswith("_")]  # no helper columns leak
    a = agg.loc[("a", 1.0)]
    assert a["n_seeds"] == 3 and a["fid"] == pytest.approx(11.0) and a["fid_sd"] == pytest.approx(1.0)
    assert a["fid_seeds"] == [10.0, 11.0, 12.0] and a["seed"] == 0  # seed order; the lowest seed's other columns
    assert a["kid_mean"] == pytest.approx(1.1) and a["class_acc_sd"] == 0.0
    assert agg.loc[("a", 3.0)]["n_seeds"] == 1 and math.isnan(agg.loc[("a", 3.0)]["fid_ci95"])
    old = pd.DataFrame([{"fid": 1.0, "seed": 0, "row_id": "x"}, {"fid": 2.0, "seed": 0, "row_id": "y"}])
    assert aggregate_seeds(old)["n_seeds"].tolist() == [1, 1]  # rows without a model key stay separate


def test_significance_over_training_seeds_with_holm() -> None:
    agg = seed_significance(aggregate_seeds(_rows()[lambda d: d["cfg"] == 1.0])).set_index("model")
    # by mean FID: a (11.0) < b (21.0) < c (21.03)
    raw_ab, raw_bc = welch_p([10, 11, 12], [20, 21, 22]), welch_p([20, 21, 22], [20.5, 21, 21.6])
    assert agg.loc["a", "fid_gap_p"] == pytest.approx(holm([raw_ab, raw_bc])[0])
    assert agg.loc["b", "fid_gap_p"] == pytest.approx(holm([raw_ab, raw_bc])[1])
    assert agg.loc["a", "fid_gap_significant"] == "yes"  # a beats b beyond the training seeds
    assert agg.loc["b", "fid_gap_significant"] == "no"  # b and c overlap
    assert agg.loc["c", "fid_gap_significant"] is None  # last row: nothing to compare with


def test_rank_stability_by_bootstrap() -> None:
    agg = rank_stability(aggregate_seeds(_rows()[lambda d: d["cfg"] == 1.0]), rounds=500).set_index("model")
    assert agg.loc["a", "rank"] == 1 and agg.loc["a", "rank_stability"] == 1.0 and agg.loc["a", "rank_interval"] == "1"
    assert 0.2 < agg.loc["b", "rank_stability"] < 0.9 and agg.loc["b", "rank_interval"] == "2-3"
    again = rank_stability(aggregate_seeds(_rows()[lambda d: d["cfg"] == 1.0]), rounds=500).set_index("model")
    assert again.loc["b", "rank_stability"] == agg.loc["b", "rank_stability"]  # seeded


def test_a_failing_seed_marks_the_folded_row() -> None:
    rows = _rows()[lambda d: d["cfg"] == 1.0].assign(health="ok", token_std_ratio_max=1.2)
    bad = (rows["model"] == "b") & (rows["seed"] == 2)
    rows.loc[bad, ["health", "token_std_ratio_max"]] = ["diverged", 2800.0]
    rows["health_reason"] = None
    rows.loc[bad, "health_reason"] = "std ratio 2800"
    agg = aggregate_seeds(rows).set_index("model")
    assert agg.loc["b", "health"] == "diverged" and agg.loc["b", "health_seeds"] == "1/3 failed"
    assert agg.loc["b", "health_reason"] == "seed 2: std ratio 2800" and agg.loc["b", "token_std_ratio_max"] == 2800
    assert agg.loc["a", "health"] == "ok" and pd.isna(agg.loc["a", "health_seeds"])


def test_table_lists_folded_rows_by_mean_fid_and_sorts_after_folding(tmp_path: Path) -> None:
    rows = [
        {"kind": "generator", "model": m, "generator": m, "cfg": 1.0, "seed": s, "fid": f, "row_id": f"{m}{s}"}
        for m, fids in {"a": [10.0, 100.0], "b": [20.0, 30.0], "c": [15.0, 16.0]}.items()
        for s, f in enumerate(fids)
    ]
    assert table_rows(pd.DataFrame(rows))["model"].tolist() == ["c", "b", "a"]  # means 15.5, 25, 55
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a per-seed sort would put a (its seed 0 has the lowest FID, 10) first; the folded table's mean puts it last
    out = table_command(tmp_path, sort="fid", write=True).rows
    assert out["model"].tolist() == ["c", "b", "a"] and out["fid"].tolist() == [15.5, 25.0, 55.0]
    assert pd.read_csv(tmp_path / "table.csv")["fid"].tolist() == [15.5, 25.0, 55.0]
    assert table_command(tmp_path, sort="fid", descending=True, write=False).rows["model"].tolist() == ["a", "b", "c"]


def test_table_notes_describe_the_seed_test_without_its_p_column() -> None:
    from benchkit.results.tables import _notes

    compact = pd.DataFrame({"fid": [1.0, 2.0], "n_seeds": [3, 3], "fid_gap_significant": ["yes", None]})
    text = " ".join(_notes(compact))  # the terminal table's columns: no fid_gap_p
    assert "Welch's t-test" in text and "larger seed spread" not in text
    single = pd.DataFrame({"fid": [1.0, 2.0], "n_seeds": [1, 1], "fid_gap_significant": ["yes", None]})
    assert "larger seed spread" in " ".join(_notes(single))
