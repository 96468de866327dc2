"""What a config's generator training will cost before it starts: parameters, FLOPs, memory, GPU-hours.

Everything is measured on the ``meta`` device (shapes only: no memory, no arithmetic, a few seconds on a CPU for
a billion-parameter model): one training step (forward + backward) of the configured generator on one image's
tokens, with the weights in the training precision, counted by :func:`benchkit.metrics.cost.flops_per_call`
(matmuls and attention, 2 FLOPs per multiply-add), and the activations kept for the backward pass summed with
``torch.autograd.graph.saved_tensors_hooks``, plain and with gradient checkpointing. MAR's mask ratio is random,
so both are averaged over a few draws.

Estimates, not measurements of a GPU run:
- memory per GPU = 4 bytes per parameter each for weights, gradients and the EMA copy, 8 for AdamW's two moments,
  plus the activations of the per-GPU batch; the CUDA context, allocator slack and fragmentation (typically 1-3
  GB) are not included. Checked against the one published figure (MAR-L with its 8 x 1280 head, 64 images per
  GPU, fp16 autocast: ~62 GB, ~32 GB with gradient checkpointing, MAR PR #7): see benchmarks/README.md;
- the Diffusion Loss head computes in float32 on meta (its inputs are cast up), where autocast would run its
  matmuls in bf16, so its activations are over-estimated;
- GPU-hours = FLOPs per image x images seen / (dense bf16 peak x utilisation); the peaks are the vendors' dense
  (no sparsity) bf16 figures, the utilisation (model FLOPs utilisation) is a parameter, 0.4 by default;
- the generator stage only: tokens are assumed cached (``benchkit`` caches them once before training), so the
  tokenizer's own training and the encoding pass are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchkit.core.config import RunConfig
from benchkit.core.errors import ConfigError
from benchkit.core.interfaces import Batch, TokenSpec
from benchkit.metrics.cost import count_params, flops_per_call
from benchkit.nn.transformer import set_grad_checkpointing
from benchkit.training.artifacts import build_generator, build_tokenizer
from benchkit.training.checks import check
from benchkit.training.compute import budget_steps
from benchkit.training.softcodes import soft_codes_of

# dense bf16 tensor-core peaks, FLOP/s: A100 SXM 80 GB, H100 SXM (NVIDIA data sheets)
GPU_PEAKS: dict[str, float] = {"A100": 312e12, "H100": 989e12}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DRAWS = 3  # MAR mask-ratio draws averaged


@dataclass(frozen=True)
class Plan:
    """The cost estimate of one config's generator training."""

    name: str
    generator_params: int
    tokenizer_params: int
    flops_per_image: float  # one training step, forward + backward
    activation_bytes_per_image: float
    checkpointed_activation_bytes_per_image: float
    steps: int
    batch_size: int
    gpus: int
    utilisation: float
    gpu_hours: dict[str, float]

    @property
    def per_gpu_batch(self) -> int:
        """Images per GPU per step."""
        return self.batch_size // self.gpus

    def memory_gb(self, checkpointed: bool, ema: bool = True) -> float:
        """Estimated GPU memory (GB) per GPU: training state plus the activations of the per-GPU batch."""
        state = self.generator_params * (20 if ema else 16)
        act = self.checkpointed_activation_bytes_per_image if checkpointed else self.activation_bytes_per_image
        return (state + act * self.per_gpu_batch) / 1e9


