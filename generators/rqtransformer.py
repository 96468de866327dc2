"""RQ-Transformer: a spatial transformer over grid positions and a depth transformer over each position's D codes.

Kim et al., "Autoregressive Image Generation using Residual Quantization", CVPR 2022, arXiv 2203.01941;
reference code https://github.com/kakaobrain/rq-vae-transformer at 341395e. The spatial transformer is causal
over the h*w positions in raster order: slot 0 holds the class embedding, slot t the sum of the D code
embeddings of position t-1, each plus a learned position embedding; its output h_t is the context of position t.
The depth transformer is causal over d = 0..D-1 for every position at once: its input is h_t at d = 0 and the
embedding of the partial sum of codes < d after that (``cumsum_depth_ctx``), plus a learned depth embedding.
One head, shared by all depths, models each code given the depth transformer's output (CE on the discrete
stack, or Diffusion Loss on the per-depth vectors of the continuous depth-D view). Both transformers keep a KV
cache at sampling (the depth cache is reset at every position).

Deviations:
- By default code embeddings are learned and the partial sum is taken over embeddings, so the generator never
  sees the tokenizer. ``code_embedding = "codebook"`` is the official path instead: a frozen copy of the RQ-VAE
  codebook (buffer ``codebook`` [K, codebook_dim], filled by ``benchkit import rqtransformer``) feeds ``spatial_emb``
  (the official ``input_mlp``, applied per depth and then summed, so its bias counts D times) and ``depth_emb``
  (``head_mlp``, applied to the cumulative sum of code vectors); the class slot has its own position embedding
  (``start_pos``, official ``pos_emb_cond``) and ``spatial_pos`` is indexed by image position (``pos_emb_hw``);
  LayerNorms use eps 1e-5 (torch's default, as minGPT) and the spatial stack has no final LayerNorm. Trained
  by benchkit, the table is the bound RQ tokenizer's codebook (``bind_tokenizer``); an import fills it from the
  official checkpoint.
- Class-conditional with label dropout and classifier-free guidance (the paper has no CFG and uses rejection
  sampling); no top-k / top-p filtering by default (the ce head's ``top_k`` / ``top_p``).
- Hard targets by default. ``soft_target_temperature = 0.5`` with ``stochastic_codes = true`` is the recipe of the
  official configs (the paper presets use it): the pipeline caches the RQ-VAE's continuous latents and re-quantizes
  every batch (``benchkit.nn.codebook.soft_residual_codes``), the inputs are codes drawn depth by depth from
  q_d = softmax(-||r_{d-1} - e_k||^2 / temperature) and the ce head's targets are the q_d themselves (soft-target
  cross-entropy). The temperature acts on raw squared distances in the tokenizer's code space, so 0.5 means less
  smoothing at benchkit's small code dimension than at the official 256. The official trainer is unreleased: how
  it combined the two is inferred from its configs and RQ-VAE helper.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from benchkit.core.errors import IncompatibleComponentsError
from benchkit.core.interfaces import Batch, LossOutput, Progress, TokenSpec
from benchkit.core.registry import GENERATORS
from benchkit.generators.common import (
    ClassConditionalGenerator,
    GeneratorOptions,
    GuidedSampler,
    check_fixed_steps,
)
from benchkit.nn.conditioning import token_embedding
from benchkit.nn.transformer import IncrementalDecoder, Transformer, init_weights

OFFICIAL_LN_EPS = 1e-5  # torch's LayerNorm default, used by the official minGPT-style blocks


@dataclass(frozen=True)
class RQTransformerConfig(GeneratorOptions):
    """Options of the RQ-Transformer generator (defaults = ``tiny``)."""

    spatial_depth: int = 3  # blocks of the spatial transformer
    depth_depth: int = 1  # blocks of the depth transformer
    use_kv_cache: bool = True
    code_embedding: Literal["learned", "codebook"] = "learned"  # "codebook": the official embedding path
    codebook_dim: int = 0  # width of the frozen codebook copy (code_embedding = "codebook" only)
    soft_target_temperature: float = 0.0  # > 0: soft-target CE at this temperature (needs the rq tokenizer, ce head)
    stochastic_codes: bool = False  # with soft targets: input codes drawn from q_d instead of the argmin

    def counts(self) -> dict[str, int]:
        """Blocks of both transformers (>= 1)."""
        return {"spatial_depth": self.spatial_depth, "depth_depth": self.depth_depth}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.code_embedding not in ("learned", "codebook"):
            raise ValueError(f"code_embedding must be one of learned, codebook, got {self.code_embedding!r}")
        if (self.code_embedding == "codebook") != (self.codebook_dim > 0):
            raise ValueError("codebook_dim must be > 0 exactly when code_embedding = 'codebook'")
        if self.soft_target_temperature < 0 or (self.stochastic_codes and self.soft_target_temperature == 0):
            raise ValueError("soft_target_temperature must be >= 0 (0 = hard targets) and > 0 with stochastic_codes")


@GENERATORS.register("rqtransformer", config=RQTransformerConfig)
class RQTransformerGenerator(ClassConditionalGenerator):
    """RQ-Transformer: causal spatial transformer plus a depth transformer over stacked codes (Kim et al. 2022)."""

    cfg: RQTransformerConfig

    def build(self) -> None:
        """Code embeddings (learned, or the official frozen-codebook path), the spatial and depth transformers."""
        cfg, spec = self.cfg, self.spec
        self.use_kv_cache = cfg.use_kv_cache
        W, D, P = cfg.width, spec.depth, spec.positions
        self.official = cfg.code_embedding == "codebook"
        if self.official:
            if spec.kind != "discrete":
                raise IncompatibleComponentsError("code_embedding = 'codebook' needs discrete tokens (ids)")
            self.register_buffer("codebook", torch.zeros(int(spec.vocab_size or 0), cfg.codebook_dim))
            self.spatial_emb: nn.Module = nn.Linear(cfg.codebook_dim, W)  # official input_mlp
            self.depth_emb: nn.Module = nn.Linear(cfg.codebook_dim, W)  # official head_mlp
            self.start_pos = nn.Parameter(torch.zeros(1, 1, W))  # official pos_emb_cond
        else:
            self.spatial_emb = token_embedding(spec, W)
            self.depth_emb = token_embedding(spec, W)
        self.class_emb = self.class_embedding()
        self.spatial_pos = nn.Parameter(torch.zeros(1, P, W))  # slot 0 = class, slot t = codes of position t-1
        self.depth_pos = nn.Parameter(torch.zeros(1, D, W))
        self.spatial = Transformer(W, cfg.spatial_depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.depth = Transformer(W, cfg.depth_depth, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.spatial_pos, std=0.02)
        nn.init.normal_(self.depth_pos, std=0.02)
        if self.official:
            nn.init.normal_(self.start_pos, std=0.02)
            self.spatial.add_module("norm", nn.Identity())  # the official spatial stack ends without a LayerNorm
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eps = OFFICIAL_LN_EPS
        if cfg.soft_target_temperature > 0 and (self.head_name != "ce" or spec.kind != "discrete"):
            raise IncompatibleComponentsError("soft_target_temperature needs discrete tokens and the ce head")

    @torch.no_grad()
    def bind_tokenizer(self, tokenizer: nn.Module) -> None:
        """With ``code_embedding = "codebook"``: copy the RQ-VAE's codebook into the frozen table both embeddings
        read (the import fills it from the official checkpoint instead)."""
        if not self.official:
            return
        codebook = getattr(getattr(tokenizer, "codebook", None), "weight", None)
        if codebook is None or tuple(codebook.shape) != tuple(self.codebook.shape):
            found = "no codebook" if codebook is None else f"a {tuple(codebook.shape)} codebook"
            raise IncompatibleComponentsError(
                f"code_embedding = 'codebook' reads a {tuple(self.codebook.shape)} codebook (vocabulary x "
                f"codebook_dim); the tokenizer has {found}: set generator.options.codebook_dim to its code_dim"
            )
        self.codebook.copy_(codebook)

    @classmethod
    def check_spec(cls, spec: TokenSpec) -> str | None:
        """Needs stacked tokens: depth > 1."""
        if spec.depth < 2:
            return "rqtransformer needs stacked tokens (depth > 1), e.g. from the rq tokenizer"
        return None

    def forward(self, codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: codes [B, P, D(, C)], labels [B] -> condition vectors [B, P, D, W] for every code."""
        B, P, D = codes.shape[:3]
        # 1. spatial input: class token, then the summed code embeddings of positions 0..P-2 (shifted right)
        e = self._embed_codes(codes)  # [B, P, W]
        x = torch.cat([self.class_emb(labels)[:, None], e[:, :-1]], 1) + self._slot_pos()
        h = self.spatial(x, causal=True)  # [B, P, W]: context of each position
        # 2. depth input: context, then the partial sums of code embeddings of depths < d (cumsum_depth_ctx)
        partial = self._depth_input(self._depth_term(codes[:, :, :-1]).cumsum(2))  # [B, P, D-1, W]
        y = torch.cat([h[:, :, None], partial], 2) + self.depth_pos  # [B, P, D, W]
        z = self.depth(y.reshape(B * P, D, -1), causal=True)  # [B*P, D, W]
        return z.reshape(B, P, D, -1)

    def _slot_pos(self) -> torch.Tensor:
        """Position embedding of every spatial slot [1, P, W] (slot 0 = class, slot t = codes of position t-1)."""
        if self.official:
            return torch.cat([self.start_pos, self.spatial_pos[:, :-1]], 1)
        return self.spatial_pos

    def _embed_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Spatial input of code stacks [..., D(, C)] -> [..., W]: per-depth embeddings summed over depth."""
        if self.official:
            return self.spatial_emb(self.codebook[codes]).sum(-2)
        return self.spatial_emb(codes).sum(-2)

    def _depth_term(self, codes: torch.Tensor) -> torch.Tensor:
        """What the depth context sums per code: its embedding, or (official path) its codebook vector."""
        return self.codebook[codes] if self.official else self.depth_emb(codes)

    def _depth_input(self, partial: torch.Tensor) -> torch.Tensor:
        """Depth-transformer input [..., W] from a partial sum of ``_depth_term`` (official: head_mlp of it)."""
        return self.depth_emb(partial) if self.official else partial

    def loss(self, batch: Batch) -> LossOutput:
        """Head loss averaged over every code of every position (all depths share one head)."""
        B, P, D = batch.tokens.shape[0], self.spec.positions, self.spec.depth
        codes = batch.tokens.reshape(B, P, D, *batch.tokens.shape[4:])  # [B, P, D(, C)]
        z = self.forward(codes, self.training_labels(batch.labels))
        target = codes.reshape(B * P * D, *codes.shape[3:])
        if batch.targets is not None:  # soft targets float [B, h, w, D, K] -> [B*P*D, K]
            target = batch.targets.reshape(B * P * D, -1)
        loss = self.head.loss(z.reshape(B * P * D, -1), target, None)
        return LossOutput(loss, {"loss": float(loss.detach())})

    def sample_tokens(self, labels: torch.Tensor, sampler: GuidedSampler, progress: Progress | None) -> torch.Tensor:
        """Sample position by position in raster order, each position's D codes by the depth transformer.

        ``steps`` must be None or h*w (one spatial step per position). ``use_kv_cache`` switches the caches of
        both transformers; without them every step recomputes its prefix (same tokens for the same seed).
        """
        P, D, B = self.spec.positions, self.spec.depth, labels.shape[0]
        check_fixed_steps(sampler.settings.steps, P, "rqtransformer takes one step per position (h*w positions)")
        slot_pos = self._slot_pos()
        x = self.class_emb(sampler.class_labels(labels))[:, None] + slot_pos[:, :1]  # [B', 1, W] slot 0
        spatial = IncrementalDecoder(self.spatial, P, x, cached=self.use_kv_cache).start(x)
        depth = IncrementalDecoder(self.depth, D, x, cached=self.use_kv_cache)
        out: list[torch.Tensor] = []
        for t in range(P):
            # 1. spatial context h_t of position t (slot t holds the codes of position t-1)
            h = spatial.output()  # [B', W]
            codes = self._sample_depths(h, depth, sampler, done=t * D, total=P * D)  # [B, D(, C)]
            out.append(codes)
            if progress is not None:
                progress(t + 1, P)
            if t + 1 < P:
                # 4. feed the summed code embeddings of position t at slot t+1
                spatial.push(self._embed_codes(sampler.both(codes))[:, None] + slot_pos[:, t + 1 : t + 2])
        tokens = torch.stack(out, 1)  # [B, P, D(, C)]
        return tokens.reshape(B, *self.spec.token_shape).to(self.spec.dtype)

    def _sample_depths(
        self, h: torch.Tensor, depth: IncrementalDecoder, sampler: GuidedSampler, *, done: int, total: int
    ) -> torch.Tensor:
        """The D codes of one position [B, D(, C)] given its spatial context h [B', W]; ``done`` of ``total`` codes
        were generated before."""
        D = self.spec.depth
        # 2. depth loop: code d given h_t and the partial sum of codes < d
        depth.start((h + self.depth_pos[:, 0])[:, None])  # [B', 1, W]
        partial = h.new_zeros(())
        codes: list[torch.Tensor] = []
        for d in range(D):
            # 3. guidance for the fraction of codes generated after this one (Muse/MAR linear ramp)
            code = sampler.draw(depth.output(), (done + d + 1) / total)  # [B(, C)]
            codes.append(code)
            if d + 1 < D:
                partial = partial + self._depth_term(sampler.both(code))
                depth.push((self._depth_input(partial) + self.depth_pos[:, d + 1])[:, None])
        return torch.stack(codes, 1)
