"""Pre-norm transformer blocks with scaled-dot-product attention and a KV cache, shared by every generator.

A block is LayerNorm -> multi-head self-attention -> residual, LayerNorm -> MLP (GELU, ratio 4) -> residual,
the GPT-2 / ViT layout used by MAR (timm ViT ``Block``), the RQ-Transformer (minGPT blocks) and LlamaGen.
Attention goes through ``torch.nn.functional.scaled_dot_product_attention`` so the fused kernels of each
device are used. ``causal=True`` gives a GPT mask; a :class:`KVCache` keeps the keys and values of earlier
positions so incremental decoding feeds only the new tokens (LlamaGen's static cache, gpt-fast style).

Deviations:
- LayerNorm instead of LlamaGen's RMSNorm, learned absolute positions live in the generators (no RoPE).
- The cache is preallocated for the whole sequence once per ``generate`` call; :class:`IncrementalDecoder` drives
  it (or recomputes the prefix without it) one new slot at a time.

Gradient checkpointing (``set_grad_checkpointing``, the trainer's ``grad_checkpoint`` switch) recomputes each
block's activations in the backward pass instead of storing them: same gradients, less memory, ~30% more compute.
The switch also reaches the residual blocks of the Diffusion Loss head's denoiser (``heads/diffloss.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

LN_EPS = 1e-6


def init_weights(module: nn.Module) -> None:
    """MAR/ViT initialisation: xavier-uniform Linear with zero bias, unit LayerNorm, N(0, 0.02) embeddings."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class KVCache:
    """Preallocated keys and values of every block of one :class:`Transformer` for incremental decoding."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (layers, batch, heads, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0  # positions already stored

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new k, v [B, H, T, hd] of ``layer`` after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        assert end <= self.max_len, f"KV cache overflow: {end} > {self.max_len}"
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reset(self) -> None:
        """Forget every stored position (the buffers are reused)."""
        self.length = 0


class MLP(nn.Module):
    """Two Linear layers with a GELU between them."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm layout) and SDPA."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert dim % heads == 0, f"width {dim} is not divisible by {heads} heads"
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]; with ``cache`` the T new positions attend to every cached one; with ``rows``
        (long [B, n], not causal) only those positions query: [B, n, D]."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x [B,H,T,hd]
        if rows is not None:
            assert not causal and cache is None, "rows selects queries of a bidirectional pass without cache"
            q = q.gather(2, rows[:, None, :, None].expand(-1, self.heads, -1, self.head_dim))
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        mask = None
        is_causal = causal and T > 1 and past == 0
        if causal and T > 1 and past > 0:
            # query i sits at absolute position past + i and may see keys 0 .. past + i
            rows = torch.arange(T, device=x.device)[:, None] + past
            mask = torch.arange(past + T, device=x.device)[None, :] <= rows  # [T, past+T]
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self.drop(self.proj(out.transpose(1, 2).reshape(B, q.shape[2], D)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + mlp(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout)

    def forward(
        self,
        x: torch.Tensor,
        *,
        causal: bool = False,
        cache: KVCache | None = None,
        layer: int = 0,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        a = self.attn(self.norm1(x), causal=causal, cache=cache, layer=layer, rows=rows)
        x = x + a if rows is None else x.gather(1, rows[..., None].expand(-1, -1, x.shape[-1])) + a
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of :class:`Block` followed by a final LayerNorm."""

    def __init__(self, dim: int, layers: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.grad_checkpoint = False

    def forward(self, x: torch.Tensor, *, causal: bool = False, cache: KVCache | None = None) -> torch.Tensor:
        """x [B, T, D] -> [B, T, D]. With ``cache``, x holds only the new positions and the cache advances."""
        recompute = self.grad_checkpoint and cache is None and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            if recompute:  # the RNG state is replayed, so dropout masks match the first pass
                x = torch.utils.checkpoint.checkpoint(block, x, causal=causal, use_reentrant=False)
            else:
                x = block(x, causal=causal, cache=cache, layer=i)
        if cache is not None:
            cache.length += x.shape[1]
        return self.norm(x)

    def forward_rows(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Bidirectional pass returning only positions ``rows`` (long [B, n]) -> [B, n, D], the same values as
        ``forward(x)`` gathered there: the last block computes attention outputs and MLP for those rows only."""
        *first, last = self.blocks
        for block in first:
            x = block(x)
        return self.norm(last(x, rows=rows))

    def new_cache(self, batch: int, max_len: int, like: torch.Tensor) -> KVCache:
        """An empty cache for ``batch`` sequences of up to ``max_len`` positions, on ``like``'s device/dtype."""
        return KVCache(
            len(self.blocks), batch, self.heads, max_len, self.head_dim, device=like.device, dtype=like.dtype
        )


class IncrementalDecoder:
    """Runs a causal :class:`Transformer` one new slot at a time while sampling: through a KV cache (only the new
    slot is computed) or, with ``cached=False``, by recomputing the whole prefix (the reference path).

    ``start(first)`` begins a sequence (the cache buffers, allocated once on ``like``'s device and dtype, are reused),
    ``output()`` returns the transformer's output at the newest slot (call it once per slot), ``push(x)`` appends
    the next slot [B, 1, W].
    """

    def __init__(self, transformer: Transformer, max_len: int, like: torch.Tensor, *, cached: bool) -> None:
        self.transformer = transformer
        self.cache = transformer.new_cache(like.shape[0], max_len, like) if cached else None
        self.new = self.prefix = like

    def start(self, first: torch.Tensor) -> IncrementalDecoder:
        """Begin a new sequence whose only slot is ``first`` [B, 1, W]."""
        if self.cache is not None:
            self.cache.reset()
        self.new = self.prefix = first
        return self

    def output(self) -> torch.Tensor:
        """The transformer's output at the newest slot [B, W]."""
        if self.cache is not None:
            return self.transformer(self.new, causal=True, cache=self.cache)[:, -1]
        return self.transformer(self.prefix, causal=True)[:, -1]

    def push(self, x: torch.Tensor) -> None:
        """Append the slot ``x`` [B, 1, W]."""
        self.new = x
        if self.cache is None:
            self.prefix = torch.cat([self.prefix, x], dim=1)


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> int:
    """Switch gradient checkpointing of every module inside ``model`` that has a boolean ``grad_checkpoint``
    attribute (each :class:`Transformer`, the Diffusion Loss head's denoiser); returns how many there are."""
    found = [m for m in model.modules() if isinstance(getattr(m, "grad_checkpoint", None), bool)]
    for m in found:
        setattr(m, "grad_checkpoint", enabled)  # noqa: B010 - a plain attribute, not a submodule
    return len(found)
