import dataclasses
import math

import pytest
import torch

from s4d.config import MoAEConfig, base_profile, tiny_profile
from s4d.models import MaskedAutoencoder, S4DClassifier
from s4d.models.checkpoint import CheckpointError, build_model, init_classifier, read_checkpoint, save_checkpoint
from s4d.models.mae import patch_targets, patchify, random_masking, visible_count
from s4d.models.moae import MoAELayer

torch.manual_seed(0)


def small_cfg(**moae):
    """The tiny profile, made smaller still so a test forward takes milliseconds."""
    cfg = tiny_profile()
    return dataclasses.replace(cfg, img_size=32, num_frames=4, embed_dim=64, depth=4, num_heads=2, drop_path=0.0,
                               decoder_dim=32, decoder_depth=1, decoder_heads=2,
                               moae=dataclasses.replace(cfg.moae, layers=2, bottleneck=16, **moae))


def videos(b=2, cfg=None):
    cfg = cfg or small_cfg()
    return torch.randn(b, 3, cfg.num_frames, cfg.img_size, cfg.img_size)


def images(b=3, cfg=None):
    cfg = cfg or small_cfg()
    return torch.randn(b, 3, cfg.img_size, cfg.img_size)


def trained_like(model):
    """Give zero-initialised experts non-zero weights, so MoAE actually changes the output."""
    with torch.no_grad():
        for layer in model.moae_layers():
            layer.experts.fc2.weight.normal_(0, 0.05)
            layer.experts.fc2.bias.normal_(0, 0.05)
    return model


# --------------------------------------------------------------------------------------------- shapes
def test_classifier_shapes_for_both_modalities():
    model = S4DClassifier(small_cfg(), num_dynamic_classes=7, num_static_classes=11).eval()
    assert model(videos(2)).shape == (2, 7)
    assert model(images(3)).shape == (3, 11)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_pooling_reduces_tokens_as_configured(pool):
    """`pool` picks the reduction over the block outputs, and only that changes between the two settings."""
    cfg = dataclasses.replace(small_cfg(), pool=pool)
    model = S4DClassifier(cfg, num_dynamic_classes=7).eval()
    x = videos(2, cfg)
    with torch.no_grad():
        tokens = model.embed(x)
        for block in model.blocks:
            tokens = block(tokens)
        expected = tokens.amax(dim=1) if pool == "max" else tokens.mean(dim=1)
        assert torch.allclose(model.features(x), model.fc_norm(expected), atol=1e-6)
        other = S4DClassifier(dataclasses.replace(cfg, pool="mean" if pool == "max" else "max"), 7).eval()
        other.load_state_dict(model.state_dict())  # same weights, other pooling: other features
        assert not torch.allclose(other.features(x), model.features(x), atol=1e-3)


