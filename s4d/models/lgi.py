"""LGI-Former, the encoder of MAE-DFER (Sun et al., ACM MM 2023), and its published checkpoints.

The token grid (t, h, w) is cut into regions of `cfg.lgi.region` tokens; each region carries
`cfg.lgi.tokens` learnable representative tokens. One block:
  1. local:    self-attention inside each region (its tokens and its representatives),
  2. global:   self-attention among all representative tokens of the clip,
  3. exchange: every local token attends to all representative tokens (cross-attention),
  4. FFN on every token (plus the MoAE branch on the last `moae.layers` blocks, as in the ViT).
Local attention costs R * (S + m)^2 instead of N^2 for N = R * S tokens, which is where the saving comes from.
The classifier pools the representative tokens (MAE-DFER's released models: `lg_classify_token_type=region`).

Shapes: a region tensor is (B, R, m + S, D): R regions in (t, h, w) region order, the m representatives first,
then the region's S tokens in (t, h, w) order.
"""
from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Attention
from torch import nn

from s4d.config import LGIConfig, ModelConfig, MoAEConfig
from s4d.models.classifier import S4DClassifier
from s4d.models.moae import MoAELayer
from s4d.models.vit import HMLPEmbed, LayerNorm, TubeletEmbed, VideoViT, position_table



# -------------------------------------------------------------------------------------------- regions
def region_layout(grid: tuple[int, int, int], region: list[int] | tuple[int, ...]) -> tuple[int, int, int]:
    """Region size for an input grid (t, h, w). An input with fewer temporal slices than a region (an image,
    a short clip) is one region deep in time. Raises ValueError when the region does not divide the grid."""
    size = (min(region[0], grid[0]), region[1], region[2])
    if any(g % r for g, r in zip(grid, size)):
        raise ValueError(f"lgi region {list(region)} does not divide the token grid {list(grid)} (t, h, w)")
    return size


def region_index(grid: tuple[int, int, int], size: tuple[int, int, int]) -> torch.Tensor:
    """(R, S) flat token ids (t, h, w order) of each region; regions in (t, h, w) order."""
    t, h, w = grid
    rt, rh, rw = size
    ids = torch.arange(t * h * w).view(t // rt, rt, h // rh, rh, w // rw, rw)
    return ids.permute(0, 2, 4, 1, 3, 5).reshape(-1, rt * rh * rw)


# ------------------------------------------------------------------------------------------- modules
class CrossAttention(nn.Module):
    """Multi-head attention of queries x on a context (keys and values)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q(x).view(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class LGIBlock(nn.Module):
    """Local, global and exchange attention, then the FFN (+ MoAE when `moae` is given)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float, num_rep: int,
                 moae: MoAEConfig | None = None):
        super().__init__()
        self.num_rep = num_rep
        self.local_norm = LayerNorm(dim)
        self.local_attn = Attention(dim, num_heads, qkv_bias=True)
        self.global_norm = LayerNorm(dim)
        self.global_attn = Attention(dim, num_heads, qkv_bias=True)
        self.exchange_norm = LayerNorm(dim)
        self.exchange_context_norm = LayerNorm(dim)
        self.exchange_attn = CrossAttention(dim, num_heads)
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.moe_layer = MoAELayer(dim, moae) if moae is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, r, s, d = x.shape
        m = self.num_rep
        # Stochastic depth drops per region where the work is per region, per clip where it is global.
        local = x.reshape(b * r, s, d)
        x = (local + self.drop_path(self.local_attn(self.local_norm(local)))).view(b, r, s, d)
        rep, tokens = x[:, :, :m].reshape(b, r * m, d), x[:, :, m:].reshape(b, r * (s - m), d)
        rep = rep + self.drop_path(self.global_attn(self.global_norm(rep)))
        tokens = tokens + self.drop_path(self.exchange_attn(self.exchange_norm(tokens),
                                                            self.exchange_context_norm(rep)))
        x = torch.cat([rep.view(b, r, m, d), tokens.view(b, r, s - m, d)], dim=2).view(b * r, s, d)
        h = self.norm2(x)
        out = self.mlp(h)
        if self.moe_layer is not None:
            out = out + self.moe_layer(h)
        return (x + self.drop_path(out)).view(b, r, s, d)


