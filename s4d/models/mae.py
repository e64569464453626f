"""Dual-modal masked autoencoder: one encoder (ViT or LGI-Former) for face images and face videos.

per-sample random (or tube) masking with exact visible counts (per region for the LGI-Former) -> the stem
embeds the visible tubelets only -> encoder on visible tokens -> decoder over all positions with a learned mask
token, its norm and head on the masked positions only (VideoMAE's return_token_num) -> targets of the masked
tokens only: pixels normalised per patch (`normalised`), the same with the per-patch std floored (`floored`),
or the input pixels (`raw`); MAE-DFER's appearance + motion split for videos -> MSE over the masked tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from s4d.config import ModelConfig
from s4d.models.lgi import LGIFormer
from s4d.models.vit import LayerNorm, VideoViT, as_clip, init_weights, position_table


TARGET_NORMS = ("normalised", "floored", "raw")


@dataclass
class MAEOutput:
    loss: torch.Tensor  # scalar: mean over masked tokens
    pred: torch.Tensor  # (B, M, tubelet*patch*patch*3) predictions of the M masked tokens, in token order
    target: torch.Tensor  # (B, M, tubelet*patch*patch*3) their targets
    mask: torch.Tensor  # (B, N) True where the token was hidden from the encoder


def patchify(clip: torch.Tensor, tubelet: int, patch: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, N, tubelet*patch*patch, C), tokens ordered t, h, w as the embedding."""
    b, c, t, h, w = clip.shape
    x = clip.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, t', h', w', tubelet, patch, patch, c
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch, c)


def patch_targets(patches: torch.Tensor, norm: str = "normalised",
                  std_floor: torch.Tensor | float = 0.0) -> torch.Tensor:
    """(B, M, tubelet*patch*patch, C) patches -> (B, M, tubelet*patch*patch*C) targets, per patch and channel:
    normalised: (x - mean) / sqrt(unbiased var + 1e-6) (VideoMAE's target);
    floored: (x - mean) / max(unbiased std, std_floor[c]): a nearly flat patch is not blown up to unit variance
      (on the embedded renders a third of the patch-channels have std below 4 grey levels: mostly JPEG and
      sensor noise); std_floor is per channel in the input's units;
    raw: the input pixels as they are."""
    patches = patches.float()
    if norm == "raw":
        return patches.flatten(2)
    mean = patches.mean(dim=-2, keepdim=True)
    var = patches.var(dim=-2, unbiased=True, keepdim=True)
    if norm == "normalised":
        std = var.add(1e-6).sqrt()
    elif norm == "floored":
        std = torch.maximum(var.sqrt(), torch.as_tensor(std_floor, dtype=patches.dtype, device=patches.device))
    else:
        raise ValueError(f"target norm must be one of {', '.join(TARGET_NORMS)}, got {norm!r}")
    return ((patches - mean) / std).flatten(2)


def split_motion(targets: torch.Tensor, tubelet: int) -> torch.Tensor:
    """MAE-DFER's joint target from per-token targets (B, M, tubelet*p*p*C): the first frame keeps its
    pixels (appearance), every later frame becomes its difference to the first (facial motion)."""
    frames = targets.unflatten(2, (tubelet, -1))
    return torch.cat([frames[:, :, :1], frames[:, :, 1:] - frames[:, :, :1]], dim=2).flatten(2)


def visible_count(num_tokens: int, mask_ratio: float) -> int:
    return max(1, int(round(num_tokens * (1.0 - mask_ratio))))


def masking_noise_shape(grid_t: int, tokens_per_slice: int, tube: bool) -> tuple[int]:
    return (tokens_per_slice,) if tube else (grid_t * tokens_per_slice,)


def random_masking(noise: torch.Tensor, grid_t: int, tokens_per_slice: int, mask_ratio: float,
                   tube: bool) -> torch.Tensor:
    """Indices (B, n_visible) of visible tokens, sorted: the lowest-noise tokens stay visible (per sample).
    Tube masking hides the same patches in every temporal slice; its noise is per patch (B, tokens_per_slice)."""
    batch = noise.shape[0]
    if tube:
        spatial = noise.argsort(dim=1)[:, : visible_count(tokens_per_slice, mask_ratio)]
        offsets = torch.arange(grid_t, device=noise.device) * tokens_per_slice
        ids = (offsets[None, :, None] + spatial[:, None, :]).reshape(batch, -1)
    else:
        ids = noise.argsort(dim=1)[:, : visible_count(noise.shape[1], mask_ratio)]
    return ids.sort(dim=1).values