def test_mae_shapes_and_per_token_targets():
    cfg = small_cfg()
    mae = MaskedAutoencoder(cfg)
    per_token = cfg.tubelet_size * cfg.patch_size ** 2 * 3
    tokens_per_slice = (cfg.img_size // cfg.patch_size) ** 2
    out = mae(videos(2), 0.75)
    masked = tokens_per_slice * cfg.num_frames // 2 - visible_count(tokens_per_slice * cfg.num_frames // 2, 0.75)
    assert out.pred.shape == out.target.shape == (2, masked, per_token)  # masked tokens only
    out = mae(images(3), 0.75)
    masked = tokens_per_slice - visible_count(tokens_per_slice, 0.75)
    assert out.pred.shape == (3, masked, per_token)
    # targets are normalised per patch and channel
    t = out.target.view(3, masked, -1, 3)
    assert torch.allclose(t.mean(dim=2), torch.zeros(()), atol=1e-4)


def test_wrong_input_shapes_name_the_expectation():
    model = S4DClassifier(small_cfg(), 7)
    with pytest.raises(ValueError, match="32x32"):
        model(torch.randn(1, 3, 4, 48, 48))
    with pytest.raises(ValueError, match="at most 4"):
        model(torch.randn(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match="no head for images"):
        model(images(1))


# -------------------------------------------------------------------------------------------- masking
def test_exact_visible_counts_at_base():
    base = base_profile()
    slices, per_slice = base.num_frames // base.tubelet_size, (base.img_size // base.patch_size) ** 2
    assert slices * per_slice == 800 and per_slice == 100
    assert random_masking(torch.rand(4, 800), slices, per_slice, 0.95, False).shape == (4, 40)
    assert random_masking(torch.rand(4, 100), 1, per_slice, 0.90, False).shape == (4, 10)
    ids = random_masking(torch.rand(3, 100), slices, per_slice, 0.9, True)
    assert ids.shape == (3, 8 * 10)  # tube: 10 patches visible in each of the 8 slices
    spatial = ids % per_slice
    assert all(len(set(row.tolist())) == 10 for row in spatial)  # the same patches in every slice
    # per-sample masks differ
    assert not torch.equal(ids[0], ids[1])


def test_mae_encoder_sees_only_visible_tokens():
    cfg = small_cfg()
    mae = MaskedAutoencoder(cfg).eval()
    x = videos(2)
    noise = torch.rand(mae.noise_shape(x, tube=False))
    out = mae(x, 0.75, noise=noise)
    n_visible = visible_count(out.mask.shape[1], 0.75)
    assert ((~out.mask).sum(dim=1) == n_visible).all()

    # Change only the pixels of masked tokens: predictions must not move (the encoder never saw them),
    # while the targets of the masked tokens do.
    patches = patchify(x, cfg.tubelet_size, cfg.patch_size).clone()
    patches[out.mask] += 5 * torch.randn_like(patches[out.mask])
    b, c, t, h, w = x.shape
    p, tub = cfg.patch_size, cfg.tubelet_size
    changed = patches.view(b, t // tub, h // p, w // p, tub, p, p, c).permute(0, 7, 1, 4, 2, 5, 3, 6)
    changed = changed.reshape(b, c, t, h, w)
    assert not torch.allclose(changed, x)
    out2 = mae(changed, 0.75, noise=noise)
    assert torch.equal(out2.mask, out.mask)
    assert torch.allclose(out2.pred, out.pred, atol=1e-5)
    assert not torch.allclose(out2.target, out.target)  # the targets are the masked tokens'


def test_target_norms_on_a_hand_built_patch():
    """One token (tubelet 2, patch 2: 8 pixels per channel), values chosen so mean and std are known by hand."""
    clip = torch.zeros(1, 3, 2, 2, 2)
    clip[0, 0] = torch.tensor([[[0.0, 2.0], [4.0, 6.0]], [[8.0, 10.0], [12.0, 14.0]]])  # 0, 2, ..., 14
    clip[0, 1] = 3.0  # flat: std 0
    clip[0, 2, 0] = 1.0  # frame 0 all 1, frame 1 all 0: mean 0.5, unbiased var 8 * 0.25 / 7 = 2/7
    patches = patchify(clip, 2, 2)  # (1, 1, 8, 3)
    ramp = torch.arange(0.0, 16.0, 2.0)
    half = torch.tensor([1.0] * 4 + [0.0] * 4)
    # channel 0: mean 7, unbiased var = 4 * var(0..7) = 4 * 42 / 7 = 24
    s0, s2 = math.sqrt(24.0), math.sqrt(2 / 7)

    def channels(t):
        return t.view(8, 3)

    raw = channels(patch_targets(patches, "raw"))
    assert torch.equal(raw[:, 0], ramp) and torch.equal(raw[:, 1], torch.full((8,), 3.0))
    norm = channels(patch_targets(patches, "normalised"))
    assert torch.allclose(norm[:, 0], (ramp - 7) / math.sqrt(24 + 1e-6), atol=1e-6)
    assert torch.allclose(norm[:, 1], torch.zeros(8))  # a flat patch: 0 / sqrt(eps)
    assert torch.allclose(norm[:, 2], (half - 0.5) / math.sqrt(2 / 7 + 1e-6), atol=1e-6)
    # floored at 1.0 per channel: channel 0 (std 4.9) is divided by its std, channel 2 (std 0.53) by the floor
    floored = channels(patch_targets(patches, "floored", torch.tensor([1.0, 1.0, 1.0])))
    assert torch.allclose(floored[:, 0], (ramp - 7) / s0, atol=1e-6)
    assert torch.allclose(floored[:, 1], torch.zeros(8))
    assert torch.allclose(floored[:, 2], half - 0.5, atol=1e-6)
    assert s2 < 1.0 < s0
    # a per-channel floor: channel 0's floor 10 exceeds its std
    floored = channels(patch_targets(patches, "floored", torch.tensor([10.0, 1.0, 0.1])))
    assert torch.allclose(floored[:, 0], (ramp - 7) / 10, atol=1e-6)
    assert torch.allclose(floored[:, 2], (half - 0.5) / s2, atol=1e-6)
    with pytest.raises(ValueError, match="normalised, floored, raw"):
        patch_targets(patches, "whitened")


def test_decoder_predicts_masked_tokens_only_and_the_loss_is_the_masked_share_of_the_full_loss():
    """Reference: the old all-token path written out by hand (every token embedded, the decoder's norm and head
    on all positions, per-patch targets from loops), then the MSE averaged over the masked tokens only."""
    cfg = dataclasses.replace(small_cfg(), stem="linear")
    mae = MaskedAutoencoder(cfg).eval()
    x = videos(2)
    noise = torch.rand(mae.noise_shape(x, tube=False))
    with torch.no_grad():
        out = mae(x, 0.75, noise=noise)
        n = out.mask.shape[1]
        masked = n - visible_count(n, 0.75)
        assert out.pred.shape == out.target.shape == (2, masked, cfg.tubelet_size * cfg.patch_size ** 2 * 3)

        tokens = mae.encoder.embed(x)  # all tokens, as before
        loss_sum, count = 0.0, 0
        p, tub, side = cfg.patch_size, cfg.tubelet_size, cfg.img_size // cfg.patch_size
        for b in range(2):
            visible = (~out.mask[b]).nonzero().flatten()
            latent = tokens[b:b + 1, visible]
            for block in mae.encoder.blocks:
                latent = block(latent)
            latent = mae.encoder_to_decoder(mae.encoder.norm(latent))
            full = mae.decoder.mask_token.expand(1, n, -1).clone()
            full[0, visible] = latent[0]
            full = full + mae.decoder.pos_embed[:, :n]
            for block in mae.decoder.blocks:
                full = block(full)
            pred_all = mae.decoder.head(mae.decoder.norm(full))[0]  # (n, out): every token predicted
            assert torch.allclose(out.pred[b], pred_all[out.mask[b]], atol=1e-5)
            for token in range(n):
                if not out.mask[b, token]:
                    continue
                t, rest = divmod(token, side * side)
                i, j = divmod(rest, side)
                cube = x[b, :, t * tub:(t + 1) * tub, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (C, tub, p, p)
                target = torch.stack([(c - c.mean()) / (c.var() + 1e-6).sqrt() for c in cube], dim=-1).flatten()
                loss_sum += ((pred_all[token] - target) ** 2).mean().item()
                count += 1
    assert count == 2 * masked
    assert out.loss.item() == pytest.approx(loss_sum / count, rel=1e-5)


def test_embedding_the_visible_tubelets_equals_embedding_all_then_picking():
    for stem in ("hmlp", "linear"):
        cfg = dataclasses.replace(small_cfg(), stem=stem)
        vit = MaskedAutoencoder(cfg).encoder.eval()  # eval: the hmlp BatchNorm uses its running statistics
        x = videos(2)
        ids = torch.stack([torch.randperm(32)[:5].sort().values for _ in range(2)])
        with torch.no_grad():
            expected = vit.embed(x).gather(1, ids[..., None].expand(-1, -1, cfg.embed_dim))
            assert torch.allclose(vit.embed_at(x, ids), expected, atol=1e-5)


def test_mixed_image_and_video_step_trains_both():
    mae = MaskedAutoencoder(small_cfg())
    loss, parts = mae.mixed_loss(videos(2), images(4), 0.9, 0.75, tube=True)
    loss.backward()
    assert set(parts) == {"video", "image"}
    assert math.isclose(loss.item(), (parts["video"] + parts["image"]).item() / 2, rel_tol=1e-5)
    assert all(p.grad.abs().sum() > 0 for p in mae.encoder.patch_embed.parameters())
    assert mae.decoder.mask_token.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- MoAE
def test_router_gates_sum_to_one_and_capacity_holds():
    layer = MoAELayer(32, MoAEConfig(layers=1, experts=4, top_k=2, bottleneck=8, capacity_factor=0.5)).train()
    h = torch.randn(4, 50, 32)
    routing = layer.router(h.reshape(-1, 32))
    assert torch.allclose(routing.gates.sum(-1), torch.ones(200))
    assert (routing.experts[:, 0] != routing.experts[:, 1]).all()
    layer(h)
    capacity = layer.capacity(200)
    assert capacity == math.ceil(0.5 * 200 * 2 / 4)
    kept = layer.load.clamp(max=capacity)
    assert int(layer.load.sum()) == 400
    assert int(layer.dropped) == int(layer.load.sum() - kept.sum()) > 0  # factor 0.5 must drop


def test_dropped_assignments_contribute_nothing():
    cfg = MoAEConfig(layers=1, experts=2, top_k=1, bottleneck=8, capacity_factor=1.0)
    layer = MoAELayer(16, cfg).eval()
    with torch.no_grad():
        layer.router.topkroute_linear.weight.zero_()
        layer.router.topkroute_linear.bias.copy_(torch.tensor([5.0, 0.0]))  # everyone wants expert 0
        layer.experts.fc2.weight.normal_()
    out = layer(torch.randn(1, 10, 16))
    capacity = layer.capacity(10)  # ceil(1.0 * 10 * 1 / 2) = 5
    assert int(layer.dropped) == 10 - capacity
    assert (out[0, :capacity].abs().sum(-1) > 0).all()  # first come, first served
    assert (out[0, capacity:] == 0).all()


def test_balance_loss_is_minimal_for_uniform_routing():
    cfg = MoAEConfig(layers=1, experts=8, top_k=2, bottleneck=8, capacity_factor=4.0)
    layer = MoAELayer(16, cfg).eval()
    h = torch.randn(2, 64, 16)
    with torch.no_grad():
        layer.router.topkroute_linear.weight.zero_()
        layer.router.topkroute_linear.bias.zero_()
    layer(h)
    uniform = layer.balance_loss.item()
    assert math.isclose(uniform, 1.0, rel_tol=1e-6)
    for skew in (0.5, 2.0, 8.0):
        with torch.no_grad():
            layer.router.topkroute_linear.bias.copy_(torch.linspace(skew, 0, 8))
        layer(h)
        assert layer.balance_loss.item() > uniform
    with torch.no_grad():
        layer.router.topkroute_linear.weight.normal_()
    layer(h)
    assert layer.balance_loss.item() > uniform


def test_eval_is_deterministic_and_training_routing_is_noisy():
    model = trained_like(S4DClassifier(small_cfg(), 7, 7))
    x = videos(2)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.allclose(a, b)  # drop_path is 0, so only router noise differs


def test_moae_is_identity_at_init():
    """At step 0, MoAE adds nothing: the network computes what the plain encoder computes."""
    cfg = small_cfg()
    plain = S4DClassifier(dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0)), 7, 7).eval()
    with_moae = S4DClassifier(cfg, 7, 7).eval()
    report = with_moae.load_state_dict(plain.state_dict(), strict=False)
    assert report.unexpected_keys == [] and all(".moe_layer." in k for k in report.missing_keys)
    for x in (videos(2), images(2)):
        assert torch.allclose(with_moae(x), plain(x), atol=1e-6)
    trained_like(with_moae)
    assert not torch.allclose(with_moae(videos(2)), plain(videos(2)), atol=1e-4)


def test_baseline_switches_change_the_model():
    cfg = small_cfg()
    s4d = S4DClassifier(cfg, 7, 7)
    vanilla = S4DClassifier(dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0)), 7, 7)
    video_only = S4DClassifier(dataclasses.replace(cfg, moae=dataclasses.replace(cfg.moae, layers=0)), 7, 0)
    assert len(s4d.moae_layers()) == 2 and vanilla.moae_layers() == [] and video_only.head_static is None
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(s4d) > count(vanilla) > count(video_only)


