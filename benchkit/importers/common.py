"""Shared pieces of the importers: safe reading of pickled containers, picking the weights, key and shape checks.

A released checkpoint is a pickle. It is read only with ``torch.load(weights_only=True)``, which unpickles tensors
and plain containers and nothing else; the one extra class allowed is ``argparse.Namespace`` (MAR's own training
saves its arguments as one). Every other object is refused with one line.

Each importer describes a model by two functions that map whole state dicts: ``to_benchkit`` (official keys ->
benchkit keys) and ``to_official`` (the inverse). The official layout expected for a benchkit module is
``to_official(module.state_dict())``, so the same pair of functions checks a checkpoint's keys and shapes before any
copy, loads it, and (on the meta device) proves that the full-size layouts are covered both ways.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.core.errors import CheckpointError, ConfigError

StateDict = dict[str, torch.Tensor]
Mapper = Callable[[Mapping[str, torch.Tensor]], StateDict]
SHOW = 3  # keys named in an error message


def read_container(path: str | Path) -> dict[str, Any]:
    """The dict saved in a released ``.pth`` / ``.ckpt`` / ``.pt`` file, read with ``weights_only=True`` and only
    ``argparse.Namespace`` allow-listed; CheckpointError for a missing, truncated or unsafe file."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            raise CheckpointError(
                f"{str(p)!r} holds pickled objects other than tensors and argparse.Namespace; refused for safety "
                f"({first})"
            ) from None
        raise CheckpointError(f"cannot read {str(p)!r}: {first} (truncated or not a torch checkpoint?)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read {str(p)!r}: {first} (truncated or not a torch checkpoint?)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{str(p)!r} holds a {type(obj).__name__}, not a dict of weights")
    return obj


def pick_weights(
    container: Mapping[str, Any], names: tuple[str, ...], path: str | Path, key: str | None = None
) -> tuple[StateDict, str]:
    """(state dict, container key used): ``key`` when given, else the first of ``names`` present (EMA first)."""
    order = (key,) if key else names
    for name in order:
        if name in container:
            state = container[name]
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError(f"{str(path)!r}: entry {name!r} is not a dict of tensors")
            return dict(state), name
    found = ", ".join(sorted(map(str, container))) or "(empty)"
    raise CheckpointError(f"{str(path)!r} has no {' or '.join(map(repr, order))} entry; it holds: {found}")


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in t.shape)


def check_layout(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """CheckpointError unless ``found`` has exactly the keys of ``expected`` with the same shapes."""
    missing = [k for k in expected if k not in found]
    unknown = [k for k in found if k not in expected]
    if missing:
        raise CheckpointError(
            f"{what}: {len(missing)} missing key(s), e.g. {', '.join(missing[:SHOW])}"
            + (f"; and {len(unknown)} unknown, e.g. {', '.join(unknown[:SHOW])}" if unknown else "")
            + "; is --arch right?"
        )
    if unknown:
        raise CheckpointError(
            f"{what}: {len(unknown)} unknown key(s), e.g. {', '.join(unknown[:SHOW])}; is --arch right?"
        )
    wrong = [k for k in expected if _shape(found[k]) != _shape(expected[k])]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{what}: {len(wrong)} tensor(s) of the wrong shape, first {k}: expected "
            f"{list(_shape(expected[k]))}, found {list(_shape(found[k]))}; is --arch right?"
        )


@dataclass(frozen=True)
class KeyMap:
    """A model's two state-dict maps (see the module docstring)."""

    to_benchkit: Mapper
    to_official: Mapper


def load_official(
    module: nn.Module,
    official: Mapping[str, torch.Tensor],
    keymap: KeyMap,
    what: str,
    extra: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Check ``official`` against the layout ``module`` expects, map it and load it strictly; ``extra`` holds
    benchkit tensors with no official counterpart (scale, null class, codebook copy...)."""
    expected = keymap.to_official(module.state_dict())
    check_layout(official, expected, what)
    state = {**keymap.to_benchkit(official), **(extra or {})}
    target = module.state_dict()
    check_layout(state, target, f"{what} (mapped to benchkit)")
    module.load_state_dict({k: v.to(target[k].dtype) for k, v in state.items()}, strict=True)


def rename(state: Mapping[str, torch.Tensor], table: list[tuple[str, str]]) -> StateDict:
    """Rename keys by their first matching prefix in ``table`` ([(from, to)]); unmatched keys are kept as they are."""
    out: StateDict = {}
    for k, v in state.items():
        for src, dst in table:
            if k.startswith(src):
                k = dst + k[len(src) :]
                break
        out[k] = v
    return out


def swap(table: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The inverse rename table."""
    return [(b, a) for a, b in table]


def namespace_options(args: Any, names: tuple[str, ...], path: str | Path) -> dict[str, Any]:
    """Selected fields of an ``argparse.Namespace`` (or dict) stored in a container; ConfigError when one is absent."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"{str(path)!r}: its 'args' lack {', '.join(missing[:SHOW])}; pass --arch")
    return {n: values[n] for n in names}