class _MetaScalars(TorchDispatchMode):
    """Lets ``float(tensor)`` (the generators' loss logs) return 1.0 on meta tensors instead of failing."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return 1.0
        return func(*args, **(kwargs or {}))


def _meta_batch(spec: TokenSpec, dtype: torch.dtype, soft_targets: bool = False) -> Batch:
    shape = (1, *spec.grid) + ((spec.depth,) if spec.depth > 1 else ())
    if spec.kind == "discrete":
        tokens = torch.zeros(shape, dtype=torch.long, device="meta")
    else:
        tokens = torch.zeros(*shape, int(spec.dim or 0), dtype=dtype, device="meta")
    # soft targets (RQ-Transformer): a float32 distribution over the codebook per code, kept for the backward pass
    targets = torch.zeros(*shape, int(spec.vocab_size or 0), device="meta") if soft_targets else None
    return Batch(tokens, torch.zeros(1, dtype=torch.long, device="meta"), targets)


def measure_step(
    gen: Any, spec: TokenSpec, dtype: torch.dtype, *, checkpointed: bool, soft_targets: bool = False
) -> tuple[float, float]:
    """(FLOPs, bytes of saved activations) of one training step on one image, averaged over ``DRAWS`` draws."""
    set_grad_checkpointing(gen, checkpointed)
    batch = _meta_batch(spec, dtype, soft_targets)
    params = {id(p) for p in gen.parameters()}
    flops, saved = 0.0, 0.0
    for draw in range(DRAWS):
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            base = t._base if t._base is not None else t  # a view saved next to its base is counted once
            # weights are state, not activations; [B, H, T, T] attention probabilities are stored by the math
            # kernel that runs on meta, not by the flash / memory-efficient kernels of GPUs
            attention = base.ndim == 4 and base.shape[-1] == base.shape[-2]
            if id(base) not in params and not attention:
                seen[id(base)] = base.numel() * base.element_size()  # noqa: B023 - used within this draw
            return t

        def step() -> None:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = gen.loss(batch).loss
            loss.backward()

        torch.manual_seed(draw)
        with _MetaScalars():
            flops += flops_per_call(step)
        saved += sum(seen.values())
    set_grad_checkpointing(gen, False)
    return flops / DRAWS, saved / DRAWS


def make_plan(cfg: RunConfig, *, gpus: int, utilisation: float = 0.4, num_classes: int = 1000) -> Plan:
    """Estimate the generator training of ``cfg`` on ``gpus`` GPUs at ``utilisation`` of the bf16 peak."""

    if gpus < 1 or cfg.train.batch_size % gpus:
        raise ConfigError(f"--gpus must divide train.batch_size {cfg.train.batch_size}, got {gpus}")
    if not 0.0 < utilisation <= 1.0:
        raise ConfigError(f"utilisation must be in (0, 1], got {utilisation}")
    combo = check(cfg, include_eval=False)
    dtype = DTYPES[cfg.train.precision]
    meta = torch.device("meta")
    with meta:
        tok = build_tokenizer(cfg, meta)
        gen = build_generator(cfg, combo, num_classes, meta)
    n_params = count_params(gen)
    gen = gen.to(dtype).train()  # activations in the training precision (autocast does not run on meta)
    soft = soft_codes_of(cfg, combo.kind) is not None
    flops, act = measure_step(gen, combo.spec, dtype, checkpointed=False, soft_targets=soft)
    _, act_ckpt = measure_step(gen, combo.spec, dtype, checkpointed=True, soft_targets=soft)
    steps = planned_steps(cfg, flops)
    total = flops * steps * cfg.train.batch_size
    hours = {name: total / (peak * utilisation) / 3600 for name, peak in GPU_PEAKS.items()}
    return Plan(
        cfg.name,
        n_params,
        count_params(tok),
        flops,
        act,
        act_ckpt,
        steps,
        cfg.train.batch_size,
        gpus,
        utilisation,
        hours,
    )


def planned_steps(cfg: RunConfig, flops_per_image: float) -> int:
    """``train.steps``, or the steps a training budget (``train.budget_flops`` / ``budget_images``) allows at
    ``flops_per_image`` per image, by the rule training uses (:func:`benchkit.training.compute.budget_steps`). Training
    recounts its step on its own device, where the flash attention kernel's backward recomputes the scores (seven
    attention matmuls against the math kernel's six counted here), so its steps can differ by a few percent."""

    if not (cfg.train.budget_flops or cfg.train.budget_images):
        return cfg.train.steps
    return budget_steps(cfg.train, max(1, round(flops_per_image * cfg.train.batch_size)))