def test_base_parameter_counts():
    model = S4DClassifier(base_profile(), 7, 7)
    moae = sum(p.numel() for n, p in model.named_parameters() if ".moe_layer." in n)
    encoder = sum(p.numel() for n, p in model.named_parameters()
                  if ".moe_layer." not in n and not n.startswith(("head_", "fc_norm")))
    assert 85.5e6 < encoder < 87.0e6  # ViT-B/16 with a 2-frame tubelet embedding
    assert 13.5e6 < moae < 15.0e6  # 6 layers x 8 experts x (768*192*2) + routers


# ---------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    model = trained_like(S4DClassifier(small_cfg(), 7, 5)).eval()
    save_checkpoint(tmp_path / "c.pt", model, meta={"step": 3})
    ckpt = read_checkpoint(tmp_path / "c.pt")
    assert ckpt["format_version"] == 1 and ckpt["meta"] == {"step": 3}
    loaded = build_model(ckpt).eval()
    assert loaded.cfg == model.cfg
    for x in (videos(2), images(2)):
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob(".*tmp*"))  # nothing left behind by the atomic write


def test_checkpoint_from_before_stem_and_pool_rebuilds_as_it_was_trained(tmp_path):
    """A stored config without `stem`/`pool` (written before they existed) means the linear stem and mean
    pooling it was trained with, not today's tiny defaults (hmlp, max)."""
    old_cfg = dataclasses.replace(small_cfg(), stem="linear", pool="mean")
    model = trained_like(S4DClassifier(old_cfg, 7, 5)).eval()
    save_checkpoint(tmp_path / "old.pt", model)
    ckpt = read_checkpoint(tmp_path / "old.pt")
    del ckpt["model_config"]["stem"], ckpt["model_config"]["pool"]
    loaded = build_model(ckpt).eval()
    assert (loaded.cfg.stem, loaded.cfg.pool) == ("linear", "mean")
    x = videos(2)
    assert torch.equal(loaded(x), model(x))


