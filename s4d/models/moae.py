"""Mixture of Adapter Experts (MoAE): noisy top-k routing per token over bottleneck adapters.

Block: x = x + attn(LN1 x); h = LN2 x; x = x + FFN(h) + MoAE(h).
Module and parameter names follow the published S4D checkpoints (`moe_layer.router.topkroute_linear`,
`moe_layer.router.noise_linear`, `moe_layer.experts.*`), except that the experts are stored stacked
(E, out, in) so dispatch is one batched matmul; checkpoint.py converts to and from per-expert keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from s4d.config import MoAEConfig


@dataclass
class Routing:
    gates: torch.Tensor  # (T, k) weights of the chosen experts, summing to 1 per token
    experts: torch.Tensor  # (T, k) chosen expert indices, best first
    probs: torch.Tensor  # (T, E) noise-free router probabilities (for the balance loss)


class Router(nn.Module):
    def __init__(self, dim: int, num_experts: int, top_k: int):
        super().__init__()
        self.top_k = top_k
        self.topkroute_linear = nn.Linear(dim, num_experts)
        self.noise_linear = nn.Linear(dim, num_experts)  # learned per-token noise scale

    def forward(self, x: torch.Tensor) -> Routing:
        logits = self.topkroute_linear(x)
        noisy = logits
        # Noise explores experts while training; eval is deterministic. (The published S4D router adds its
        # noise in eval too, so the official model's own eval logits vary from run to run: docs/recipe.md.)
        if self.training:
            noisy = logits + torch.randn_like(logits) * F.softplus(self.noise_linear(x))
        top_values, top_experts = noisy.topk(self.top_k, dim=-1)
        return Routing(top_values.softmax(dim=-1), top_experts, logits.softmax(dim=-1))


class StackedLinear(nn.Module):
    """E independent linear layers applied to (E, C, in) at once."""

    def __init__(self, num: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(num, out_dim))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias[:, None, :], x, self.weight.transpose(1, 2))


class AdapterExperts(nn.Module):
    """Bottleneck adapters fc1 -> GELU -> fc2; fc2 starts at zero so MoAE adds nothing at step 0."""

    def __init__(self, num: int, dim: int, bottleneck: int):
        super().__init__()
        self.fc1 = StackedLinear(num, dim, bottleneck)
        self.fc2 = StackedLinear(num, bottleneck, dim)
        self.reset_output()

    def reset_output(self) -> None:
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoAELayer(nn.Module):
    def __init__(self, dim: int, cfg: MoAEConfig):
        super().__init__()
        self.num_experts, self.top_k, self.capacity_factor = cfg.experts, cfg.top_k, cfg.capacity_factor
        self.policy = cfg.capacity
        self.router = Router(dim, cfg.experts, cfg.top_k)
        self.experts = AdapterExperts(cfg.experts, dim, cfg.bottleneck)
        # Filled by every forward, read by the loss and the logs.
        self.balance_loss = torch.zeros(())
        self.load = torch.zeros(cfg.experts)  # assignments per expert (before capacity)
        self.dropped = torch.zeros((), dtype=torch.long)  # assignments over capacity
        self.top1 = torch.zeros(0, dtype=torch.long)  # first-choice expert per token (routing analysis)

    def capacity(self, tokens: int) -> int:
        if self.policy == "official":  # the published S4D code: int(tokens * top_k / experts * factor)
            return int(tokens * self.top_k / self.num_experts * self.capacity_factor)
        return math.ceil(self.capacity_factor * tokens * self.top_k / self.num_experts)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        shape = h.shape
        x = h.reshape(-1, shape[-1])
        tokens, experts, k = x.shape[0], self.num_experts, self.top_k
        routing = self.router(x)
        capacity = self.capacity(tokens)

        # The order in which assignments take an expert's slots. priority: every token's first choice before
        # any second choice. official (published S4D): per expert, the tokens that chose it in flat order
        # (clip-major, then token), whatever the rank of the choice.
        if self.policy == "official":
            expert_of = routing.experts.reshape(-1)  # (T*k,) token-major
            token_of = torch.arange(tokens, device=x.device).repeat_interleave(k)
            gate_of = routing.gates.reshape(-1).to(x.dtype)
        else:
            expert_of = routing.experts.t().reshape(-1)  # (k*T,) choice-major
            token_of = torch.arange(tokens, device=x.device).repeat(k)
            gate_of = routing.gates.t().reshape(-1).to(x.dtype)
        onehot = F.one_hot(expert_of, experts)
        position = (onehot.cumsum(0) - 1).gather(1, expert_of[:, None]).squeeze(1)
        keep = position < capacity
        # Slots per expert in the buffer: the capacity, or fewer when no expert was routed that many tokens
        # (the buffer's empty slots are computed for nothing). Which assignments are kept does not change.
        slots = max(1, min(capacity, int(onehot.sum(0).max())))
        slot = (expert_of * slots + position)[keep]
        token_kept, gate_kept = token_of[keep], gate_of[keep]

        # Tokens grouped by expert into an (E, slots, D) buffer, one batched matmul, weighted scatter back.
        buffer = x.new_zeros(experts * slots, x.shape[1]).index_copy(0, slot, x[token_kept])
        expert_out = self.experts(buffer.view(experts, slots, -1)).view(experts * slots, -1)
        out = x.new_zeros(x.shape).index_add(0, token_kept, expert_out[slot] * gate_kept[:, None])

        # Switch-style balance loss: E * sum_e (share of assignments to e) * (mean router prob of e).
        share = onehot.sum(0).float() / (tokens * k)
        self.balance_loss = experts * (share * routing.probs.float().mean(0)).sum()
        self.load = onehot.sum(0).detach()
        self.dropped = (~keep).sum().detach()
        self.top1 = routing.experts[:, 0].detach()
        return out.view(shape)


class MoAEBlock(Block):
    """A timm ViT block with an MoAE branch beside the FFN (same key names as timm's Block otherwise)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, cfg: MoAEConfig,
                 norm_layer: type[nn.Module] = nn.LayerNorm):
        super().__init__(dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path, norm_layer=norm_layer)
        self.moe_layer = MoAELayer(dim, cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
        h = self.norm2(x)
        return x + self.drop_path2(self.ls2(self.mlp(h) + self.moe_layer(h)))
