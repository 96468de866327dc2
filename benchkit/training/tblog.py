"""Optional TensorBoard logging of a training stage: losses, learning rate, throughput and image grids.

Switched on per stage with ``train.tensorboard = true`` (or ``tokenizer_train.tensorboard``); event files go to
``<run dir>/tensorboard/`` and are read with ``tensorboard --logdir results``. The writer is
``torch.utils.tensorboard.SummaryWriter``, which needs the ``tensorboard`` package
(``pip install 'benchkit[tensorboard]'``). When the switch is off nothing is imported and nothing is written; when it
is on and the package is missing, ``require_tensorboard`` fails with one line before any compute.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchkit.core.errors import ConfigError
from benchkit.data.base import to_float, to_uint8
from benchkit.sampling.generate import balanced_labels, generate_images
from benchkit.sampling.grids import grid_tensor

log = logging.getLogger(__name__)

SUBDIR = "tensorboard"
INSTALL_HINT = "pip install 'benchkit[tensorboard]' (or pip install tensorboard)"


def tensorboard_available() -> bool:
    """Whether the ``tensorboard`` package, which torch's SummaryWriter needs, is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def require_tensorboard(where: str = "train.tensorboard") -> None:
    """Raise ConfigError, naming the switch and the install command, when TensorBoard is asked for but missing."""
    if not tensorboard_available():
        raise ConfigError(
            f"{where} = true needs the tensorboard package, which is not installed; install it with "
            f"{INSTALL_HINT}, or set {where}=false"
        )


class TensorBoardLog:
    """Scalars and image grids of one training stage; every method is a no-op when the log is off."""

    def __init__(self, run_dir: Path | None, *, enabled: bool, where: str = "train.tensorboard") -> None:
        """Open a writer in ``run_dir/tensorboard`` when ``enabled`` (``where`` names the switch in errors)."""
        self.writer: Any = None
        if not enabled or run_dir is None:
            return
        require_tensorboard(where)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / SUBDIR
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        log.info("TensorBoard events in %s", self.log_dir)

    @property
    def enabled(self) -> bool:
        """Whether events are written."""
        return self.writer is not None

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        """One scalar per finite numeric value, tagged ``prefix/name`` (non-numbers are left out)."""
        if self.writer is None:
            return
        for name, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            self.writer.add_scalar(f"{prefix}/{name}", float(value), global_step=step)

    def images(self, tag: str, images: torch.Tensor, step: int, nrow: int = 8) -> None:
        """A grid of uint8 (or float in [-1, 1]) images [N, 3, H, W], ``nrow`` per row."""
        if self.writer is None:
            return

        self.writer.add_image(tag, grid_tensor(images, nrow=nrow), global_step=step, dataformats="CHW")

    def preview(
        self,
        model: nn.Module,
        make: Callable[[nn.Module], torch.Tensor] | None,
        step: int,
        tag: str = "samples",
        nrow: int = 8,
    ) -> None:
        """Log ``make(model)`` (images [N, 3, H, W]) as a grid, run in eval mode without grad, leaving the torch RNG
        streams as they were, so that training goes on exactly as it would without the log."""
        if self.writer is None or make is None:
            return
        device = next(model.parameters()).device
        was_training = model.training
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            model.eval()
            try:
                images = make(model)
            finally:
                model.train(was_training)
        self.images(tag, images, step, nrow=nrow)

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
            self.writer = None


def reconstruction_preview(originals: torch.Tensor) -> Callable[[nn.Module], torch.Tensor]:
    """For a tokenizer stage: originals uint8 [N, 3, H, W] in the top half of the grid, the tokenizer's
    reconstructions of them below (log with ``nrow = N``)."""

    def make(module: nn.Module) -> torch.Tensor:
        device = next(module.parameters()).device
        recon = to_uint8(module.reconstruct(to_float(originals).to(device))).cpu()  # type: ignore[operator]
        return torch.cat([originals.cpu(), recon])

    return make


def sample_preview(
    tokenizer: nn.Module, kind: str, num_classes: int, sample: Any, *, seed: int
) -> Callable[[nn.Module], torch.Tensor]:
    """For a generator stage: 32 images (labels 0, 1, ..., K-1, 0, ...) at the base sampling settings of
    ``sample`` (a ``SampleConfig``), seeded, decoded by the frozen tokenizer."""

    labels = balanced_labels(32, num_classes)

    def make(generator: nn.Module) -> torch.Tensor:
        return generate_images(
            generator,
            tokenizer,
            kind,  # type: ignore[arg-type]  # a TokenKind, as the token cache's
            labels,
            sample,
            seed=seed,
            batch_size=sample.batch_size,
        )

    return make
