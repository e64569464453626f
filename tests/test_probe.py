"""s4d.train.probe: closed-form ridge against hand-solved systems, the per-position-mean baseline against
hand-computed variances, and the learning evidence on a micro run where the MAE memorises a fixed batch."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from s4d.config import tiny_profile
from s4d.models import MaskedAutoencoder
from s4d.train.probe import PositionMean, pooled_features, probe, ridge_fit, ridge_predict


def test_ridge_solves_a_hand_solved_2x2_system():
    # (X'X + I) w = X'y with X = [[1, 2], [3, 4]], y = [1, 2]: [[11, 14], [14, 21]] w = [7, 10]
    # det 35 -> w = [21 * 7 - 14 * 10, -14 * 7 + 11 * 10] / 35 = [7/35, 12/35]
    w, b = ridge_fit(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0], [2.0]]), 1.0, intercept=False)
    assert torch.allclose(w.flatten(), torch.tensor([0.2, 12 / 35], dtype=torch.float64), atol=1e-12)
    assert torch.equal(b, torch.zeros(1, dtype=torch.float64))


def test_ridge_intercept_is_not_penalised():
    x, y = torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[1.0], [3.0], [5.0]])
    w, b = ridge_fit(x, y, 0.0)  # exact line y = 2x + 1
    assert w.item() == pytest.approx(2.0) and b.item() == pytest.approx(1.0)
    # lam 2: centred x = [-1, 0, 1], y = [-2, 0, 2]: w = x'y / (x'x + 2) = 4 / 4 = 1, b = 3 - 1 * 1 = 2
    w, b = ridge_fit(x, y, 2.0)
    assert w.item() == pytest.approx(1.0) and b.item() == pytest.approx(2.0)
    assert torch.allclose(ridge_predict(x, w, b).flatten(), torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))


def test_position_mean_baseline_is_the_per_position_variance():
    baseline = PositionMean()
    baseline.update(torch.tensor([[[1.0, 0.0], [4.0, 2.0]]]))  # sample A: 2 positions, 2 values
    baseline.update(torch.tensor([[[3.0, 0.0], [4.0, 6.0]]]))  # sample B, in a second batch
    # position 0: values (1, 3) -> var 1, (0, 0) -> 0; position 1: (4, 4) -> 0, (2, 6) -> 4
    assert torch.allclose(baseline.variance(), torch.tensor([[1.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    assert torch.allclose(baseline.mean(), torch.tensor([[2.0, 0.0], [4.0, 4.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="at least one update"):
        PositionMean().variance()
    with pytest.raises(ValueError, match="at least one update"):
        PositionMean().mean()


def test_probe_scores_separable_features_and_reports_chance_for_noise():
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    signal = torch.nn.functional.one_hot(labels, 3).float() * 3 + 0.3 * torch.randn(60, 3, generator=gen)
    features = torch.cat([signal, torch.randn(60, 5, generator=gen)], dim=1)
    good = probe(features[:40], labels[:40], features[40:], labels[40:], 3)
    assert good["val_accuracy"] == 1.0 and good["val_uar"] == 1.0 and good["n_train"] == 40
    noise = torch.randn(60, 8, generator=gen)
    bad = probe(noise[:40], labels[:40], noise[40:], labels[40:], 3)
    assert bad["val_uar"] < 0.75


def stripes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """16 x 16 images: class 0 horizontal stripes, class 1 vertical, random phase and colour."""
    labels = torch.arange(n) % 2
    grid = torch.arange(16).float()
    out = torch.empty(n, 3, 16, 16)
    for i, label in enumerate(labels):
        phase = torch.rand(1, generator=gen).item() * 6.28
        wave = torch.sin(grid * 1.3 + phase)
        pattern = wave[:, None].expand(16, 16) if label == 0 else wave[None, :].expand(16, 16)
        colour = torch.rand(3, 1, 1, generator=gen) + 0.5
        out[i] = colour * pattern + 0.05 * torch.randn(3, 16, 16, generator=gen)
    return out, labels


def test_a_memorised_batch_beats_the_baseline_and_the_random_encoder():
    """Micro run: the MAE fits one fixed batch; its loss there falls below the per-position-mean guess (which
    ignores the input), and the probe on its frozen features beats the probe on its random initial encoder."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(tiny_profile(), img_size=16, patch_size=4, num_frames=2, tubelet_size=2,
                              embed_dim=32, depth=2, num_heads=2, stem="linear", decoder_dim=32,
                              decoder_depth=1, decoder_heads=2)
    gen = torch.Generator().manual_seed(1)
    x, y = stripes(32, gen)
    val_x, val_y = stripes(32, gen)
    mae = MaskedAutoencoder(cfg)
    start = MaskedAutoencoder(cfg)
    start.load_state_dict(mae.state_dict())
    noise = torch.rand(mae.noise_shape(x, False), generator=gen)
    with torch.no_grad():
        before = mae.eval()(x, 0.5, noise=noise).loss.item()
    optimizer = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    mae.train()
    for _ in range(150):
        loss = mae(x, 0.5).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mae.eval()
    baseline = PositionMean()
    with torch.no_grad():
        after = mae(x, 0.5, noise=noise).loss.item()
        baseline.update(mae.targets(x))
    guess = mae.score(baseline.variance(), video=False).item()
    assert after < 0.7 * guess < before, (after, guess, before)
    trained = probe(pooled_features(mae.encoder, x), y, pooled_features(mae.encoder, val_x), val_y, 2)
    random_init = probe(pooled_features(start.encoder.eval(), x), y, pooled_features(start.encoder, val_x), val_y, 2)
    assert trained["val_accuracy"] > random_init["val_accuracy"], (trained, random_init)