def region_masking(noise: torch.Tensor, index: torch.Tensor, grid_t: int, tokens_per_slice: int,
                   mask_ratio: float, tube: bool) -> torch.Tensor:
    """Visible token ids (B, R, k) for the LGI-Former: every region keeps exactly k tokens, so regions stay
    one batched tensor. `index` (R, S) lists each region's tokens. Noise as for random_masking; with tube
    masking each region keeps the same patches in all its slices (MAE-DFER's part-window masking)."""
    regions, size = index.shape
    if tube:  # a patch's noise repeats over time, so its slices sort next to each other
        noise = noise.repeat(1, grid_t)
        depth = index[0].div(tokens_per_slice, rounding_mode="floor").unique().numel()  # slices per region
        keep = depth * visible_count(size // depth, mask_ratio)
    else:
        keep = visible_count(size, mask_ratio)
    index = index.to(noise.device).expand(noise.shape[0], -1, -1)
    order = noise.gather(1, index.flatten(1)).view_as(index).argsort(dim=2)[..., :keep]
    return index.gather(2, order).sort(dim=2).values


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("pos_embed", position_table(cfg, cfg.decoder_dim)[None], persistent=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.decoder_dim))
        # LayerNorm eps 1e-6 as in the published decoders (VideoMAE, MAE-DFER), so their weights compute the same.
        self.blocks = nn.ModuleList([Block(cfg.decoder_dim, cfg.decoder_heads, cfg.mlp_ratio, qkv_bias=True,
                                           norm_layer=LayerNorm) for _ in range(cfg.decoder_depth)])
        self.norm = LayerNorm(cfg.decoder_dim)
        self.head = nn.Linear(cfg.decoder_dim, cfg.tubelet_size * cfg.patch_size ** 2 * 3)

    def forward(self, latent: torch.Tensor, visible_ids: torch.Tensor, masked_ids: torch.Tensor,
                num_tokens: int) -> torch.Tensor:
        """Visible latents (B, n_visible, D_dec) at their positions, mask tokens elsewhere -> predictions
        (B, M, out) of the masked positions only: the blocks attend over all positions, but the loss reads
        only the masked ones, so the norm and head run on those alone (VideoMAE's return_token_num).
        The mask token lives here (not on the MAE) so ZeRO-3 gathers it with the module that uses it."""
        batch, _, dim = latent.shape
        x = self.mask_token.to(latent.dtype).expand(batch, num_tokens, dim).clone()
        x = x.scatter(1, visible_ids[..., None].expand(-1, -1, dim), latent)
        x = x + self.pos_embed[:, :num_tokens].to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = x.gather(1, masked_ids[..., None].expand(-1, -1, dim))
        return self.head(self.norm(x))


