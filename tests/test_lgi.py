"""LGI-Former (encoder: lgi), MAE-DFER's motion target and the MAE-DFER checkpoint converter.

The converter is checked against a reference forward written here from MAE-DFER's equations
(../shared/reference/official-models.md, sunlicai/MAE-DFER modeling_finetune.py / modeling_pretrain.py),
on files laid out as their `utils.save_model` writes them; the reference uses none of our model code.
"""
from __future__ import annotations

import argparse
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from s4d.config import ConfigError, LGIConfig, ModelConfig, MoAEConfig, load_params
from s4d.models import LGIClassifier, MaskedAutoencoder, S4DClassifier
from s4d.models.lgi import MAEDFERError, convert_maedfer
from s4d.cli import main as s4d
from s4d.models import load_model
from s4d.models.official import PublishedFormatError, convert, read_published
from s4d.models.mae import patch_targets, patchify, region_masking, split_motion
from s4d.train.finetune import build_optimizer

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def lgi_cfg(**kw) -> ModelConfig:
    base = dict(img_size=32, patch_size=8, num_frames=8, tubelet_size=2, embed_dim=64, depth=2, num_heads=2,
                stem="linear", pool="mean", decoder_dim=32, decoder_depth=1, decoder_heads=2,
                moae=MoAEConfig(layers=0), encoder="lgi", lgi=LGIConfig(region=[2, 2, 4], tokens=1))
    return ModelConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------ shapes, masking
def test_lgi_classifier_shapes_for_videos_images_and_short_clips():
    torch.manual_seed(0)
    model = S4DClassifier(lgi_cfg(lgi=LGIConfig(region=[2, 2, 4], tokens=2)), 7, 5).eval()
    assert isinstance(model, LGIClassifier)
    # grid (4, 4, 4), regions of 2x2x4 -> 2 * 2 * 1 = 4 regions, 2 representatives each
    assert model.region_tokens.shape == (8, 64)
    assert model(torch.randn(3, 3, 8, 32, 32)).shape == (3, 7)
    assert model(torch.randn(2, 3, 4, 32, 32)).shape == (2, 7)  # 2 slices: one region deep
    assert model(torch.randn(4, 3, 32, 32)).shape == (4, 5)  # an image: 1 slice
    tokens, rep = model.encode(torch.randn(2, 3, 8, 32, 32))
    assert tokens.shape == (2, 64, 64) and rep.shape == (2, 8, 64)
    _, rep = model.encode(torch.randn(2, 3, 32, 32))
    assert rep.shape == (2, 4, 64)  # the first temporal row of regions
    twin = copy.deepcopy(model)  # copies and pickles rebuild the instance without a config
    clip = torch.randn(1, 3, 8, 32, 32)
    assert type(twin) is LGIClassifier and torch.equal(twin(clip), model(clip))


def test_region_that_does_not_divide_the_grid_is_refused_by_name(tmp_path):
    m = load_params(ROOT / "params.yaml", ["profile=tiny"]).model
    grid = f"{m.num_frames // m.tubelet_size}, {m.img_size // m.patch_size}, {m.img_size // m.patch_size}"
    with pytest.raises(ConfigError, match=rf"models\.tiny\.lgi\.region: \[2, 3, 4\] .* token grid \[{grid}\]"):
        load_params(ROOT / "params.yaml", ["models.tiny.encoder=lgi", "models.tiny.lgi.region=[2,3,4]"])
    with pytest.raises(ConfigError, match=r"models\.base\.lgi\.region"):
        load_params(ROOT / "params.yaml", ["models.base.encoder=lgi", "models.base.lgi.region=[3,5,10]"])
    load_params(ROOT / "params.yaml", ["models.tiny.lgi.region=[2,3,4]"])  # vit profiles ignore lgi settings
    with pytest.raises(ValueError, match=r"lgi region \[2, 3, 4\] does not divide the token grid \[4, 4, 4\]"):
        S4DClassifier(lgi_cfg(lgi=LGIConfig(region=[2, 3, 4])), 7)
    model = S4DClassifier(lgi_cfg(num_frames=12, lgi=LGIConfig(region=[2, 2, 4])), 7)
    with pytest.raises(ValueError, match=r"does not divide the token grid \[3, 4, 4\]"):
        model(torch.randn(1, 3, 6, 32, 32))  # 3 slices, regions 2 deep


