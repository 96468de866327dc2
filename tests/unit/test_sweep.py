"""Sweep files: expansion over grids and combos, skipped invalid combinations, shards, the shipped sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import TokenSpec
from benchkit.sweeps.sweepfile import expand, load_sweep, parse_shard, shard, shipped_sweeps


def test_grid_expansion_skips_invalid_with_reason() -> None:
    spec = {
        "name": "g",
        "set": ["train.steps=5"],
        "grid": {"tokenizer.name": ["vq", "kl"], "generator.name": ["ar", "mar"], "head.name": ["ce", "diffloss"]},
    }
    jobs = expand(spec)
    valid = [j for j in jobs if j.cfg is not None]
    skipped = [j for j in jobs if j.cfg is None]
    assert len(jobs) == 8 and len(valid) == 6 and len(skipped) == 2
    combos = {(j.cfg.tokenizer.name, j.cfg.generator.name, j.cfg.head.name) for j in valid}
    assert ("kl", "ar", "ce") not in combos and ("vq", "mar", "diffloss") in combos
    assert all("valid heads for kl" in (j.skipped or "") for j in skipped)
    assert all(j.cfg.train.steps == 5 and j.cfg.name == "g" for j in valid)


def test_combos_cross_grid_and_duplicates_collapse() -> None:
    spec = {
        "combos": [{"generator.name": "ar"}, {"generator.name": "ar"}, {"generator.name": "mar"}],
        "grid": {"seed": [0, 1]},
    }
    jobs = expand(spec)
    assert len(jobs) == 4 and {(j.cfg.generator.name, j.cfg.seed) for j in jobs} == {
        ("ar", 0),
        ("ar", 1),
        ("mar", 0),
        ("mar", 1),
    }


def test_shards_partition_the_valid_jobs() -> None:
    jobs = expand({"grid": {"seed": list(range(7))}})
    parts = [shard(jobs, i, 3) for i in range(3)]
    seeds = sorted(j.cfg.seed for p in parts for j in p)
    assert seeds == list(range(7)) and [len(p) for p in parts] == [3, 2, 2]
    assert parse_shard("1/3") == (1, 3) and parse_shard(None) == (0, 1)
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            parse_shard(bad)


def test_bad_sweep_files() -> None:
    with pytest.raises(ConfigError, match="unknown sweep key 'grids'"):
        expand({"grids": {}})
    with pytest.raises(ConfigError, match="must be a non-empty list"):
        expand({"grid": {"seed": 3}})
    bad = expand({"grid": {"train.lrr": [1]}})
    assert bad[0].cfg is None and "unknown config key 'train.lrr'" in (bad[0].skipped or "")
    with pytest.raises(ConfigError, match="unknown sweep 'tinny'.*did you mean 'tiny'"):
        load_sweep("tinny")


def test_shipped_tiny_sweep_has_the_paper_analogues(tmp_path: Path) -> None:
    assert "tiny" in shipped_sweeps()
    jobs = expand(load_sweep("tiny"))
    triples = {(j.cfg.tokenizer.name, j.cfg.generator.name, j.cfg.head.name) for j in jobs if j.cfg}
    assert all(j.cfg is not None for j in jobs), [j.skipped for j in jobs if j.cfg is None]
    assert {
        ("vq", "ar", "ce"),
        ("kl", "ar", "diffloss"),
        ("vq", "mar", "ce"),
        ("kl", "mar", "diffloss"),
        ("rq", "rqtransformer", "ce"),
    } <= triples
    # equal training compute, convergence points and the same tuning grid for every model
    assert {(j.cfg.train.budget_flops, j.cfg.train.convergence_points) for j in jobs if j.cfg} == {(2.25e12, 3)}
    assert len({str(j.cfg.eval.tune) for j in jobs if j.cfg}) == 1 and all(j.cfg.eval.tune for j in jobs if j.cfg)
    grid = jobs[0].cfg.eval.tune  # MAR's Table 1 tunes temperature and CFG: the grid has both
    assert any(p.get("temperature", 1.0) != 1.0 for p in grid) and any(p.get("cfg", 1.0) != 1.0 for p in grid)
    assert len({j.cfg.train.batch_size for j in jobs if j.cfg}) == 1  # equal FLOPs at one batch size
    order = [j.cfg.tokenizer.name for j in jobs if j.cfg]
    assert order == sorted(order), "jobs are grouped by tokenizer so each is trained once"
    (tmp_path / "s.toml").write_text('name = "x"\n[grid]\n"generator.name" = ["ar"]\n')
    assert load_sweep(tmp_path / "s.toml")["name"] == "x"


def test_extends_takes_the_parent_sweep_and_runs_its_set_first(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(
        'name = "b"\nset = ["train.steps=7", "train.lr=1e-3"]\n[[combos]]\n"generator.name" = "mar"\n'
    )
    (tmp_path / "mid.toml").write_text('extends = "base.toml"\nname = "m"\nset = ["train.steps=9"]\n')
    (tmp_path / "top.toml").write_text('extends = "mid.toml"\nset = ["seed=3"]\n[[combos]]\n"generator.name" = "ar"\n')
    mid = load_sweep(tmp_path / "mid.toml")
    assert mid["name"] == "m" and mid["set"] == ["train.steps=7", "train.lr=1e-3", "train.steps=9"]
    assert "extends" not in mid and mid["combos"] == [{"generator.name": "mar"}]  # the parent's combos
    [job] = expand(mid)
    assert (job.cfg.train.steps, job.cfg.train.lr, job.cfg.generator.name) == (9, 1e-3, "mar")  # own set wins
    top = load_sweep(tmp_path / "top.toml")
    [job] = expand(top)
    assert (job.cfg.name, job.cfg.seed, job.cfg.train.steps, job.cfg.generator.name) == ("m", 3, 9, "ar")
    # a shipped parent by name; the shipped `long` is the default comparison at four times its budget
    long, tiny = load_sweep("long"), load_sweep("tiny")
    assert long["combos"] == tiny["combos"] and long["set"][: len(tiny["set"])] == tiny["set"]
    assert long["name"] == "long" and "train.budget_flops=1.8e13" in long["set"]
    table1 = load_sweep("table1")
    assert table1["set"][: len(tiny["set"])] == tiny["set"] and "train.seeds=1" in table1["set"]
    assert (tiny["jobs"], long["jobs"], table1["jobs"]) == (2, 1, 1)  # a file's own keys win over its parent's


def test_extends_errors_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('extends = "b.toml"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"extends loops \(.*a.toml -> .*b.toml -> .*a.toml\)"):
        load_sweep(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "tinyy"\n')
    with pytest.raises(ConfigError, match=r"unknown sweep 'tinyy'; valid: .*tiny.*did you mean 'tiny'"):
        load_sweep(tmp_path / "c.toml")
    (tmp_path / "d.toml").write_text("extends = 3\n")
    with pytest.raises(ConfigError, match="extends must be the name or path of a sweep, got 3"):
        load_sweep(tmp_path / "d.toml")


def test_shipped_all_sweep_covers_every_valid_triple_and_reuses_the_tiny_runs() -> None:
    from benchkit.core.compat import check_combination
    from benchkit.core.errors import IncompatibleComponentsError
    from benchkit.core.registry import GENERATORS
    from benchkit.training.artifacts import run_fingerprint

    valid = set()
    for t in ("vq", "rq", "kl"):
        for g in GENERATORS.names():
            for h in ("ce", "diffloss"):
                try:
                    check_combination(t, g, h)
                except IncompatibleComponentsError:
                    continue
                valid.add((t, g, h))
    jobs = expand(load_sweep("all"))
    assert all(j.cfg is not None for j in jobs)
    triples = {(j.cfg.tokenizer.name, j.cfg.generator.name, j.cfg.head.name) for j in jobs if j.cfg is not None}
    assert triples == valid and len(jobs) == len(valid) == 13
    tiny = [j.cfg for j in expand(load_sweep("tiny")) if j.cfg is not None]
    assert len(tiny) == 15 and len({run_fingerprint(c) for c in tiny}) == 15  # five models x three training seeds
    assert {(c.tokenizer.name, c.generator.name, c.head.name) for c in tiny} <= triples
    assert sorted(c.train.seed_index for c in tiny) == [0] * 5 + [1] * 5 + [2] * 5


@pytest.mark.parametrize("name", ["tiny", "all", "long", "table1"])
def test_every_shipped_sweep_expands_to_valid_jobs(name: str) -> None:
    assert name in shipped_sweeps()
    jobs = expand(load_sweep(name))
    assert jobs and all(j.cfg is not None for j in jobs), [j.skipped for j in jobs if j.cfg is None]
    # equal training FLOPs: the budget sets each generator's steps (tiny: per seed, three seeds; the others one seed)
    budget = {"tiny": 2.25e12, "long": 1.8e13, "table1": 4.5e12, "all": 4.5e12}[name]
    assert {j.cfg.train.budget_flops for j in jobs if j.cfg} == {budget}
    assert {j.cfg.train.seeds for j in jobs if j.cfg} == {3 if name == "tiny" else 1}


@pytest.mark.parametrize("name", ["long", "table1"])
def test_long_and_table1_keep_their_measured_single_seed_settings(name: str) -> None:
    """They extend the default run, which has three seeds and a leaner evaluation; their measured tables are one seed
    with 1000 samples, two sampling seeds and tuning on 500 samples, in one process."""
    spec = load_sweep(name)
    assert spec["jobs"] == 1
    for cfg in (j.cfg for j in expand(spec) if j.cfg is not None):
        assert (cfg.train.seeds, cfg.eval.num_samples, cfg.eval.seed_spread, cfg.eval.tune_samples) == (
            1,
            1000,
            True,
            500,
        )


@pytest.mark.parametrize("name", shipped_sweeps())
def test_guided_rows_of_a_shipped_sweep_share_one_cfg_schedule(name: str) -> None:
    """Guidance is compared on equal terms: every guided row of a sweep ramps CFG the same way."""
    from benchkit.evaluation.evaluate import settings_from

    schedules = {
        s.cfg_schedule for j in expand(load_sweep(name)) if j.cfg for s in settings_from(j.cfg) if s.cfg != 1.0
    }
    assert len(schedules) <= 1, (name, schedules)


def test_table1_sweep_is_mars_table_1_parameter_matched() -> None:
    from benchkit.core.registry import GENERATORS
    from benchkit.core.sizes import MATCH_TOLERANCE, relative_spread
    from benchkit.evaluation.evaluate import settings_from
    from benchkit.metrics.cost import backbone_params

    jobs = [j.cfg for j in expand(load_sweep("table1")) if j.cfg is not None]
    rows = [(c.generator.name, c.head.name, s.steps) for c in jobs for s in settings_from(c)]
    for head in ("ce", "diffloss"):  # the 8 rows of MAR's Table 1, each at its own tuned guidance
        assert sorted((g, st or 0) for g, h, st in rows if h == head) == [
            ("ar", 0),
            ("mar", 16),
            ("mar", 64),
            ("randar", 0),
        ]
    assert {(c.tokenizer.name, c.head.name) for c in jobs} == {("vq", "ce"), ("kl", "diffloss")}
    tiny = next(j.cfg for j in expand(load_sweep("tiny")) if j.cfg is not None)
    for c in jobs:  # on the default comparison's terms: tuning grid, convergence points, batch (one seed, 500 tuning)
        assert (c.eval.tune, c.eval.tune_samples, c.train.convergence_points, c.train.batch_size) == (
            tiny.eval.tune,
            500,
            tiny.train.convergence_points,
            tiny.train.batch_size,
        )
    counts = {}
    for c in jobs:
        spec = TokenSpec("discrete", (8, 8), 1, vocab_size=256)
        counts[c.generator.name] = backbone_params(
            GENERATORS.create(c.generator.name, spec=spec, head="ce", num_classes=10, **c.generator.options)
        )
    assert relative_spread(counts) <= MATCH_TOLERANCE, counts