class MaskedAutoencoder(nn.Module):
    def __init__(self, cfg: ModelConfig, target: str = "pixels", motion_weight: float = 0.5,
                 target_norm: str = "normalised", std_floor: Sequence[float] | float = 0.0):
        """`target` (videos; images always use pixels): "pixels" or "pixels+motion", the latter scored as
        (1 - motion_weight) * appearance MSE + motion_weight * motion MSE. `target_norm`: how each patch's
        pixels are normalised (patch_targets); `std_floor`: the floored norm's per-channel floor, in the
        input's units (the trainer converts pretrain.target_std_floor from grey levels)."""
        super().__init__()
        if target not in ("pixels", "pixels+motion"):
            raise ValueError(f"target must be 'pixels' or 'pixels+motion', got {target!r}")
        if target == "pixels+motion" and cfg.tubelet_size < 2:
            raise ValueError(f"the motion target needs tubelet_size >= 2, got {cfg.tubelet_size}")
        if target_norm not in TARGET_NORMS:
            raise ValueError(f"target_norm must be one of {', '.join(TARGET_NORMS)}, got {target_norm!r}")
        self.cfg, self.target, self.motion_weight, self.target_norm = cfg, target, motion_weight, target_norm
        self.register_buffer("std_floor", torch.as_tensor(std_floor, dtype=torch.float32), persistent=False)
        self.encoder = LGIFormer(cfg, final_norm=True) if cfg.encoder == "lgi" else VideoViT(cfg, final_norm=True)
        self.encoder_to_decoder = nn.Linear(cfg.embed_dim, cfg.decoder_dim, bias=False)
        self.decoder = Decoder(cfg)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.decoder.mask_token, std=0.02)

    def noise_shape(self, x: torch.Tensor, tube: bool) -> tuple[int, ...]:
        """Shape of the masking noise for input x (the trainer draws it from (seed, step, sample))."""
        grid_t = as_clip(x, self.cfg.tubelet_size).shape[2] // self.cfg.tubelet_size
        return (x.shape[0], *masking_noise_shape(grid_t, self.encoder.tokens_per_slice, tube))

    def forward(self, x: torch.Tensor, mask_ratio: float, tube: bool = False,
                noise: torch.Tensor | None = None) -> MAEOutput:
        """One modality: images (B, C, H, W) or videos (B, C, T, H, W) with values already normalised.
        `noise` (see noise_shape) fixes the mask; by default it is drawn from torch's RNG."""
        cfg = self.cfg
        clip = self.encoder.checked_clip(x)
        batch, per_slice = clip.shape[0], self.encoder.tokens_per_slice
        grid_t = clip.shape[2] // cfg.tubelet_size
        num = grid_t * per_slice
        if noise is None:
            noise = torch.rand(self.noise_shape(x, tube), device=x.device)
        noise = noise.to(x.device)
        # Only the visible tubelets are embedded and encoded: hidden ones cost nothing before the decoder.
        if isinstance(self.encoder, LGIFormer):
            region_ids = region_masking(noise, self.encoder.region_index(grid_t), grid_t, per_slice, mask_ratio, tube)
            visible_ids = region_ids.flatten(1)
            latent = self.encoder.embed_at(clip, visible_ids)
            latent = self.encoder.forward_regions(latent.view(*region_ids.shape, -1))[0].flatten(1, 2)
        else:
            visible_ids = random_masking(noise, grid_t, per_slice, mask_ratio, tube)
            latent = self.encoder.embed_at(clip, visible_ids)
            for block in self.encoder.blocks:
                latent = block(latent)
        latent = self.encoder_to_decoder(self.encoder.norm(latent))

        mask = torch.ones(batch, num, dtype=torch.bool, device=x.device)
        mask.scatter_(1, visible_ids, False)
        masked_ids = mask.nonzero()[:, 1].view(batch, -1)  # every sample hides the same number, in token order
        pred = self.decoder(latent, visible_ids, masked_ids, num)

        # Targets of the masked tokens only (the loss reads nothing else).
        patches = patchify(clip, cfg.tubelet_size, cfg.patch_size)
        patches = patches.gather(1, masked_ids[:, :, None, None].expand(-1, -1, *patches.shape[2:]))
        target = self.token_targets(patches, video=x.ndim == 5)
        loss = self.score((pred.float() - target).pow(2), video=x.ndim == 5)
        return MAEOutput(loss, pred, target, mask)

    def token_targets(self, patches: torch.Tensor, video: bool) -> torch.Tensor:
        """(B, M, tubelet*p*p, C) patches -> (B, M, P) targets: the configured norm, and MAE-DFER's appearance +
        motion split for videos when the target is pixels+motion."""
        target = patch_targets(patches, self.target_norm, self.std_floor)
        return split_motion(target, self.cfg.tubelet_size) if video and self.target == "pixels+motion" else target

    def targets(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, P) targets of every token of images or videos (for baselines; training scores masked ones)."""
        clip = self.encoder.checked_clip(x)
        return self.token_targets(patchify(clip, self.cfg.tubelet_size, self.cfg.patch_size), video=x.ndim == 5)

    def score(self, squared_error: torch.Tensor, video: bool) -> torch.Tensor:
        """The loss from per-value squared errors (..., P): their mean; for videos with the motion target,
        (1 - motion_weight) * the appearance values' mean + motion_weight * the motion values' mean."""
        if video and self.target == "pixels+motion":
            split = squared_error.shape[-1] // self.cfg.tubelet_size  # the first frame's share: appearance
            return ((1 - self.motion_weight) * squared_error[..., :split].mean()
                    + self.motion_weight * squared_error[..., split:].mean())
        return squared_error.mean()

    def mixed_loss(self, videos: torch.Tensor | None, images: torch.Tensor | None, video_mask_ratio: float,
                   image_mask_ratio: float, tube: bool = False, video_noise: torch.Tensor | None = None,
                   image_noise: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One step over either or both modalities: the mean of the per-modality losses."""
        losses = {}
        if videos is not None:
            losses["video"] = self(videos, video_mask_ratio, tube, video_noise).loss
        if images is not None:
            losses["image"] = self(images, image_mask_ratio, noise=image_noise).loss
        if not losses:
            raise ValueError("mixed_loss needs videos, images or both")
        total = torch.stack(list(losses.values())).mean()
        return total, {name: loss.detach() for name, loss in losses.items()}
