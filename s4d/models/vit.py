"""Video ViT backbone shared by images and videos: tubelet embedding, fixed sin-cos positions, timm blocks.

An image is a clip of one tubelet (repeated to `tubelet_size` frames) and uses the first temporal slice of
the position table, so images and videos share every weight.
"""
from __future__ import annotations

import math
from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from s4d.config import ModelConfig
from s4d.models.moae import MoAEBlock


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """(n,) positions -> (n, dim) sin/cos features at geometric frequencies (dim must be even)."""
    freqs = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim // 2))
    angles = positions.double()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_3d_table(grid: tuple[int, int, int], dim: int) -> torch.Tensor:
    """(t*h*w, dim) table: a quarter of the channels encode time, the rest height and width equally."""
    dim_t = dim // 4 // 2 * 2
    dim_h = (dim - dim_t) // 2 // 2 * 2
    dim_w = dim - dim_t - dim_h
    if dim_w % 2:
        raise ValueError(f"embed_dim {dim} cannot be split into even t/h/w parts")
    t, h, w = grid
    tt, hh, ww = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(tt.flatten(), dim_t), sincos_1d(hh.flatten(), dim_h),
                      sincos_1d(ww.flatten(), dim_w)], dim=1)


def sincos_flat_table(n: int, dim: int) -> torch.Tensor:
    """(n, dim) table over the flattened token index, the one VideoMAE / MAE-DFER / S4D were trained with:
    channel j of position p holds p / 10000^(2*(j//2)/dim), through sin on even j and cos on odd j
    (interleaved, unlike sincos_1d's sines-then-cosines)."""
    j = torch.arange(dim)
    angles = torch.arange(n, dtype=torch.float64)[:, None] / 10000 ** ((2 * (j // 2)).double() / dim)[None]
    return torch.where(j % 2 == 0, angles.sin(), angles.cos()).float()


def position_table(cfg: ModelConfig, dim: int) -> torch.Tensor:
    """The fixed table of `cfg.pos_embed`; for `learned` the official table is the MAE decoder's (the
    published pretraining keeps it fixed) and the encoder's starting value is drawn in VideoViT."""
    grid = (cfg.num_frames // cfg.tubelet_size, cfg.img_size // cfg.patch_size, cfg.img_size // cfg.patch_size)
    if cfg.pos_embed == "sincos3d":
        return sincos_3d_table(grid, dim)
    return sincos_flat_table(math.prod(grid), dim)


# The published models' LayerNorm (VideoMAE / S4D use eps 1e-6; torch's default is 1e-5).
LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def grid_tokens(cfg: ModelConfig) -> int:
    """Tokens of a full clip: (num_frames / tubelet) x (img / patch)^2."""
    return cfg.num_frames // cfg.tubelet_size * (cfg.img_size // cfg.patch_size) ** 2


def as_clip(x: torch.Tensor, tubelet_size: int) -> torch.Tensor:
    """(B, C, H, W) images become (B, C, tubelet, H, W) clips of one tubelet; clips pass through."""
    if x.ndim == 4:
        return x.unsqueeze(2).expand(-1, -1, tubelet_size, -1, -1)
    if x.ndim != 5:
        raise ValueError(f"expected images (B, C, H, W) or videos (B, C, T, H, W), got shape {tuple(x.shape)}")
    return x


class TubeletEmbed(nn.Module):
    """One linear projection per tubelet (ViT / VideoMAE; the published checkpoints use it)."""

    def __init__(self, cfg: ModelConfig, in_chans: int = 3):
        super().__init__()
        kernel = (cfg.tubelet_size, cfg.patch_size, cfg.patch_size)
        self.proj = nn.Conv3d(in_chans, cfg.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.proj(clip).flatten(2).transpose(1, 2)  # (B, N, D), N ordered t, h, w


class HMLPEmbed(nn.Module):
    """Hierarchical MLP stem (Touvron et al., DeiT III): the tubelet is embedded in 3 non-overlapping conv
    stages (patch/4, then 2, then 2) with BatchNorm + GELU between them. Every stage stays inside its own
    patch, so masked pretraining still cannot see hidden patches. On the embedded stills a tiny ViT with one
    linear projection stayed at chance for 10 epochs where it reached 0.26-0.40 val UAR with this stem
    (docs/recipe.md)."""

    def __init__(self, cfg: ModelConfig, in_chans: int = 3):
        super().__init__()
        if cfg.patch_size % 4:
            raise ValueError(f"the hmlp stem needs a patch size divisible by 4, got {cfg.patch_size}")
        hidden = max(cfg.embed_dim // 4, 16)
        first = (cfg.tubelet_size, cfg.patch_size // 4, cfg.patch_size // 4)
        self.proj = nn.Sequential(
            nn.Conv3d(in_chans, hidden, kernel_size=first, stride=first), nn.BatchNorm3d(hidden), nn.GELU(),
            nn.Conv3d(hidden, hidden, kernel_size=(1, 2, 2), stride=(1, 2, 2)), nn.BatchNorm3d(hidden), nn.GELU(),
            nn.Conv3d(hidden, cfg.embed_dim, kernel_size=(1, 2, 2), stride=(1, 2, 2)),
        )

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return self.proj(clip).flatten(2).transpose(1, 2)


def init_weights(module: nn.Module) -> None:
    """ViT/MAE initialisation: truncated-normal linears, xavier tubelet projection, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        nn.init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
        nn.init.zeros_(module.bias)


class VideoViT(nn.Module):
    """Tubelet embedding + fixed positions + blocks; the last `moae_layers` blocks carry MoAE."""

    def __init__(self, cfg: ModelConfig, moae_layers: int = 0, drop_path: float = 0.0, final_norm: bool = False):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = HMLPEmbed(cfg) if cfg.stem == "hmlp" else TubeletEmbed(cfg)
        self.tokens_per_slice = (cfg.img_size // cfg.patch_size) ** 2
        if cfg.pos_embed == "learned":  # a trained table: a parameter, saved and loaded with the weights
            self.pos_embed = nn.Parameter(nn.init.trunc_normal_(torch.zeros(1, grid_tokens(cfg), cfg.embed_dim),
                                                                std=0.02))
        else:  # fixed: recomputed from the config, so loading compares the config (checkpoint.py)
            self.register_buffer("pos_embed", position_table(cfg, cfg.embed_dim)[None], persistent=False)
        rates = torch.linspace(0, drop_path, cfg.depth).tolist()  # stochastic depth grows with depth
        first_moae = cfg.depth - moae_layers
        self.blocks = nn.ModuleList([
            MoAEBlock(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, rates[i], cfg.moae, LayerNorm) if i >= first_moae
            else Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, drop_path=rates[i],
                       norm_layer=LayerNorm)
            for i in range(cfg.depth)
        ])
        self.norm = LayerNorm(cfg.embed_dim) if final_norm else nn.Identity()

    def checked_clip(self, x: torch.Tensor) -> torch.Tensor:
        """Images or videos -> (B, C, T, H, W) clip, refused unless its size fits the model."""
        cfg = self.cfg
        clip = as_clip(x, cfg.tubelet_size)
        _, channels, frames, height, width = clip.shape
        if height != cfg.img_size or width != cfg.img_size:
            raise ValueError(f"expected {cfg.img_size}x{cfg.img_size} frames, got {height}x{width}")
        if frames % cfg.tubelet_size or frames > cfg.num_frames:
            raise ValueError(f"expected a multiple of {cfg.tubelet_size} frames, at most {cfg.num_frames}; "
                             f"got {frames}")
        return clip

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images or videos -> (B, N, D) tokens with positions (a clip may be shorter than num_frames)."""
        tokens = self.patch_embed(self.checked_clip(x))
        return tokens + self.pos_embed[:, : tokens.shape[1]].to(tokens.dtype)

    def embed_at(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(B, n, D) tokens at token ids (B, n) only, for masked pretraining: the stem runs on those tubelets
        alone. Both stems stay inside their tubelet (stride = kernel), so each token equals embed's at that id,
        except that the hmlp stem's BatchNorm takes its training statistics over the embedded tubelets."""
        cfg = self.cfg
        clip = self.checked_clip(x)
        b, c, frames, height, width = clip.shape
        p, tub = cfg.patch_size, cfg.tubelet_size
        t, h, w = frames // tub, height // p, width // p
        tubelets = clip.reshape(b, c, t, tub, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        tubelets = tubelets.reshape(b, t * h * w, c, tub, p, p)  # token order t, h, w as in embed
        picked = tubelets.gather(1, ids[:, :, None, None, None, None].expand(-1, -1, c, tub, p, p))
        # The picked tubelets side by side as one clip, one tubelet tall and n wide: the stem runs as one
        # ordinary call per sample (on many tiny clips it cost as much as on the whole clip).
        row = picked.permute(0, 2, 3, 4, 1, 5).reshape(b, c, tub, p, ids.shape[1] * p)
        tokens = self.patch_embed(row)
        return tokens + self.pos_embed[0, ids].to(tokens.dtype)

    def moae_layers(self) -> list[nn.Module]:
        return [b.moe_layer for b in self.blocks if isinstance(b, MoAEBlock)]


def set_fused_attention(model: nn.Module, fused: bool) -> int:
    """The one attention switch: fused SDPA (True) or timm's manual softmax(q k^T) v (False) in every attention
    layer of model. Both compute the same attention; which is faster depends on the device and the precision
    (s4d.precision measures it). Returns the number of layers switched."""
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched
