"""Every tokenizer and every valid generator x head on its tokens, trained twice from the same seed on CPU with two
threads, ends with bit-identical weights, and its training calls none of the CPU kernels whose result depends on
thread timing.

A race between threads shows only when they really run at once: on a loaded machine, or under the passive OpenMP
wait policy the tests use, the second thread often starts after the first has finished, and two trainings agree
by luck. So besides comparing weights, each training is watched op by op (a ``TorchDispatchMode`` sees the
backward's kernels too) for the operations torch documents as nondeterministic on CPU: ``index_put`` / ``put_``
with ``accumulate=True`` (what the backward of ``x[index_tensor]`` calls), which add repeated indices with float
atomics from several threads.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchkit.core.compat import check_combination, compatibility_table
from benchkit.core.config import TrainConfig
from benchkit.core.interfaces import Batch
from benchkit.core.registry import GENERATORS, TOKENIZERS
from benchkit.training.trainer import fit

VALID = [(r["tokenizer"], r["generator"], r["head"]) for r in compatibility_table() if r["status"] == "ok"]
BATCH, ITEMS, CLASSES = 64, 128, 10  # batch 64 at the default widths: the larger kernels split across threads
RACY = ("aten.index_put", "aten._index_put_impl_", "aten.put")  # with accumulate=True


class RacyOps(TorchDispatchMode):
    """Counts the calls of CPU kernels that accumulate with float atomics across threads."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith(RACY):
            accumulate = kwargs.get("accumulate", next((a for a in args[2:] if isinstance(a, bool)), False))
            if accumulate and any(torch.is_tensor(a) and a.device.type == "cpu" for a in args[:1]):
                self.calls[name] += 1
        return func(*args, **kwargs)


def _dataset(combo: tuple[str, str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    spec = check_combination(*combo).spec
    g = torch.Generator().manual_seed(1)
    if spec.kind == "discrete":
        tokens = torch.randint(0, int(spec.vocab_size or 0), (ITEMS, *spec.token_shape), generator=g)
    else:
        tokens = torch.randn(ITEMS, *spec.token_shape, generator=g)
    return tokens, torch.randint(0, CLASSES, (ITEMS,), generator=g)


def _model(combo: tuple[str, str, str]) -> torch.nn.Module:
    torch.manual_seed(0)  # as training.generator.train_generator seeds the initialisation
    return GENERATORS.create(combo[1], spec=check_combination(*combo).spec, head=combo[2], num_classes=CLASSES)


def _train(
    combo: tuple[str, str, str], data: tuple[torch.Tensor, torch.Tensor], run_dir: Path
) -> dict[str, torch.Tensor]:
    model, (tokens, labels) = _model(combo), data
    cfg = TrainConfig(steps=2, batch_size=BATCH, warmup_steps=1, ema_decay=0.5, checkpoint_every=100)
    fit(
        model,
        lambda m, b: m.loss(b),
        lambda idx: Batch(tokens[idx], labels[idx]),
        ITEMS,
        cfg,
        run_dir,
        seed=0,
        fingerprint="test",
        show_progress=False,
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_racy_op_watch_sees_the_backward_of_tensor_indexing() -> None:
    """The watch itself can fail: ``table[index]`` with repeated indices is caught in the backward."""
    table = torch.zeros(5, 3, requires_grad=True)
    with RacyOps() as watch:
        table[torch.tensor([1, 1, 2])].sum().backward()
    assert sum(watch.calls.values()) == 1, watch.calls


@pytest.mark.parametrize("combo", VALID, ids=["+".join(c) for c in VALID])
def test_training_twice_gives_bit_identical_weights(combo: tuple[str, str, str], tmp_path: Path) -> None:
    data = _dataset(combo)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with RacyOps() as watch:
            first = _train(combo, data, tmp_path / "a")
        torch.rand(100)  # other work in between moves the global RNG; fit and the seeded init must not care
        torch.nn.Linear(8, 8)
        second = _train(combo, data, tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    assert not watch.calls, f"{'+'.join(combo)} trains with thread-timing-dependent CPU kernels: {dict(watch.calls)}"
    init = _model(combo).state_dict()
    changed = [k for k, v in init.items() if v.is_floating_point() and not torch.equal(v, first[k])]
    assert changed, "training changed no weight: the comparison would prove nothing"
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{'+'.join(combo)}: weights differ between two identical trainings: {differ}"


def _train_tokenizer(name: str, images: torch.Tensor, run_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)  # as training.tokenizer.train_tokenizer seeds the initialisation
    model = TOKENIZERS.create(name, image_size=32)
    cfg = TrainConfig(steps=3, batch_size=32, warmup_steps=1, checkpoint_every=100)
    fit(
        model,
        lambda m, x: m.loss(x),
        lambda idx: images[idx],
        len(images),
        cfg,
        run_dir,
        seed=0,
        fingerprint="test",
        show_progress=False,
    )
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TOKENIZERS.names()))
def test_tokenizer_training_twice_gives_bit_identical_weights(name: str, tmp_path: Path) -> None:
    """The first half of every combination (codebook EMA updates and dead-code restarts included)."""
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with RacyOps() as watch:
            first = _train_tokenizer(name, images, tmp_path / "a")
        torch.rand(100)
        second = _train_tokenizer(name, images, tmp_path / "b")
    finally:
        torch.set_num_threads(threads)
    assert not watch.calls, f"{name} trains with thread-timing-dependent CPU kernels: {dict(watch.calls)}"
    differ = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differ, f"{name}: weights differ between two identical trainings: {differ}"


def test_every_generator_and_head_is_covered() -> None:
    assert {g for _, g, _ in VALID} == set(GENERATORS.names())
    assert {h for _, _, h in VALID} == {"ce", "diffloss"} and len(VALID) >= 10
