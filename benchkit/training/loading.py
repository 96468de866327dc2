"""Load a finished run directory (for ``benchkit sample RUN``, ``benchkit eval RUN`` and sweeps)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from benchkit.core import distributed as bdist
from benchkit.core.checkpoint import (
    apply_weights,
    checkpoint_exists,
    load_checkpoint,
    load_module_weights,
)
from benchkit.core.config import RunConfig, from_dict
from benchkit.core.distributed import pick_device
from benchkit.core.errors import CheckpointError
from benchkit.training.artifacts import (
    MODEL,
    TrainedRun,
    TrainedTokenizer,
    build_generator,
    build_tokenizer,
    run_fingerprint,
    tokenizer_dir,
    tokenizer_fingerprint,
)
from benchkit.training.checks import check

log = logging.getLogger(__name__)


def load_run(path: str | Path) -> TrainedRun:
    """Load a finished run directory (for ``benchkit sample RUN`` and ``benchkit eval RUN``)."""
    rdir = Path(path)
    if not (rdir / "config.json").is_file():
        raise CheckpointError(f"{str(rdir)!r} is not a run directory (no config.json); train one with `benchkit train`")
    try:
        raw = json.loads((rdir / "config.json").read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(rdir / 'config.json')!r} is corrupt: {e}") from None
    cfg = from_dict(RunConfig, raw, "")
    if not checkpoint_exists(rdir / MODEL):
        raise CheckpointError(f"run {str(rdir)!r} has not finished training; rerun `benchkit train` with --resume")
    combo = check(cfg, include_eval=False)  # sampling needs no feature network; `eval` checks its own settings
    device = pick_device(cfg.device)
    bdist.init_distributed(device)
    tdir = tokenizer_dir(replace(cfg, out_dir=str(rdir.parent.parent)))
    tok_module = build_tokenizer(cfg, device)
    tok_meta = load_module_weights(tok_module, tdir / MODEL)
    if tok_meta.get("fingerprint") != tokenizer_fingerprint(cfg):
        raise CheckpointError(f"tokenizer {str(tdir)!r} does not match {str(rdir / 'config.json')!r}")
    tok = TrainedTokenizer(tok_module.eval(), tdir, tok_meta["fingerprint"], None)
    tensors, meta = load_checkpoint(rdir / MODEL)
    if meta.get("fingerprint") != run_fingerprint(cfg):
        raise CheckpointError(
            f"{str(rdir / 'config.json')!r} does not describe the weights in {str(rdir)!r} (fingerprint "
            f"{run_fingerprint(cfg)} != {meta.get('fingerprint')}); was config.json edited?"
        )
    gen = build_generator(cfg, combo, int(meta["num_classes"]), device)
    apply_weights(gen, tensors, rdir / MODEL)
    return TrainedRun(cfg, gen.eval(), tok, combo, rdir, None)