def test_region_masking_keeps_exact_counts_per_region():
    cfg = lgi_cfg(img_size=80, patch_size=8, num_frames=8, lgi=LGIConfig(region=[2, 5, 10]))  # grid (4, 10, 10)
    mae = MaskedAutoencoder(cfg)
    index = mae.encoder.region_index(4)
    assert index.shape == (4, 100)  # 2 x 2 x 1 regions of 2 x 5 x 10 tokens
    torch.manual_seed(1)
    ids = region_masking(torch.rand(3, 400), index, 4, 100, 0.9, tube=False)
    assert ids.shape == (3, 4, 10)  # round(100 * 0.1) per region
    for b in range(3):
        for r in range(4):
            assert set(ids[b, r].tolist()) <= set(index[r].tolist())
    ids = region_masking(torch.rand(3, 100), index, 4, 100, 0.9, tube=True)
    assert ids.shape == (3, 4, 10)  # 5 of the 50 patches of a window, in both slices of the region
    patches = ids % 100
    for b in range(3):
        for r in range(4):
            kept = patches[b, r].tolist()
            assert len(set(kept)) == 5 and all(kept.count(p) == 2 for p in set(kept))
        # regions at the same place in space keep the same patches (tube over the whole clip)
        assert patches[b, 0].tolist() == patches[b, 2].tolist()

    out = mae(torch.randn(2, 3, 8, 80, 80), 0.9, tube=True)
    assert out.mask.sum(dim=1).tolist() == [400 - 40, 400 - 40]
    out = mae(torch.randn(2, 3, 80, 80), 0.75)  # images: regions one slice deep, 2 regions of 5 x 10 tokens
    assert out.mask.sum(dim=1).tolist() == [100 - 2 * 12, 100 - 2 * 12]  # round(50 * 0.25) = 12 per region


# ------------------------------------------------------------------------------------- motion target
def test_motion_target_on_a_hand_built_two_frame_clip():
    # One token: tubelet 2, patch 2, channel 0 = frame 0 all 0, frame 1 all 2; channel 1 = frame 0 [0,1,2,3],
    # frame 1 the same (no motion); channel 2 = constant 5.
    clip = torch.zeros(1, 3, 2, 2, 2)
    clip[0, 0, 1] = 2.0
    clip[0, 1, :] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    clip[0, 2] = 5.0
    target = split_motion(patch_targets(patchify(clip, 2, 2)), 2).view(2, 4, 3)  # (frame, pixel, channel)
    # channel 0: mean 1, unbiased var 8/7 -> frame 0 = -1/s, frame 1 (difference) = 2/s
    s0 = math.sqrt(8 / 7 + 1e-6)
    assert torch.allclose(target[0, :, 0], torch.full((4,), -1 / s0), atol=1e-6)
    assert torch.allclose(target[1, :, 0], torch.full((4,), 2 / s0), atol=1e-6)
    # channel 1: mean 1.5, unbiased var (2 * (2.25 + 0.25 + 0.25 + 2.25)) / 7 = 10/7; no motion
    s1 = math.sqrt(10 / 7 + 1e-6)
    assert torch.allclose(target[0, :, 1], (torch.tensor([0.0, 1.0, 2.0, 3.0]) - 1.5) / s1, atol=1e-6)
    assert torch.allclose(target[1, :, 1], torch.zeros(4), atol=1e-6)
    assert torch.allclose(target[:, :, 2], torch.zeros(2, 4), atol=1e-6)  # a constant patch: 0 / sqrt(eps)


