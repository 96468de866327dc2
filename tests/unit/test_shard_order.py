"""Shards started together begin with different tokenizers, and still partition the valid jobs."""

from __future__ import annotations

from benchkit.sweeps.sweepfile import expand, load_sweep, shard
from benchkit.training.artifacts import tokenizer_fingerprint


def test_shards_of_the_default_sweep_start_with_different_tokenizers() -> None:
    jobs = expand(load_sweep("tiny"))
    valid = [j for j in jobs if j.cfg is not None]
    parts = [shard(jobs, i, 2) for i in range(2)]
    assert sorted(repr(j.cfg) for p in parts for j in p) == sorted(repr(j.cfg) for j in valid)
    assert [len(p) for p in parts] == [(len(valid) + 1) // 2, len(valid) // 2]
    firsts = [p[0].cfg.tokenizer.name for p in parts]
    assert firsts[0] != firsts[1], firsts
    for p in parts:  # each tokenizer's jobs stay together, so it is loaded once per shard
        names = [j.cfg.tokenizer.name for j in p]
        switches = sum(a != b for a, b in zip(names, names[1:]))
        assert switches == len(set(names)) - 1, names


def test_a_single_tokenizer_keeps_the_plain_order() -> None:
    jobs = expand({"grid": {"train.lr": [0.001, 0.002, 0.003, 0.004]}})
    assert len({tokenizer_fingerprint(j.cfg) for j in jobs}) == 1
    assert [j.cfg.train.lr for j in shard(jobs, 1, 2)] == [0.002, 0.004]