class LGIFormer(VideoViT):
    """The LGI-Former encoder with the ViT's interface: `embed`, `blocks`, `norm`, `moae_layers`, plus
    `encode` (all tokens) and `forward_regions` (tokens already grouped by region, e.g. the visible ones)."""

    def __init__(self, cfg: ModelConfig, moae_layers: int = 0, drop_path: float = 0.0, final_norm: bool = False):
        nn.Module.__init__(self)  # not VideoViT.__init__: it would build ViT blocks only to replace them
        if cfg.pos_embed not in ("sincos3d", "sincos_flat"):
            raise ValueError(f"the lgi encoder uses a fixed position table (sincos3d or sincos_flat), "
                             f"got pos_embed {cfg.pos_embed!r}")
        self.cfg = cfg
        grid = (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
        self.region_size = region_layout(grid, cfg.lgi.region)
        self.patch_embed = HMLPEmbed(cfg) if cfg.stem == "hmlp" else TubeletEmbed(cfg)
        self.tokens_per_slice = grid[1] * grid[2]
        self.register_buffer("pos_embed", position_table(cfg, cfg.embed_dim)[None], persistent=False)
        num_regions = math.prod(g // r for g, r in zip(grid, self.region_size))
        # (R * m, D), region-major: a region's m representatives are consecutive rows (MAE-DFER: m = 1).
        self.region_tokens = nn.Parameter(nn.init.trunc_normal_(
            torch.zeros(num_regions * cfg.lgi.tokens, cfg.embed_dim), std=0.02))
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()
        first_moae = cfg.depth - moae_layers
        self.blocks = nn.ModuleList([
            LGIBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, rates[i], cfg.lgi.tokens,
                     cfg.moae if i >= first_moae else None)
            for i in range(cfg.depth)
        ])
        self.norm = LayerNorm(cfg.embed_dim) if final_norm else nn.Identity()

    def moae_layers(self) -> list[nn.Module]:
        return [b.moe_layer for b in self.blocks if b.moe_layer is not None]

    def region_index(self, grid_t: int) -> torch.Tensor:
        """(R, S) token ids of each region for an input of grid_t temporal slices."""
        side = self.cfg.img_size // self.cfg.patch_size
        grid = (grid_t, side, side)
        return region_index(grid, region_layout(grid, self.cfg.lgi.region))

    def forward_regions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, S, D) tokens grouped by region -> (B, R, S, D) tokens, (B, R * m, D) representatives.
        An input with fewer regions (an image, a short clip) uses the first rows of representatives, as it
        uses the first slices of the position table."""
        b, r, _, d = x.shape
        m = self.cfg.lgi.tokens
        rep = self.region_tokens[: r * m].to(x.dtype).view(1, r, m, d).expand(b, -1, -1, -1)
        x = torch.cat([rep, x], dim=2)
        for block in self.blocks:
            x = block(x)
        return x[:, :, m:], x[:, :, :m].reshape(b, r * m, d)

    def grouped(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images or videos -> embedded tokens grouped by region (B, R, S, D) and their ids (R, S)."""
        tokens = self.embed(x)
        index = self.region_index(tokens.shape[1] // self.tokens_per_slice).to(tokens.device)
        return tokens[:, index], index

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images or videos -> (B, N, D) tokens in (t, h, w) order and (B, R * m, D) representatives."""
        regions, index = self.grouped(x)
        out, rep = self.forward_regions(regions)
        b, _, _, d = out.shape
        return out.new_empty(b, index.numel(), d).index_copy_(1, index.flatten(), out.flatten(1, 2)), rep


class LGIClassifier(S4DClassifier, LGIFormer):
    """S4D's classifier (heads, MoAE, training hooks) on the LGI-Former; built by S4DClassifier when
    `cfg.encoder == "lgi"`. Features: fc_norm of the pooled representative tokens."""

    def __init__(self, cfg: ModelConfig, num_dynamic_classes: int, num_static_classes: int = 0):
        super().__init__(cfg, num_dynamic_classes, num_static_classes)
        self.fc_norm.eps = 1e-6  # MAE-DFER's

    def features(self, x: torch.Tensor) -> torch.Tensor:
        _, rep = self.forward_regions(self.grouped(x)[0])
        return self.fc_norm(rep.amax(dim=1) if self.cfg.pool == "max" else rep.mean(dim=1))

    def group_matcher(self, coarse: bool = False) -> dict:
        """The representative tokens start the network, like the stem (layer-wise LR decay)."""
        return {"stem": r"^(?:patch_embed|region_tokens)", "blocks": [(r"^blocks\.(\d+)", None)]}

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | {"region_tokens"}


S4DClassifier.encoders["lgi"] = LGIClassifier


# ------------------------------------------------------------------------------ MAE-DFER checkpoints
class MAEDFERError(ValueError):
    """A file or argument set that is not a MAE-DFER LGI-Former checkpoint this converter reads."""


# MAE-DFER's model names: fine-tuning (classifier) and pretraining (MAE). Widths, depths and the patch come
# from the tensors; every official model has 64 channels per attention head (768/12, 512/8, decoder 384/6).
MAEDFER_MODELS = {"vit_base_dim512_no_depth_patch16_160": "classifier", "vit_base_patch16_160": "classifier",
                  "pretrain_videomae_base_dim512_no_depth_patch16_160": "mae",
                  "pretrain_videomae_base_patch16_160": "mae"}
HEAD_DIM = 64
# Arguments whose non-default values change the architecture in ways we do not build.
MAEDFER_FIXED = {"attn_type": "local_global", "lg_first_attn_type": "self", "lg_third_attn_type": "cross",
                 "lg_attn_param_sharing_first_third": False, "lg_attn_param_sharing_all": False,
                 "lg_no_second": False, "lg_no_third": False}


@dataclass
class Converted:
    kind: str  # "classifier" (a fine-tuned model) or "mae" (a pretraining checkpoint)
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]  # our names; loads strictly into LGIClassifier / MaskedAutoencoder
    num_dynamic_classes: int  # 0 for "mae"


def convert_maedfer(sd: dict[str, torch.Tensor], args: argparse.Namespace | dict) -> Converted:
    """MAE-DFER's LGI-Former state dict + its run args -> our state dict and model config.

    Every official tensor must find its place (else MAEDFERError naming the keys). Official attention has
    separate q / kv matrices and q / v biases (the k bias is zero); ours fuses q, k, v where the query and the
    context are the same tokens (local and global attention)."""
    a = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    name = a.get("model")
    if name not in MAEDFER_MODELS:
        raise MAEDFERError(f"args.model {name!r} is not an LGI-Former model of MAE-DFER "
                           f"(expected one of {', '.join(MAEDFER_MODELS)})")
    for key, expected in MAEDFER_FIXED.items():
        if a.get(key, expected) != expected:
            raise MAEDFERError(f"args.{key} = {a[key]!r}: only {expected!r} (MAE-DFER's released models) is supported")
    kind = MAEDFER_MODELS[name]
    if kind == "classifier":
        if a.get("lg_classify_token_type", "org") != "region":
            raise MAEDFERError(f"args.lg_classify_token_type = {a.get('lg_classify_token_type')!r}: only 'region' "
                               "(the released fine-tuned models) is supported")
        if not a.get("use_mean_pooling", True):
            raise MAEDFERError("args.use_mean_pooling = False is not supported (the released models pool)")
    depth = a.get("encoder_depth") if kind == "mae" else a.get("depth")
    prefix = "encoder." if kind == "mae" else ""
    if not depth:  # the model name leaves depth to the args; fall back to counting blocks
        depth = len({m[1] for k in sd if (m := re.match(rf"{prefix}blocks\.(\d+)\.", k))})
    if f"{prefix}patch_embed.proj.weight" not in sd:
        raise MAEDFERError(f"the checkpoint has no {prefix}patch_embed.proj.weight (args.model {name!r})")
    patch = sd[f"{prefix}patch_embed.proj.weight"]
    width = patch.shape[0]
    decoder_width = sd["decoder.norm.weight"].shape[0] if kind == "mae" and "decoder.norm.weight" in sd else 384
    if f"{prefix}pos_embed" in sd:
        raise MAEDFERError("a learned position table (use_learnable_pos_emb) is not supported")
    cfg = ModelConfig(
        img_size=int(a.get("input_size", 160)), patch_size=patch.shape[-1], num_frames=int(a.get("num_frames", 16)),
        tubelet_size=patch.shape[2], embed_dim=width, depth=int(depth), num_heads=width // HEAD_DIM, mlp_ratio=4.0,
        drop_path=float(a.get("drop_path", 0.1)), pos_embed="sincos_flat", stem="linear", pool="mean",
        decoder_dim=decoder_width, decoder_heads=decoder_width // HEAD_DIM,
        decoder_depth=int(a.get("decoder_depth", 4)), moae=MoAEConfig(layers=0), encoder="lgi",
        lgi=LGIConfig(region=[int(v) for v in a.get("lg_region_size", (2, 2, 10))], tokens=1))

    rest = dict(sd)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in rest:
            raise MAEDFERError(f"the checkpoint has no {key}")
        return rest.pop(key)

    def fused(src: str) -> tuple[torch.Tensor, torch.Tensor]:  # official q / kv -> one qkv
        q_bias, v_bias = take(src + "q_bias"), take(src + "v_bias")
        weight = torch.cat([take(src + "q.weight"), take(src + "kv.weight")])
        return weight, torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])

    enc = "encoder." if kind == "mae" else ""
    out[enc + "patch_embed.proj.weight"], out[enc + "patch_embed.proj.bias"] = patch, rest.pop(
        f"{prefix}patch_embed.proj.bias")
    rest.pop(f"{prefix}patch_embed.proj.weight")
    out[enc + "region_tokens"] = take(f"{prefix}lg_region_tokens")
    for i in range(cfg.depth):
        src, dst = f"{prefix}blocks.{i}.", f"{enc}blocks.{i}."
        for official, ours in (("first_attn_norm0", "local_norm"), ("second_attn_norm0", "global_norm"),
                               ("third_attn_norm0", "exchange_norm"), ("third_attn_norm1", "exchange_context_norm"),
                               ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"),
                               ("first_attn.proj", "local_attn.proj"), ("second_attn.proj", "global_attn.proj"),
                               ("third_attn.proj", "exchange_attn.proj")):
            for p in ("weight", "bias"):
                out[f"{dst}{ours}.{p}"] = take(f"{src}{official}.{p}")
        for official, ours in (("first_attn.", "local_attn."), ("second_attn.", "global_attn.")):
            out[f"{dst}{ours}qkv.weight"], out[f"{dst}{ours}qkv.bias"] = fused(src + official)
        q_bias = take(src + "third_attn.q_bias")
        v_bias = take(src + "third_attn.v_bias")
        out[dst + "exchange_attn.q.weight"] = take(src + "third_attn.q.weight")
        out[dst + "exchange_attn.q.bias"] = q_bias
        out[dst + "exchange_attn.kv.weight"] = take(src + "third_attn.kv.weight")
        out[dst + "exchange_attn.kv.bias"] = torch.cat([torch.zeros_like(v_bias), v_bias])
    if kind == "classifier":
        for p in ("weight", "bias"):
            out[f"fc_norm.{p}"] = take(f"fc_norm.{p}")
            out[f"head_dynamic.{p}"] = take(f"head.{p}")
        classes = out["head_dynamic.weight"].shape[0]
    else:
        for p in ("weight", "bias"):
            out[f"encoder.norm.{p}"] = take(f"encoder.norm.{p}")
            out[f"decoder.norm.{p}"] = take(f"decoder.norm.{p}")
            out[f"decoder.head.{p}"] = take(f"decoder.head.{p}")
        out["encoder_to_decoder.weight"] = take("encoder_to_decoder.weight")
        out["decoder.mask_token"] = take("mask_token")
        for i in range(cfg.decoder_depth):
            src = f"decoder.blocks.{i}."
            q_bias, v_bias = take(src + "attn.q_bias"), take(src + "attn.v_bias")
            out[src + "attn.qkv.weight"] = take(src + "attn.qkv.weight")
            out[src + "attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
            for name_ in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
                for p in ("weight", "bias"):
                    out[f"{src}{name_}.{p}"] = take(f"{src}{name_}.{p}")
        classes = 0
    if rest:
        raise MAEDFERError(f"{len(rest)} checkpoint tensors have no place in the LGI-Former: "
                           f"{', '.join(sorted(rest)[:8])}{' ...' if len(rest) > 8 else ''}")
    return Converted(kind, cfg, out, classes)
