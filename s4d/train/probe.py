"""Evidence that an MAE learned something about its input: a linear probe on frozen features, and the loss of
a guess that ignores the input.

- `ridge_fit` / `ridge_predict`: closed-form ridge regression onto one-hot labels (W = (X'X + lam I)^-1 X'Y on
  standardised features), a linear probe without an iterative solver;
- `pooled_features`: the frozen encoder on every token (no mask), mean-pooled over tokens;
- `PositionMean`: the per-position-mean baseline, the squared error of predicting for every token the mean
  target at its position over a sample of training data (a loss reachable without looking at the input); the
  guess must be fitted on the distribution it is scored on (augmented as the MAE trained, or not at all);
- `probe`: fit on train features, score val accuracy (WAR) and UAR.
Pure functions of tensors: the pretraining stage decides what data to feed them.
"""
from __future__ import annotations

import torch

from s4d.models.lgi import LGIFormer
from s4d.models.vit import VideoViT
from s4d.train.metrics import confusion_matrix, uar, war


def ridge_fit(x: torch.Tensor, y: torch.Tensor, lam: float, intercept: bool = True) -> tuple[torch.Tensor,
                                                                                            torch.Tensor]:
    """(W, b) minimising ||x W + b - y||^2 + lam ||W||^2 in float64: the intercept (when asked) is not
    penalised, so it is the mean of y after the centred solve."""
    x, y = x.double(), y.double()
    if intercept:
        x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
        x, y = x - x_mean, y - y_mean
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype)
    w = torch.linalg.solve(gram, x.T @ y)
    b = (y_mean - x_mean @ w) if intercept else torch.zeros(y.shape[1], dtype=x.dtype)
    return w, b


def ridge_predict(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x.double() @ w + b


def probe(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
          num_classes: int, lam: float = 1.0) -> dict:
    """Ridge onto one-hot labels on features standardised with the train statistics; the predicted class is
    the largest output. Returns val accuracy (WAR), UAR and the train accuracy (how much it fitted)."""
    mean, std = train_x.double().mean(dim=0), train_x.double().std(dim=0).clamp_min(1e-8)
    scale = lambda f: (f.double() - mean) / std  # noqa: E731
    onehot = torch.nn.functional.one_hot(train_y.long(), num_classes).double()
    # lam is per 100 samples, so the penalty keeps its strength against the data term at any n
    w, b = ridge_fit(scale(train_x), onehot, lam * len(train_x) / 100)
    pred_val = ridge_predict(scale(val_x), w, b).argmax(dim=1)
    pred_train = ridge_predict(scale(train_x), w, b).argmax(dim=1)
    cm = confusion_matrix(val_y.tolist(), pred_val.tolist(), num_classes)
    return {"val_accuracy": round(float(war(cm)), 4), "val_uar": round(float(uar(cm)), 4),
            "train_accuracy": round(float((pred_train == train_y).double().mean()), 4),
            "n_train": len(train_x), "n_val": len(val_x)}


@torch.no_grad()
def pooled_features(encoder: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, D) features of images or videos: the encoder on all tokens (no mask), its final norm, mean over
    tokens. The caller puts the encoder in eval mode."""
    if isinstance(encoder, LGIFormer):
        tokens = encoder.encode(x)[0]
    elif isinstance(encoder, VideoViT):
        tokens = encoder.embed(x)
        for block in encoder.blocks:
            tokens = block(tokens)
    else:
        raise TypeError(f"pooled_features needs a VideoViT or LGIFormer encoder, got {type(encoder).__name__}")
    return encoder.norm(tokens).mean(dim=1).float()


class PositionMean:
    """Running per-position mean of targets (B, N, P) over samples. `variance()`: the squared error of that
    mean as a guess, per position and value (the population variance across samples, from float64 sums);
    the guess's loss is the MAE's scoring of it (MaskedAutoencoder.score)."""

    def __init__(self):
        self.n, self.sum, self.sum_sq = 0, None, None

    def update(self, targets: torch.Tensor) -> None:
        t = targets.double()
        if self.sum is None:
            self.sum, self.sum_sq = torch.zeros_like(t[0]), torch.zeros_like(t[0])
        self.n += t.shape[0]
        self.sum += t.sum(dim=0)
        self.sum_sq += t.pow(2).sum(dim=0)

    def mean(self) -> torch.Tensor:
        """(N, P) the guess: the mean target at each position."""
        if not self.n:
            raise ValueError("PositionMean needs at least one update")
        return self.sum / self.n

    def variance(self) -> torch.Tensor:
        if not self.n:
            raise ValueError("PositionMean needs at least one update")
        mean = self.sum / self.n
        return (self.sum_sq / self.n - mean.pow(2)).clamp_min(0)