def test_motion_loss_weights_appearance_and_motion():
    torch.manual_seed(0)
    cfg = lgi_cfg()
    x = torch.randn(2, 3, 8, 32, 32)
    noise = torch.rand(2, 64)
    losses = {}
    for w in (0.0, 1.0, 0.25):
        torch.manual_seed(0)
        mae = MaskedAutoencoder(cfg, "pixels+motion", w)
        out = mae(x, 0.75, noise=noise)
        losses[w] = out.loss.item()
        half = out.target.shape[-1] // 2
        per = lambda sl: ((out.pred[..., sl] - out.target[..., sl]) ** 2).mean().item()  # noqa: E731
        appearance, motion = per(slice(0, half)), per(slice(half, None))
    assert losses[0.0] == pytest.approx(appearance, rel=1e-5)
    assert losses[1.0] == pytest.approx(motion, rel=1e-5)
    assert losses[0.25] == pytest.approx(0.75 * appearance + 0.25 * motion, rel=1e-5)
    vit = MaskedAutoencoder(lgi_cfg(encoder="vit"), "pixels+motion", 0.25)(x, 0.75, noise=noise)  # either encoder
    full = split_motion(patch_targets(patchify(x, cfg.tubelet_size, cfg.patch_size)), cfg.tubelet_size)  # every token
    assert torch.allclose(vit.target.flatten(0, 1), full[vit.mask]) and vit.mask.sum() == 2 * (64 - 16)
    assert torch.allclose(out.target.flatten(0, 1), full[out.mask])
    torch.manual_seed(0)
    pixels = MaskedAutoencoder(cfg)(x, 0.75, noise=noise)
    assert not torch.allclose(pixels.target, out.target)
    assert torch.equal(pixels.target[..., :half], out.target[..., :half])  # the appearance half is the pixels'


# ------------------------------------------------------------------------------------- MoAE on lgi
def test_moae_on_lgi_at_init_computes_the_plain_encoder():
    torch.manual_seed(0)
    with_moae = S4DClassifier(lgi_cfg(depth=3, moae=MoAEConfig(layers=2, experts=4, top_k=2, bottleneck=16)), 7, 5)
    plain = S4DClassifier(lgi_cfg(depth=3), 7, 5)
    assert len(with_moae.moae_layers()) == 2 and not plain.moae_layers()
    plain.load_state_dict({k: v for k, v in with_moae.state_dict().items() if ".moe_layer." not in k})
    with_moae.eval(), plain.eval()
    x, images = torch.randn(2, 3, 8, 32, 32), torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(with_moae(x), plain(x), atol=1e-6)
        assert torch.allclose(with_moae(images), plain(images), atol=1e-6)
    # MoAE beside the FFN of the last two of three blocks
    assert {int(k.split(".")[1]) for k in with_moae.state_dict() if ".moe_layer." in k} == {1, 2}


def test_lgi_trains_with_the_finetune_optimizer():
    from s4d.config import FinetuneConfig

    torch.manual_seed(0)
    model = S4DClassifier(lgi_cfg(moae=MoAEConfig(layers=1, experts=4, top_k=2, bottleneck=16)), 7, 5)
    opt = build_optimizer(model, FinetuneConfig(), 1e-3)
    decay_free = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert id(model.region_tokens) in decay_free
    scale_of = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    stem = scale_of[id(model.patch_embed.proj.weight)]
    assert scale_of[id(model.region_tokens)] == stem < scale_of[id(model.blocks[0].norm2.weight)]
    before = model.region_tokens.detach().clone()
    loss = F.cross_entropy(model(torch.randn(2, 3, 8, 32, 32)), torch.tensor([1, 2]))
    loss = loss + F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 4])) + model.balance_loss()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.region_tokens)


