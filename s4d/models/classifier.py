"""S4D classifier: the shared backbone with MoAE on its last blocks and one head per task.

Images go to the static (SFER) head, videos to the dynamic (DFER) head. Baselines come from the
config alone: `moae.layers = 0` is vanilla multi-task, `num_static_classes = 0` is video-only.
"""
from __future__ import annotations

import torch
from torch import nn

from s4d.config import ModelConfig
from s4d.models.vit import LayerNorm, VideoViT, init_weights


class S4DClassifier(VideoViT):
    encoders: dict[str, type] = {}  # cfg.encoder -> subclass; s4d.models.lgi registers "lgi"

    def __new__(cls, cfg: ModelConfig | None = None, *args, **kwargs):
        # `encoder: lgi` builds the LGI-Former variant, so every caller of S4DClassifier(cfg, ...) gets it.
        # (cfg is None when copy / pickle recreate an instance: its class is already the right one.)
        swap = cls is S4DClassifier and cfg is not None and cfg.encoder != "vit"
        return super().__new__(cls.encoders[cfg.encoder] if swap else cls)

    def __init__(self, cfg: ModelConfig, num_dynamic_classes: int, num_static_classes: int = 0):
        super().__init__(cfg, moae_layers=cfg.moae.layers, drop_path=cfg.drop_path)
        if num_dynamic_classes < 2:
            raise ValueError(f"num_dynamic_classes must be >= 2, got {num_dynamic_classes}")
        self.num_dynamic_classes, self.num_static_classes = num_dynamic_classes, num_static_classes
        self.fc_norm = LayerNorm(cfg.embed_dim)
        self.head_dynamic = nn.Linear(cfg.embed_dim, num_dynamic_classes)
        self.head_static = nn.Linear(cfg.embed_dim, num_static_classes) if num_static_classes else None
        self.apply(init_weights)
        for layer in self.moae_layers():  # init_weights does not touch the stacked experts; be explicit
            layer.experts.reset_output()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (`cfg.pool`: mean or max over tokens), normalised token features (B, D)."""
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        pooled = tokens.amax(dim=1) if self.cfg.pool == "max" else tokens.mean(dim=1)
        return self.fc_norm(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        if x.ndim == 5:
            return self.head_dynamic(feats)
        if self.head_static is None:
            raise ValueError("this model is video-only (num_static_classes = 0): it has no head for images")
        return self.head_static(feats)

    # Hooks read by timm's optimizer factory (layer-wise LR decay and weight decay).
    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups: patch embedding, then one per block; fc_norm and the heads are left unmatched so
        they form the last group (LR scale 1). timm's `(99999,)` suffix would merge them into the last block."""
        return {"stem": r"^patch_embed", "blocks": [(r"^blocks\.(\d+)", None)]}

    def no_weight_decay(self) -> set[str]:
        """The stacked expert biases are 2-D, so timm's "no decay on 1-D tensors" rule misses them."""
        return {"pos_embed", "*.moe_layer.experts.fc*.bias"}

    def balance_loss(self) -> torch.Tensor:
        """Sum of the MoAE load-balancing losses of the last forward (0 without MoAE)."""
        losses = [layer.balance_loss for layer in self.moae_layers()]
        return torch.stack(losses).sum() if losses else torch.zeros(())