def test_loading_is_strict_and_names_keys(tmp_path):
    model = S4DClassifier(small_cfg(), 7, 5)
    save_checkpoint(tmp_path / "shape.pt", model)
    ckpt = read_checkpoint(tmp_path / "shape.pt")
    ckpt["state_dict"]["blocks.0.mlp.fc1.weight"] = ckpt["state_dict"]["blocks.0.mlp.fc1.weight"][:-1]
    torch.save(ckpt, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match=r"blocks\.0\.mlp\.fc1\.weight has shape"):
        init_classifier(S4DClassifier(small_cfg(), 7, 5), tmp_path / "shape.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not a readable"):
        read_checkpoint(tmp_path / "junk.pt")


def test_classifier_starts_from_pretraining_exactly(tmp_path):
    """Our MAE checkpoint initialises the classifier, whose tokens then equal the pretrained encoder's;
    MoAE, heads and fc_norm are reported as fresh, the decoder as ignored."""
    cfg = small_cfg()
    mae = MaskedAutoencoder(cfg).eval()
    save_checkpoint(tmp_path / "ours.pt", mae)
    model = S4DClassifier(cfg, 7, 7).eval()
    report = init_classifier(model, tmp_path / "ours.pt")
    assert any(".moe_layer." in k for k in report.fresh) and "fc_norm.weight" in report.fresh
    assert any(k.startswith("decoder.") for k in report.ignored) and "decoder.mask_token" in report.ignored
    x = videos(2)
    ours, theirs = model.embed(x), mae.encoder.embed(x)
    for ours_block, their_block in zip(model.blocks, mae.encoder.blocks):
        ours, theirs = ours_block(ours), their_block(theirs)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("key, value", [("pos_embed", "sincos_flat"), ("num_heads", 4), ("num_frames", 8),
                                        ("tubelet_size", 4), ("img_size", 48), ("pool", "mean")])
def test_loading_compares_the_stored_config(tmp_path, key, value):
    """What a weight means without showing in its shape (the fixed position table is not in the state dict,
    the head count splits qkv) must match: an MAE pretrained with the flat table is refused by a sincos3d
    classifier, naming the key, instead of loading "88 tensors"."""
    cfg = small_cfg()
    other = dataclasses.replace(cfg, **{key: value})
    source = S4DClassifier(other, 7, 7) if key == "pool" else MaskedAutoencoder(other)
    save_checkpoint(tmp_path / "other.pt", source)
    with pytest.raises(CheckpointError, match=rf"trained with {key}={value} but the model has {key}="):
        init_classifier(S4DClassifier(cfg, 7, 7), tmp_path / "other.pt")