# ------------------------------------------------------------------- MAE-DFER reference (official)
def official_table(n: int, d: int) -> torch.Tensor:
    """angle = p / 10000^(2 floor(j/2) / d); sin on even channels, cos on odd ones."""
    angle = torch.arange(n, dtype=torch.float64)[:, None] / torch.pow(
        10000.0, 2 * (torch.arange(d) // 2).double() / d)[None]
    table = angle.clone()
    table[:, 0::2], table[:, 1::2] = angle[:, 0::2].sin(), angle[:, 1::2].cos()
    return table.float()


def ln(sd, key, x):
    return F.layer_norm(x, x.shape[-1:], sd[key + ".weight"], sd[key + ".bias"], eps=1e-6)


def general_attention(sd, p, x, context, heads):
    """MAE-DFER GeneralAttention: q = x Wq + q_bias; [k, v] = context Wkv + [0, v_bias]; softmax(q k^T / sqrt(hd))."""
    b, n, d = x.shape
    q = F.linear(x, sd[p + "q.weight"], sd[p + "q_bias"])
    kv = F.linear(context, sd[p + "kv.weight"], torch.cat([torch.zeros_like(sd[p + "v_bias"]), sd[p + "v_bias"]]))
    k, v = kv[..., :d], kv[..., d:]
    split = lambda t: t.reshape(b, t.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(q), split(k), split(v)
    weights = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return F.linear((weights @ v).transpose(1, 2).reshape(b, n, d), sd[p + "proj.weight"], sd[p + "proj.bias"])


def lg_block(sd, p, x, batch, heads):
    """LGBlock, first attention 'self', third 'cross': x is (B * n, 1 + s, c) with the region token first."""
    x = x + general_attention(sd, p + "first_attn.", ln(sd, p + "first_attn_norm0", x),
                              ln(sd, p + "first_attn_norm0", x), heads)
    bn, s1, c = x.shape
    messengers = x[:, 0].reshape(batch, bn // batch, c)
    messengers = messengers + general_attention(sd, p + "second_attn.", ln(sd, p + "second_attn_norm0", messengers),
                                                ln(sd, p + "second_attn_norm0", messengers), heads)
    local = x[:, 1:].reshape(batch, -1, c)
    local = local + general_attention(sd, p + "third_attn.", ln(sd, p + "third_attn_norm0", local),
                                      ln(sd, p + "third_attn_norm1", messengers), heads)
    x = torch.cat([messengers.reshape(bn, 1, c), local.reshape(bn, s1 - 1, c)], dim=1)
    h = ln(sd, p + "norm2", x)
    return x + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def official_tokens(sd, p, video):
    w = sd[p + "patch_embed.proj.weight"]
    x = F.conv3d(video, w, sd[p + "patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    return x + official_table(x.shape[1], x.shape[2])


def official_classifier(sd, video, region, depth, heads):
    """Fine-tuned model, lg_classify_token_type 'region', use_mean_pooling: fc_norm(mean of region tokens)."""
    x = official_tokens(sd, "", video)
    b, n, c = x.shape
    grid_t, side = video.shape[2] // 2, video.shape[3] // sd["patch_embed.proj.weight"].shape[-1]
    rt, rh, rw = region
    nt, nh, nw = grid_t // rt, side // rh, side // rw
    # 'b (nt t nh h nw w) c -> (b nt nh nw) (t h w) c'
    x = x.view(b, nt, rt, nh, rh, nw, rw, c).permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(b * nt * nh * nw, -1, c)
    regions = sd["lg_region_tokens"][None].expand(b, -1, -1).reshape(-1, 1, c)
    x = torch.cat([regions, x], dim=1)
    for i in range(depth):
        x = lg_block(sd, f"blocks.{i}.", x, b, heads)
    pooled = x[:, 0].reshape(b, -1, c).mean(dim=1)
    return F.linear(ln(sd, "fc_norm", pooled), sd["head.weight"], sd["head.bias"])


def official_mae(sd, video, mask, region, depth, heads, decoder_depth, decoder_heads):
    """Pretraining model: encoder on visible tokens (region w = full width, MAE-DFER's layout), decoder on
    [visible + pos, mask_token + pos]; returns predictions for the masked tokens in flat order.

    One deliberate difference: MAE-DFER adds the visible tokens' position rows in flat (t, h, w) order to
    encoder outputs that come back region-major; with 2 regions per slice and 2 slices per region those
    disagree, so its decoder sees some visible tokens at another token's position. Our MAE places every
    token at its own position, and so does this reference (the encoder, which fine-tuning uses, is exact)."""
    x = official_tokens(sd, "encoder.", video)
    b, n, c = x.shape
    x_vis, ids = x[:, ~mask], torch.nonzero(~mask).flatten()
    rt, rh, rw = region
    nt = video.shape[2] // 2 // rt
    nhw = (video.shape[3] // sd["encoder.patch_embed.proj.weight"].shape[-1]) // rh
    hw = x_vis.shape[1] // (nt * rt * nhw)
    # 'b (nt t nhw hw) c -> (b nt nhw) (t hw) c'
    x_vis = x_vis.view(b, nt, rt, nhw, hw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nt * nhw, rt * hw, c)
    ids = ids.view(nt, rt, nhw, hw).permute(0, 2, 1, 3).flatten()  # the token of each row of x_vis
    x_vis = torch.cat([sd["encoder.lg_region_tokens"][None].expand(b, -1, -1).reshape(-1, 1, c), x_vis], dim=1)
    for i in range(depth):
        x_vis = lg_block(sd, f"encoder.blocks.{i}.", x_vis, b, heads)
    x_vis = x_vis[:, 1:].reshape(b, -1, c)  # '(b n) s c -> b (n s) c': region-major
    x_vis = F.linear(ln(sd, "encoder.norm", x_vis), sd["encoder_to_decoder.weight"])
    dd = x_vis.shape[-1]
    table = official_table(n, dd)
    full = torch.cat([x_vis + table[ids], sd["mask_token"].view(1, 1, dd) + table[mask]], dim=1)
    for i in range(decoder_depth):
        p = f"decoder.blocks.{i}."
        h = ln(sd, p + "norm1", full)
        bias = torch.cat([sd[p + "attn.q_bias"], torch.zeros_like(sd[p + "attn.v_bias"]), sd[p + "attn.v_bias"]])
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], bias).reshape(b, n, 3, decoder_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        w = ((q * (dd // decoder_heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        full = full + F.linear((w @ v).transpose(1, 2).reshape(b, n, dd), sd[p + "attn.proj.weight"],
                               sd[p + "attn.proj.bias"])
        h = ln(sd, p + "norm2", full)
        full = full + F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                               sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    out = F.linear(ln(sd, "decoder.norm", full[:, -int(mask.sum()):]), sd["decoder.head.weight"],
                   sd["decoder.head.bias"])
    return out


def random_lg_block(sd, p, c, gen):
    """Random tensors under MAE-DFER's LGBlock names (first 'self', third 'cross', no sharing)."""
    def t(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    for attn in ("first_attn", "second_attn", "third_attn"):
        sd[f"{p}{attn}.q.weight"] = t(c, c, scale=c ** -0.5)
        sd[f"{p}{attn}.kv.weight"] = t(2 * c, c, scale=c ** -0.5)
        sd[f"{p}{attn}.q_bias"], sd[f"{p}{attn}.v_bias"] = t(c, scale=0.1), t(c, scale=0.1)
        sd[f"{p}{attn}.proj.weight"], sd[f"{p}{attn}.proj.bias"] = t(c, c, scale=0.5 * c ** -0.5), t(c, scale=0.1)
    for norm in ("first_attn_norm0", "second_attn_norm0", "third_attn_norm0", "third_attn_norm1", "norm2"):
        sd[f"{p}{norm}.weight"], sd[f"{p}{norm}.bias"] = 1 + t(c, scale=0.1), t(c, scale=0.1)
    sd[f"{p}mlp.fc1.weight"], sd[f"{p}mlp.fc1.bias"] = t(4 * c, c, scale=c ** -0.5), t(4 * c, scale=0.1)
    sd[f"{p}mlp.fc2.weight"], sd[f"{p}mlp.fc2.bias"] = t(c, 4 * c, scale=0.5 * (4 * c) ** -0.5), t(c, scale=0.1)


def finetune_file(path, width, depth, classes, region, regions, gen):
    t = lambda *s, scale=1.0: torch.randn(*s, generator=gen) * scale  # noqa: E731
    sd = {"patch_embed.proj.weight": t(width, 3, 2, 16, 16, scale=(3 * 2 * 16 * 16) ** -0.5),
          "patch_embed.proj.bias": t(width, scale=0.1)}
    for i in range(depth):
        random_lg_block(sd, f"blocks.{i}.", width, gen)
    sd["lg_region_tokens"] = t(regions, width)
    sd["fc_norm.weight"], sd["fc_norm.bias"] = 1 + t(width, scale=0.1), t(width, scale=0.1)
    sd["head.weight"], sd["head.bias"] = t(classes, width, scale=width ** -0.5), t(classes, scale=0.1)
    # The run arguments of MAE-DFER's DFEW fine-tuning script (logs/dfew.out), depth and classes as given.
    args = argparse.Namespace(
        model="vit_base_dim512_no_depth_patch16_160", depth=depth, nb_classes=classes, input_size=160,
        num_frames=16, tubelet_size=2, sampling_rate=4, attn_type="local_global", lg_region_size=list(region),
        lg_first_attn_type="self", lg_third_attn_type="cross", lg_attn_param_sharing_first_third=False,
        lg_attn_param_sharing_all=False, lg_classify_token_type="region", lg_no_second=False, lg_no_third=False,
        use_mean_pooling=True, drop_path=0.1, init_scale=0.001, layer_decay=0.75, lr=1e-3, data_set="DFEW")
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 99,
                "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "args": args}, path)
    return sd


def maedfer_file(path):
    """Read as the import reads a published file (weights only, Namespace allowed), then convert."""
    read = read_published(path)
    return convert_maedfer(read.state_dict, read.args)


def check_finetune_file(tmp_path, width, depth, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    region = (2, 5, 10)
    sd = finetune_file(tmp_path / "checkpoint-99.pth", width, depth, 7, region, 8, gen)
    video = torch.randn(batch, 3, 16, 160, 160, generator=gen)
    with torch.no_grad():
        expected = official_classifier(sd, video, region, depth, width // 64)
    converted = maedfer_file(tmp_path / "checkpoint-99.pth")
    assert converted.kind == "classifier" and converted.num_dynamic_classes == 7
    cfg = converted.model_config
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.lgi.region, cfg.encoder) == (
        width, depth, width // 64, list(region), "lgi")
    model = S4DClassifier(cfg, converted.num_dynamic_classes).eval()
    model.load_state_dict(converted.state_dict, strict=True)
    with torch.no_grad():
        logits = model(video)
    diff = (logits - expected).abs().max().item()
    assert expected.abs().max() > 0.5  # logits of a useful size, so the tolerance means something
    assert diff <= 1e-4, diff
    return diff


def test_maedfer_finetuned_file_reproduces_the_official_logits(tmp_path):
    # The released layout (160 px, 16 frames, patch 16, tubelet 2, regions 2 x 5 x 10), 128 wide, 3 blocks.
    check_finetune_file(tmp_path, 128, 3, 2, seed=0)


@pytest.mark.slow
def test_maedfer_finetuned_file_at_released_size(tmp_path):
    check_finetune_file(tmp_path, 512, 16, 1, seed=1)  # 512 wide, 16 blocks, 8 heads, as released


def test_maedfer_pretraining_file_reproduces_the_official_reconstruction(tmp_path):
    gen = torch.Generator().manual_seed(2)
    t = lambda *s, scale=1.0: torch.randn(*s, generator=gen) * scale  # noqa: E731
    width, depth, dec, dec_depth, region = 128, 2, 64, 2, (2, 5, 10)
    sd = {"encoder.patch_embed.proj.weight": t(width, 3, 2, 16, 16, scale=1536 ** -0.5),
          "encoder.patch_embed.proj.bias": t(width, scale=0.1)}
    for i in range(depth):
        random_lg_block(sd, f"encoder.blocks.{i}.", width, gen)
    sd["encoder.lg_region_tokens"] = t(8, width)
    sd["encoder.norm.weight"], sd["encoder.norm.bias"] = 1 + t(width, scale=0.1), t(width, scale=0.1)
    for i in range(dec_depth):
        p = f"decoder.blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = 1 + t(dec, scale=0.1), t(dec, scale=0.1)
        sd[p + "attn.qkv.weight"] = t(3 * dec, dec, scale=dec ** -0.5)
        sd[p + "attn.q_bias"], sd[p + "attn.v_bias"] = t(dec, scale=0.1), t(dec, scale=0.1)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = t(dec, dec, scale=dec ** -0.5), t(dec, scale=0.1)
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = 1 + t(dec, scale=0.1), t(dec, scale=0.1)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = t(4 * dec, dec, scale=dec ** -0.5), t(4 * dec, scale=0.1)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = t(dec, 4 * dec, scale=(4 * dec) ** -0.5), t(dec, scale=0.1)
    sd["decoder.norm.weight"], sd["decoder.norm.bias"] = 1 + t(dec, scale=0.1), t(dec, scale=0.1)
    sd["decoder.head.weight"], sd["decoder.head.bias"] = t(1536, dec, scale=dec ** -0.5), t(1536, scale=0.1)
    sd["encoder_to_decoder.weight"] = t(dec, width, scale=width ** -0.5)
    sd["mask_token"] = t(1, 1, dec, scale=0.02)
    args = argparse.Namespace(  # MAE-DFER's VoxCeleb2 pretraining script, depth as given
        model="pretrain_videomae_base_dim512_no_depth_patch16_160", encoder_depth=depth, decoder_depth=dec_depth,
        mask_type="part_window", part_win_size=[2, 5, 10], mask_ratio=0.9, input_size=160, num_frames=16,
        sampling_rate=4, attn_type="local_global", lg_region_size=[2, 5, 10], lg_first_attn_type="self",
        lg_third_attn_type="cross", lg_attn_param_sharing_first_third=False, lg_attn_param_sharing_all=False,
        lg_no_second=False, lg_no_third=False, use_frame_diff_as_target=True, frame_diff_group_size=2,
        target_diff_weight=None, normlize_target=True, drop_path=0.0)
    torch.save({"model": sd, "optimizer": {}, "epoch": 49, "scaler": {}, "args": args}, tmp_path / "checkpoint-49.pth")

    # Part-window tube masking as MAE-DFER draws it: per 5 x 10 window 5 visible patches, the same in all frames.
    noise = torch.rand(2, 100, generator=gen)
    video = torch.randn(2, 3, 16, 160, 160, generator=gen)
    converted = maedfer_file(tmp_path / "checkpoint-49.pth")
    assert converted.kind == "mae" and converted.model_config.decoder_dim == dec
    mae = MaskedAutoencoder(converted.model_config, "pixels+motion").eval()
    mae.load_state_dict(converted.state_dict, strict=True)
    with torch.no_grad():
        out = mae(video, 0.9, tube=True, noise=noise)
        for b in range(2):
            mask = out.mask[b]
            assert mask.view(8, 100).sum(1).tolist() == [90] * 8  # 10 visible per slice: 5 per window
            expected = official_mae(sd, video[b:b + 1], mask, region, depth, 2, dec_depth, 1)
            diff = (out.pred[b] - expected[0]).abs().max().item()  # pred: the masked tokens, in order
            assert diff <= 1e-4, diff


def test_converter_refuses_other_architectures_and_leftover_tensors(tmp_path):
    gen = torch.Generator().manual_seed(3)
    sd = finetune_file(tmp_path / "c.pth", 64, 1, 7, (2, 5, 10), 8, gen)
    read = read_published(tmp_path / "c.pth")
    args = argparse.Namespace(**read.args)
    convert_maedfer(read.state_dict, args)
    with pytest.raises(MAEDFERError, match=r"args.attn_type = 'joint'"):
        convert_maedfer(sd, {**vars(args), "attn_type": "joint"})
    with pytest.raises(MAEDFERError, match=r"args.lg_classify_token_type = 'org'"):
        convert_maedfer(sd, {**vars(args), "lg_classify_token_type": "org"})
    with pytest.raises(MAEDFERError, match=r"args.model 'vit_small'"):
        convert_maedfer(sd, {**vars(args), "model": "vit_small"})
    with pytest.raises(MAEDFERError, match=r"1 checkpoint tensors have no place .*blocks.0.extra.weight"):
        convert_maedfer({**sd, "blocks.0.extra.weight": torch.zeros(1)}, args)
    with pytest.raises(MAEDFERError, match=r"no blocks.0.second_attn.q_bias"):
        convert_maedfer({k: v for k, v in sd.items() if k != "blocks.0.second_attn.q_bias"}, args)
    torch.save({"model": sd}, tmp_path / "no_args.pth")
    with pytest.raises(PublishedFormatError, match=r"no_args.pth: .*args.model None is not an LGI-Former"):
        convert(read_published(tmp_path / "no_args.pth"))


def test_s4d_import_converts_a_maedfer_file_to_the_official_logits(tmp_path, capsys):
    """The user's path: `s4d import` on a file as MAE-DFER's save_model writes it, then load_model."""
    gen = torch.Generator().manual_seed(5)
    sd = finetune_file(tmp_path / "checkpoint-99.pth", 64, 2, 7, (2, 5, 10), 8, gen)
    assert s4d(["import", str(tmp_path / "checkpoint-99.pth"), str(tmp_path / "lgi.pt")]) == 0
    assert "LGI-Former (MAE-DFER)" in capsys.readouterr().out
    model = load_model(tmp_path / "lgi.pt")
    video = torch.randn(1, 3, 16, 160, 160, generator=gen)
    with torch.no_grad():
        diff = (model(video) - official_classifier(sd, video, (2, 5, 10), 2, 1)).abs().max().item()
    assert diff <= 1e-4, diff
