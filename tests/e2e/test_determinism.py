"""On CPU the same seed gives bit-identical weights, samples and metrics; another seed gives other ones.

Model initialisation is seeded from the config (not from whatever ran before in the process), batches are a pure
function of (seed, step) and every sampling batch draws from its own seeded ``torch.Generator``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import DATA, QUALITY_KEYS, TINY, bk, cli_env, last_line, seed_cache
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def _same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def _quality(row: dict) -> dict:
    return {k: row[k] for k in QUALITY_KEYS if row.get(k) is not None}


def test_same_seed_is_bit_identical_even_after_other_work_in_the_process(
    tmp_path: Path, reference_run: Path, reference_row: dict, feature_cache: Path
) -> None:
    """Train in-process after consuming the global RNG (as a sweep's second job would): same weights, same token
    cache, same samples and metrics as the reference run trained by its own ``benchkit train`` process."""
    from benchkit.core.config import resolve
    from benchkit.training.generator import train_generator

    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    sets = [TINY[i + 1] for i in range(0, len(TINY), 2)] + [f'out_dir="{out}"', 'device="cpu"']
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the reference process's float reduction order
    try:
        torch.rand(1000)  # earlier work in the same process moves the global RNG
        torch.nn.Linear(10, 10)
        run = train_generator(resolve("tiny", None, sets), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert run.dir.name == reference_run.name
    assert _same_tensors(run.dir / "model.safetensors", reference_run / "model.safetensors")
    ref_tok = reference_run.parent.parent / "tokenizers" / run.tokenizer.dir.name
    assert _same_tensors(run.tokenizer.dir / "model.safetensors", ref_tok / "model.safetensors")
    assert _same_tensors(run.tokenizer.dir / "tokens-discrete.safetensors", ref_tok / "tokens-discrete.safetensors")

    a, b = tmp_path / "a.png", tmp_path / "b.png"
    bk("sample", str(reference_run), "--out", str(a))
    bk("sample", str(run.dir), "--out", str(b))
    assert a.read_bytes() == b.read_bytes()

    row = json.loads(bk("eval", str(run.dir), "--results", str(tmp_path / "results")).stdout)[0]
    assert _quality(row) == _quality(reference_row) and "fid" in _quality(row)


def test_another_seed_gives_other_weights_samples_and_metrics(
    tmp_path: Path, reference_run: Path, reference_row: dict, feature_cache: Path
) -> None:
    out = tmp_path / "out"
    seed_cache(feature_cache, out)
    other = Path(last_line(bk("train", "--out-dir", str(out), "--no-progress", *TINY, "--set", "seed=1")))
    assert other.name != reference_run.name
    assert not _same_tensors(other / "model.safetensors", reference_run / "model.safetensors")

    paths = {name: tmp_path / f"{name}.png" for name in ("ref0", "ref0-again", "ref1", "other")}
    bk("sample", str(reference_run), "--out", str(paths["ref0"]))
    bk("sample", str(reference_run), "--out", str(paths["ref0-again"]), "--seed", "0")
    bk("sample", str(reference_run), "--out", str(paths["ref1"]), "--seed", "1")
    bk("sample", str(other), "--out", str(paths["other"]))
    data = {k: p.read_bytes() for k, p in paths.items()}
    assert data["ref0"] == data["ref0-again"], "--seed 0 is the run's own seed"
    assert data["ref1"] != data["ref0"], "the sampling seed changes the samples"
    assert data["other"] != data["ref0"], "the training seed changes the samples"

    row = json.loads(bk("eval", str(other), "--results", str(tmp_path / "results")).stdout)[0]
    assert row["seed"] == 1 and reference_row["seed"] == 0
    assert row["fid"] != reference_row["fid"] and row["kid_mean"] != reference_row["kid_mean"]


# ------------------------------------------------------------------ a job's results do not depend on its neighbours
# Two jobs (kl + ar + diffloss, kl + mar + diffloss) run as a sweep in both orders, each trained alone by `benchkit
# train` + `benchkit eval` in a fresh process, and the second one as shard 1/2: every copy of a job must give the
# same generator weights and quality metrics. The shard runs with the default thread count (the cores divided
# between the 2 shards); the others ask for that count, since CPU float results depend on it.

PAIR = {"ar": ['generator.name="ar"'], "mar": ['generator.name="mar"', "generator.options.steps=4"]}
PAIR_SETS = [TINY[i + 1] for i in range(0, len(TINY), 2)] + [
    'tokenizer.name="kl"',
    'head.name="diffloss"',
    "tokenizer_train.steps=24",
    "train.steps=24",
    "sample.diffusion_steps=8",
    "eval.num_samples=60",
    "eval.num_reference=100",
]


def _pair_sweep(path: Path, generators: list[str]) -> Path:
    lines = ['preset = "tiny"', 'name = "pair"', "set = [" + ", ".join(json.dumps(s) for s in PAIR_SETS) + "]"]
    for gen in generators:
        lines += ["[[combos]]", *(f'"{k}" = {v}' for k, v in (s.split("=", 1) for s in PAIR[gen]))]
    path.write_text("\n".join(lines) + "\n")
    return path


def _gen_rows(results: Path) -> dict[str, dict]:
    rows = [json.loads(ln) for ln in (results / "rows.jsonl").read_text().splitlines() if ln.strip()]
    gen = [r for r in rows if r["kind"] == "generator"]
    assert len(gen) == len({r["generator"] for r in gen}), "one row per generator expected"
    return {r["generator"]: r for r in gen}


def _weights(out: Path, generator: str) -> Path:
    (run,) = (out / "runs").glob(f"kl-{generator}-diffloss-*")
    return run / "model.safetensors"


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, feature_cache: Path) -> dict[str, tuple[Path, dict[str, dict]]]:
    """{copy: (out dir, generator rows)} for the copies 'ab', 'ba' (sweeps in both orders), 'alone-ar',
    'alone-mar' (train + eval, fresh processes) and 'shard' (shard 1/2 of 'ab': the mar job)."""
    from benchkit.core.threads import usable_cores

    root = tmp_path_factory.mktemp("pair")
    threads = str(max(1, usable_cores() // 2))
    got: dict[str, tuple[Path, dict[str, dict]]] = {}
    for copy, order in (("ab", ["ar", "mar"]), ("ba", ["mar", "ar"])):
        out = root / copy
        seed_cache(feature_cache, out)
        bk(
            "sweep",
            str(_pair_sweep(root / f"{copy}.toml", order)),
            "--out-dir",
            str(out),
            "--no-progress",
            "--threads",
            threads,
        )
        got[copy] = out, _gen_rows(out / "pair")
    for gen in PAIR:
        out = root / f"alone-{gen}"
        seed_cache(feature_cache, out)
        sets = [a for s in [*PAIR_SETS, *PAIR[gen]] for a in ("--set", s)]
        run = last_line(bk("train", "--out-dir", str(out), "--no-progress", "--threads", threads, *sets))
        bk("eval", run, "--results", str(out / "results"))  # threads from the run's config.json
        got[f"alone-{gen}"] = out, _gen_rows(out / "results")
    out = root / "shard"
    seed_cache(feature_cache, out)
    env = {k: v for k, v in cli_env().items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    bk("sweep", str(root / "ab.toml"), "--out-dir", str(out), "--no-progress", "--shard", "1/2", env=env)
    got["shard"] = out, _gen_rows(out / "pair")
    assert got["ab"][1]["ar"]["threads"] == int(threads) and got["shard"][1]["mar"]["threads"] == int(threads)
    return got


@pytest.mark.parametrize(("copy", "gen"), [("ab", "mar"), ("ba", "ar")], ids=["second-mar", "second-ar-reversed"])
def test_second_job_of_a_sweep_equals_the_job_trained_alone(pair: dict, copy: str, gen: str) -> None:
    """(a) the second job of the sweep ar, mar; (b) of the sweep mar, ar: as when trained alone."""
    (sweep_out, sweep_rows), (alone_out, alone_rows) = pair[copy], pair[f"alone-{gen}"]
    assert _same_tensors(_weights(sweep_out, gen), _weights(alone_out, gen))
    assert _quality(sweep_rows[gen]) == _quality(alone_rows[gen]) and "fid" in _quality(alone_rows[gen])


def test_first_jobs_and_both_orders_agree_too(pair: dict) -> None:
    for gen in PAIR:
        assert _same_tensors(_weights(pair["ab"][0], gen), _weights(pair["ba"][0], gen)), gen
        assert _quality(pair["ab"][1][gen]) == _quality(pair["ba"][1][gen]) == _quality(pair[f"alone-{gen}"][1][gen])
    assert _quality(pair["ab"][1]["ar"]) != _quality(pair["ab"][1]["mar"]), "two different models, same metrics?"


def test_shard_gives_the_rows_of_the_unsharded_sweep(pair: dict) -> None:
    """(c) shard 1/2 holds the mar job only; its row and weights are those of the unsharded sweep."""
    shard_out, shard_rows = pair["shard"]
    assert set(shard_rows) == {"mar"}
    assert _quality(shard_rows["mar"]) == _quality(pair["ab"][1]["mar"])
    assert _same_tensors(_weights(shard_out, "mar"), _weights(pair["ab"][0], "mar"))
    env = json.loads((_weights(shard_out, "mar").parent / "env.json").read_text())
    assert env["threads"] == shard_rows["mar"]["threads"], "env.json records the thread count the run used"


# ------------------------------------------------------- a tokenizer and token cache from disk train the same way
@pytest.mark.parametrize(
    ("tokenizer", "generator", "head", "extra"),
    [
        (
            "kl",
            "mar",
            "diffloss",
            ["train.hflip=true"],
        ),  # continuous: posterior samples of cached moments, mirrored cache
        ("vq", "mar", "ce", []),
        ("rq", "rqtransformer", "ce", []),
    ],
    ids=["kl+mar+diffloss+hflip", "vq+mar+ce", "rq+rqtransformer+ce"],
)
def test_tokenizer_and_cache_from_disk_train_like_in_memory(
    tmp_path: Path, tokenizer: str, generator: str, head: str, extra: list[str]
) -> None:
    """(d) in memory (tokenizer just trained, cache just encoded), from disk (both loaded), and the cache encoded
    by the tokenizer loaded from disk: the generator weights are bit-identical."""
    import shutil

    from benchkit.core.config import resolve
    from benchkit.training.generator import train_generator

    sets = [
        *DATA[1::2],
        f'tokenizer.name="{tokenizer}"',
        f'generator.name="{generator}"',
        f'head.name="{head}"',
        "tokenizer.options.ch=8",
        "generator.options.width=32",
        "tokenizer_train.steps=12",
        "train.steps=12",
        "tokenizer_train.batch_size=16",
        "train.batch_size=16",
        "train.warmup_steps=2",
        *extra,
    ]

    def train(out: Path) -> Path:
        run = train_generator(resolve("tiny", None, [*sets, f'out_dir="{out}"', 'device="cpu"']), progress=False)
        assert run.result is not None and run.result.steps == 12
        return run.dir / "model.safetensors"

    in_memory = train(tmp_path / "memory")
    shutil.copytree(tmp_path / "memory" / "tokenizers", tmp_path / "disk" / "tokenizers")
    from_disk = train(tmp_path / "disk")
    shutil.copytree(
        tmp_path / "memory" / "tokenizers",
        tmp_path / "recached" / "tokenizers",
        ignore=shutil.ignore_patterns("tokens-*"),
    )
    assert not list((tmp_path / "recached").rglob("tokens-*"))
    recached = train(tmp_path / "recached")
    assert len(list((tmp_path / "recached").rglob("tokens-*.safetensors"))) == (2 if extra else 1)
    assert _same_tensors(in_memory, from_disk)
    assert _same_tensors(in_memory, recached)
