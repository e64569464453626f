"""Published VideoMAE / S4D checkpoints, imported and checked against a reference forward written here from
the official equations (../shared/reference/official-models.md, the official modeling code), never from
s4d/models. The files are written as the official `utils.save_model` writes them: {"model", "optimizer",
"epoch", "scaler", "args": argparse.Namespace}, with the official state-dict names."""
import argparse
import json
import math
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from s4d.cli import main as s4d
from s4d.models import S4DClassifier, load_model
from s4d.models.checkpoint import CheckpointError, init_classifier

from conftest import MICRO_MODEL, ROOT, run_module

EPS = 1e-6  # the official LayerNorm


# ------------------------------------------------------------------------------- official reference
def official_table(n: int, d: int) -> torch.Tensor:
    """get_sinusoid_encoding_table: angle(p, j) = p / 10000^(2*(j//2)/d); sin on even j, cos on odd j."""
    pos = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(d)[None, :]
    angle = pos / np.power(10000, 2 * (j // 2) / d)
    table = angle.copy()
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.tensor(table, dtype=torch.float32)[None]


def ref_linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"))


def ref_attention(x, sd, name, heads):
    batch, n, _ = x.shape
    bias = torch.cat([sd[f"{name}.q_bias"], torch.zeros_like(sd[f"{name}.v_bias"]), sd[f"{name}.v_bias"]])
    qkv = F.linear(x, sd[f"{name}.qkv.weight"], bias).reshape(batch, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return ref_linear((attn @ v).transpose(1, 2).reshape(batch, n, -1), sd, f"{name}.proj")


def ref_mlp(x, sd, name):
    return ref_linear(F.gelu(ref_linear(x, sd, f"{name}.fc1")), sd, f"{name}.fc2")


def ref_moe(h, sd, name, experts, top_k, capacity_factor):
    """SparseMoEWithCapacity with the router noise off: top-k of the router logits, gate = softmax over the
    kept logits; per expert in index order, the tokens that chose it in flat (clip-major) order, the first
    int(B*N*k/E * factor) kept."""
    batch, n, dim = h.shape
    logits = ref_linear(h, sd, f"{name}.router.topkroute_linear")
    top, idx = logits.topk(top_k, dim=-1)
    gate = torch.full_like(logits, float("-inf")).scatter(-1, idx, top).softmax(dim=-1)
    flat, flat_gate, flat_idx = h.reshape(-1, dim), gate.reshape(-1, experts), idx.reshape(-1, top_k)
    capacity = int((batch * n * top_k / experts) * capacity_factor)
    out = torch.zeros_like(flat)
    for e in range(experts):
        chosen = torch.nonzero((flat_idx == e).any(dim=-1)).squeeze(-1)[:capacity]
        if chosen.numel():
            y = ref_mlp(flat[chosen], sd, f"{name}.experts.{e}")
            out.index_add_(0, chosen, y * flat_gate[chosen, e:e + 1])
    return out.reshape(batch, n, dim)


def ref_tokens(sd, x, arch):
    """The official encoder: tubelet embedding, position table, pre-norm blocks (MoE where listed)."""
    tubelet, patch = sd["patch_embed.proj.weight"].shape[2], sd["patch_embed.proj.weight"].shape[3]
    dim = sd["patch_embed.proj.weight"].shape[0]
    if x.ndim == 4:  # PadIm2Video: one frame repeated to a tubelet
        x = x.unsqueeze(2).repeat(1, 1, tubelet, 1, 1)
    tokens = F.conv3d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=(tubelet, patch, patch))
    tokens = tokens.flatten(2).transpose(1, 2)
    table = sd["pos_embed"] if "pos_embed" in sd else official_table(arch["tokens"], dim)
    tokens = tokens + table[:, : tokens.shape[1]]  # an image takes the first temporal slice
    for i in range(arch["depth"]):
        b = f"blocks.{i}"
        tokens = tokens + ref_attention(F.layer_norm(tokens, (dim,), sd[f"{b}.norm1.weight"],
                                                     sd[f"{b}.norm1.bias"], EPS), sd, f"{b}.attn", arch["heads"])
        h = F.layer_norm(tokens, (dim,), sd[f"{b}.norm2.weight"], sd[f"{b}.norm2.bias"], EPS)
        update = ref_mlp(h, sd, f"{b}.mlp")
        if i in arch.get("moe_layers", ()):
            update = update + ref_moe(h, sd, f"{b}.moe_layer", arch["experts"], arch["top_k"], arch["capacity"])
        tokens = tokens + update
    return tokens


def ref_forward(sd, x, arch):
    """The official eval forward (VisionTransformer / VisionTransformerMoE with mean pooling)."""
    tokens = ref_tokens(sd, x, arch)
    dim = tokens.shape[-1]
    feats = F.layer_norm(tokens.mean(dim=1), (dim,), sd["fc_norm.weight"], sd["fc_norm.bias"], EPS)
    if "head.weight" in sd:
        return ref_linear(feats, sd, "head")
    return ref_linear(feats, sd, "head.video" if x.ndim == 5 else "head.image")


# ---------------------------------------------------------------------------------- official files
def official_state_dict(dim=768, depth=12, mlp=3072, tubelet=2, patch=16, classes=7, image_classes=0,
                        moe_layers=(), experts=8, bottleneck=192, learned_tokens=0, seed=0):
    """Random weights under the official names, every parameter away from its initial value."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape, std=0.02: torch.randn(*shape, generator=g) * std  # noqa: E731
    sd = {"patch_embed.proj.weight": rand(dim, 3, tubelet, patch, patch, std=0.05),
          "patch_embed.proj.bias": rand(dim)}
    if learned_tokens:
        sd["pos_embed"] = rand(1, learned_tokens, dim, std=0.5)
    for i in range(depth):
        b = f"blocks.{i}"
        sd |= {f"{b}.norm1.weight": 1 + rand(dim, std=0.1), f"{b}.norm1.bias": rand(dim, std=0.1),
               f"{b}.attn.q_bias": rand(dim, std=0.1), f"{b}.attn.v_bias": rand(dim, std=0.1),
               f"{b}.attn.qkv.weight": rand(3 * dim, dim, std=0.04), f"{b}.attn.proj.weight": rand(dim, dim),
               f"{b}.attn.proj.bias": rand(dim), f"{b}.norm2.weight": 1 + rand(dim, std=0.1),
               f"{b}.norm2.bias": rand(dim, std=0.1), f"{b}.mlp.fc1.weight": rand(mlp, dim),
               f"{b}.mlp.fc1.bias": rand(mlp), f"{b}.mlp.fc2.weight": rand(dim, mlp), f"{b}.mlp.fc2.bias": rand(dim)}
        if i in moe_layers:
            m = f"{b}.moe_layer"
            sd |= {f"{m}.router.topkroute_linear.weight": rand(experts, dim, std=0.05),
                   f"{m}.router.topkroute_linear.bias": rand(experts, std=0.2),
                   f"{m}.router.noise_linear.weight": rand(experts, dim),
                   f"{m}.router.noise_linear.bias": rand(experts)}
            for e in range(experts):
                sd |= {f"{m}.experts.{e}.fc1.weight": rand(bottleneck, dim, std=0.05),
                       f"{m}.experts.{e}.fc1.bias": rand(bottleneck),
                       f"{m}.experts.{e}.fc2.weight": rand(dim, bottleneck, std=0.1),
                       f"{m}.experts.{e}.fc2.bias": rand(dim)}
    sd |= {"fc_norm.weight": 1 + rand(dim, std=0.1), "fc_norm.bias": rand(dim, std=0.1)}
    head_std = 1.2 / math.sqrt(dim)  # logits of size ~1
    if image_classes:
        sd |= {"head.video.weight": rand(classes, dim, std=head_std), "head.video.bias": rand(classes, std=0.1),
               "head.image.weight": rand(image_classes, dim, std=head_std),
               "head.image.bias": rand(image_classes, std=0.1)}
    else:
        sd |= {"head.weight": rand(classes, dim, std=head_std), "head.bias": rand(classes, std=0.1)}
    return sd


def save_official(path, sd, **args):
    """As utils.save_model writes it."""
    torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3,
                "scaler": {"scale": 65536.0}, "args": argparse.Namespace(**args)}, path)
    return path


VIDEOMAE_ARGS = dict(model="vit_base_patch16_160", nb_classes=7, input_size=160, num_frames=16, num_segments=1,
                     tubelet_size=2, use_mean_pooling=True, sampling_rate=4, drop_path=0.1, data_set="DFEW")
S4D_ARGS = dict(model="vitmoe_base_patch16_160", nb_classes=7, input_size=160, num_frames=16, tubelet_size=2,
                use_mean_pooling=False,  # the S4D script never passes it; the model pools by mean regardless
                moe_type="moe_adapters", moe_layers=list(range(6, 12)), num_experts=8, top_k=2,
                capacity_factor=1.0, mode="joint", sfer_data_set="affectnet-7", sampling_rate=4)


def run_import(src, dst, capsys):
    code = s4d(["import", str(src), str(dst)])
    return code, capsys.readouterr()


# ------------------------------------------------------------------------------------ position table
def test_official_table_at_hand_computed_points():
    """angle = p / 10000^(2*(j//2)/768); values worked out with a calculator from that formula."""
    from s4d.models.vit import sincos_flat_table

    table = sincos_flat_table(800, 768)
    known = {(1, 0): 0.8414709848, (1, 1): 0.5403023059,  # sin(1), cos(1)
             (3, 2): 0.2110923492, (3, 3): -0.9774661222,  # 3 / 10000^(2/768) = 2.92812...
             (100, 384): 0.8414709848,  # 100 / 10000^(384/768) = 1
             (57, 101): -0.0978762252, (799, 766): 0.0817482644, (799, 767): 0.9966530095}
    for (p, j), value in known.items():
        assert table[p, j].item() == pytest.approx(value, abs=1e-6), (p, j)
    assert torch.allclose(table[None], official_table(800, 768), atol=1e-6)


# ------------------------------------------------------------------------------------------ exactness
@pytest.fixture(scope="module")
def base_videomae(tmp_path_factory):
    root = tmp_path_factory.mktemp("videomae")
    sd = official_state_dict(seed=1)
    return sd, save_official(root / "checkpoint-99.pth", sd, **VIDEOMAE_ARGS)


@pytest.fixture(scope="module")
def base_s4d(tmp_path_factory):
    root = tmp_path_factory.mktemp("s4d")
    sd = official_state_dict(image_classes=7, moe_layers=range(6, 12), seed=2)
    return sd, save_official(root / "checkpoint-best.pth", sd, **S4D_ARGS)


@pytest.mark.slow
def test_videomae_base_import_matches_the_official_forward(base_videomae, tmp_path, capsys):
    sd, src = base_videomae
    code, out = run_import(src, tmp_path / "videomae.pt", capsys)
    assert code == 0, out.err
    assert "loaded 150 tensors" in out.out  # 12 blocks x 12 (q/v bias merged into qkv.bias) + stem, fc_norm, head
    assert "ignored optimizer (training state, not the model)" in out.out and "ignored args" in out.out
    assert "fresh" not in out.out
    model = load_model(tmp_path / "videomae.pt")
    assert not model.training and model.cfg.pos_embed == "sincos_flat" and model.num_static_classes == 0
    x = torch.randn(1, 3, 16, 160, 160, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours, theirs = model(x), ref_forward(sd, x, {"tokens": 800, "depth": 12, "heads": 12})
    diff = (ours - theirs).abs().max().item()
    print(f"VideoMAE ViT-B/16 160px 16f: max |logit diff| {diff:.2e}, logit scale {theirs.abs().max():.2f}")
    assert theirs.abs().max() > 0.5 and diff <= 1e-4


@pytest.mark.slow
def test_s4d_base_import_matches_the_official_forward(base_s4d, tmp_path, capsys):
    """S4D ViT-MoE at the paper's shape: both heads, MoE on blocks 6-11, official capacity (router noise off
    in both). Images take the image head, videos the video head."""
    sd, src = base_s4d
    code, out = run_import(src, tmp_path / "s4d.pt", capsys)
    assert code == 0, out.err
    assert "S4D ViT-MoE" in out.out and "moae.capacity: the published S4D dispatch" in out.out
    model = load_model(tmp_path / "s4d.pt")
    assert (model.num_dynamic_classes, model.num_static_classes) == (7, 7)
    assert model.cfg.moae.capacity == "official" and model.cfg.moae.layers == 6
    g = torch.Generator().manual_seed(6)
    video, images = torch.randn(1, 3, 16, 160, 160, generator=g), torch.randn(3, 3, 160, 160, generator=g)
    arch = {"tokens": 800, "depth": 12, "heads": 12, "moe_layers": range(6, 12), "experts": 8, "top_k": 2,
            "capacity": 1.0}
    with torch.no_grad():
        diffs = {}
        for name, x in (("video", video), ("images", images)):
            ours, theirs = model(x), ref_forward(sd, x, arch)
            diffs[name] = (ours - theirs).abs().max().item()
            assert theirs.abs().max() > 0.5
        dropped = sum(int(layer.dropped) for layer in model.moae_layers())
    print(f"S4D ViT-MoE base: max |logit diff| video {diffs['video']:.2e}, images {diffs['images']:.2e}; "
          f"{dropped} assignments over capacity in the image batch")
    assert diffs["video"] <= 1e-3 and diffs["images"] <= 1e-3
    assert dropped > 0  # the capacity rule was exercised


def test_capacity_order_over_a_batch_of_clips(tmp_path, capsys):
    """Small shapes, 3 clips, factor 0.75: the official dispatch (per expert, tokens in clip-major order,
    rounded down) decides which tokens are dropped; our `priority` policy drops others and the logits move."""
    sd = official_state_dict(dim=96, depth=2, mlp=192, patch=8, moe_layers=(1,), experts=4, bottleneck=24,
                             image_classes=5, seed=3)
    args = dict(S4D_ARGS, model="vitmoe_custom", input_size=32, num_frames=4, moe_layers=1, num_experts=4,
                capacity_factor=0.75)
    code, out = run_import(save_official(tmp_path / "small.pth", sd, **args), tmp_path / "small.pt", capsys)
    assert code == 2 and "cannot tell the number of attention heads of a 96-wide encoder" in out.err
    args["model"] = "vitmoe_small_patch8_32"  # the size in the name: ViT-S has 6 heads
    code, out = run_import(save_official(tmp_path / "small.pth", sd, **args), tmp_path / "small.pt", capsys)
    assert code == 0, out.err
    model = load_model(tmp_path / "small.pt")
    assert model.cfg.num_heads == 6 and model.cfg.moae.capacity_factor == 0.75
    x = torch.randn(3, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    arch = {"tokens": 32, "depth": 2, "heads": 6, "moe_layers": (1,), "experts": 4, "top_k": 2, "capacity": 0.75}
    with torch.no_grad():
        theirs = ref_forward(sd, x, arch)
        assert (model(x) - theirs).abs().max().item() <= 1e-4
        layer = model.moae_layers()[0]
        assert layer.capacity(96) == int(96 * 2 / 4 * 0.75) == 36 and int(layer.dropped) > 0
        layer.policy = "priority"  # ceil, first choices first: other tokens dropped, other logits
        assert (model(x) - theirs).abs().max().item() > 1e-3


def test_learned_pos_embed_is_loaded(tmp_path, capsys):
    sd = official_state_dict(depth=2, learned_tokens=800, seed=4)
    src = save_official(tmp_path / "learned.pth", sd, **dict(VIDEOMAE_ARGS, use_learnable_pos_emb=True))
    code, out = run_import(src, tmp_path / "learned.pt", capsys)
    assert code == 0, out.err
    model = load_model(tmp_path / "learned.pt")
    assert model.cfg.pos_embed == "learned" and torch.equal(model.pos_embed, sd["pos_embed"])
    x = torch.randn(1, 3, 16, 160, 160, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        diff = (model(x) - ref_forward(sd, x, {"tokens": 800, "depth": 2, "heads": 12})).abs().max().item()
    assert diff <= 1e-4


@pytest.mark.parametrize("layout", ["module", "bare"])
def test_deepspeed_and_bare_layouts(layout, tmp_path, capsys):
    """DeepSpeed's {"module": ...} with its args, and a bare state dict without any: the architecture then
    comes from the shapes (heads from the published width) and the published DFER input (160 px, 16 frames)."""
    sd = official_state_dict(dim=384, depth=1, mlp=1536, seed=14)
    obj = {"module": sd, "epoch": 1, "args": argparse.Namespace(**dict(VIDEOMAE_ARGS, model="vit_small_patch16_160"))} \
        if layout == "module" else sd
    torch.save(obj, tmp_path / "file.pth")
    code, out = run_import(tmp_path / "file.pth", tmp_path / "file.pt", capsys)
    assert code == 0, out.err
    if layout == "bare":
        assert "num_heads: the published ViT of width 384" in out.out
        assert "img_size: not in the file: the published DFER setting" in out.out
    model = load_model(tmp_path / "file.pt")
    assert (model.cfg.num_heads, model.cfg.img_size, model.cfg.num_frames) == (6, 160, 16)
    x = torch.randn(2, 3, 16, 160, 160, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        diff = (model(x) - ref_forward(sd, x, {"tokens": 800, "depth": 1, "heads": 6})).abs().max().item()
    print(f"layout {layout}: max |logit diff| {diff:.2e}")
    assert diff <= 1e-4


# ------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("change, expected", [
    (lambda sd, a: sd.__setitem__("blocks.0.gamma_1", torch.ones(768)), r"layer scale .*blocks\.0\.gamma_1"),
    (lambda sd, a: sd.__setitem__("cls_token", torch.zeros(1, 1, 768)), r"a cls token .*cls_token"),
    (lambda sd, a: sd.__setitem__("blocks.0.first_attn.qkv.weight", torch.zeros(3, 3)), r"LGI-Former"),
    (lambda sd, a: (sd.pop("fc_norm.weight"), sd.pop("fc_norm.bias"),
                    sd.__setitem__("norm.weight", torch.ones(768)), sd.__setitem__("norm.bias", torch.zeros(768))),
     r"first-token pooling \(use_mean_pooling=False"),
    (lambda sd, a: sd.__setitem__("pos_embed", torch.zeros(1, 801, 768)),
     r"pos_embed has 801 rows \(one extra row: a cls token\)"),
    (lambda sd, a: a.__setitem__("tubelet_size", 4), r"args\.tubelet_size=4"),
    (lambda sd, a: sd.__setitem__("blocks.0.attn.relative_position_bias_table", torch.zeros(3)),
     r"unexpected entry blocks\.0\.attn\.relative_position_bias_table"),
])
def test_refusals_are_one_line_with_exit_2(change, expected, tmp_path, capsys):
    sd, args = official_state_dict(depth=2, seed=8), dict(VIDEOMAE_ARGS)
    change(sd, args)
    code, out = run_import(save_official(tmp_path / "bad.pth", sd, **args), tmp_path / "out.pt", capsys)
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.err
    assert re.search(expected, lines[0]), lines[0]
    assert "supported:" in lines[0]
    assert not (tmp_path / "out.pt").exists()


class WritesAFile:
    """A pickle that would create `marker` when unpickled by a full (unsafe) loader."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_unsafe_pickles_are_refused_without_running_them(tmp_path, capsys):
    """Only argparse.Namespace passes beside tensors and containers: any other global is refused unrun."""
    sd = official_state_dict(depth=1, seed=9)
    torch.save({"model": sd, "args": WritesAFile(tmp_path / "ran")}, tmp_path / "evil.pth")
    code, out = run_import(tmp_path / "evil.pth", tmp_path / "out.pt", capsys)
    assert code == 2 and "not a readable torch checkpoint" in out.err and len(out.err.strip().splitlines()) == 1
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out.pt").exists()


def test_import_help_and_the_console_script(tmp_path, capsys):
    assert s4d(["--help"]) == 0 and "import" in capsys.readouterr().out
    assert s4d(["import", "--help"]) == 0
    text = capsys.readouterr().out
    assert "SRC" in text and "LGI-Former" in text and "--dynamic-labels" in text
    missing = tmp_path / "none.pth"
    done = subprocess.run([sys.executable, "-m", "s4d.cli", "import", str(missing), "x.pt"], cwd=ROOT, text=True,
                          capture_output=True, timeout=120, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and done.stderr.strip() == f"s4d import: checkpoint {missing} does not exist"


# ------------------------------------------------------------------------- usable without training
SMALL_S4D_ARGS = dict(S4D_ARGS, model="vitmoe_small_patch8_32", input_size=32, num_frames=4, moe_layers=1,
                      num_experts=4, nb_classes=3)


@pytest.mark.slow
def test_imported_s4d_is_evaluated_promoted_and_served(micro_project, tmp_path):
    """The documented commands, no training step: `s4d import` -> `python -m s4d.train.evaluate --checkpoint`
    -> `s4d registry promote FILE` -> `bentoml serve` answers with the imported model."""
    import requests

    from serving_helpers import ServiceProcess

    from serving.inference import full_moae_capacity
    from serving.inputs import encode_compact

    sd = official_state_dict(dim=96, depth=2, mlp=192, patch=8, classes=3, image_classes=3, moe_layers=(1,),
                             experts=4, bottleneck=24, seed=11)
    src = save_official(tmp_path / "checkpoint-best.pth", sd, **SMALL_S4D_ARGS)
    assert s4d(["import", str(src), "imported.pt", "--dynamic-labels", "c0,c1,c2", "--static-labels", "c0,c1,c2"]) == 0
    done = run_module("s4d.train.evaluate", "--checkpoint", "imported.pt", cwd=micro_project)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((micro_project / "artifacts/eval/metrics.json").read_text())
    assert metrics["dynamic"]["n"] == 4 and metrics["static"]["n"] == 8  # the micro test splits

    home = tmp_path / "bentoml"
    done = run_module("s4d.cli", "registry", "promote", "imported.pt", cwd=micro_project,
                      env={"BENTOML_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert "saved s4d-dfer:" in done.stderr and "s4d-champion:" in done.stdout

    clip = np.random.default_rng(0).integers(0, 256, (1, 4, 32, 32, 3), dtype=np.uint8)
    model = load_model(micro_project / "imported.pt")
    full_moae_capacity(model)  # serving gives every token its experts (serving/README.md)
    x = torch.from_numpy(clip).permute(0, 4, 1, 2, 3).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)  # ImageNet, as the official models
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    with ServiceProcess("serving.service:S4DService", home, tmp_path / "serve.log") as service:
        info = requests.get(f"{service.url}/model", timeout=10).json()
        health = requests.get(f"{service.url}/health", timeout=10).json()
        answer = requests.post(f"{service.url}/classify_clips", json={"clips": encode_compact(clip)}, timeout=60)
    assert answer.status_code == 200, answer.text
    # the reference at the precision the server reports (`auto`: bf16 autocast on CPUs with fast bf16 units)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=health["dtype"] == "bfloat16"):
        expected = model((x - mean) / std).float().softmax(dim=-1).numpy()
    assert "c0" in str(info) and np.allclose(np.asarray(answer.json()), expected, atol=1e-4)


def official_pretraining_file(path, dim=384, depth=2, dec_dim=192, dec_depth=1, patch=8, tubelet=2, seed=12):
    """A VideoMAE-layout pretraining file: encoder.* (with its final norm), decoder.*, encoder_to_decoder,
    mask_token; saved by utils.save_model with the pretraining args."""
    enc = official_state_dict(dim=dim, depth=depth, mlp=4 * dim, patch=patch, tubelet=tubelet, seed=seed)
    for key in ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"):
        enc.pop(key)
    enc |= {"norm.weight": torch.ones(dim), "norm.bias": torch.zeros(dim)}
    dec = official_state_dict(dim=dec_dim, depth=dec_depth, mlp=4 * dec_dim, seed=seed + 1)
    dec = {k: v for k, v in dec.items() if k.startswith("blocks.")}
    dec |= {"norm.weight": torch.ones(dec_dim), "norm.bias": torch.zeros(dec_dim),
            "head.weight": torch.randn(3 * tubelet * patch * patch, dec_dim) * 0.02,
            "head.bias": torch.zeros(3 * tubelet * patch * patch)}
    sd = {f"encoder.{k}": v for k, v in enc.items()} | {f"decoder.{k}": v for k, v in dec.items()}
    sd |= {"encoder_to_decoder.weight": torch.randn(dec_dim, dim) * 0.02, "mask_token": torch.zeros(1, 1, dec_dim)}
    save_official(path, sd, model="pretrain_videomae_small_patch8_32", input_size=32, num_frames=4, tubelet_size=2,
                  decoder_depth=dec_depth, mask_ratio=0.9)
    return enc


# params for a classifier that fits official_pretraining_file (the tiny profile otherwise)
FITS_PRETRAINING = ["models.tiny.embed_dim=384", "models.tiny.num_heads=6", "models.tiny.depth=2",
                    "models.tiny.stem=linear", "models.tiny.pos_embed=sincos_flat", "models.tiny.pool=mean"]


def test_finetune_init_goes_through_the_import(tmp_path):
    """A published pretraining file initialises the classifier as the official fine-tuning does: the encoder
    computes what the official encoder computes; MoAE, fc_norm and heads start fresh, the decoder is ignored.
    A classifier with another position table is refused, naming the key."""
    from s4d.config import load_params

    enc = official_pretraining_file(tmp_path / "pretrain.pth")
    params = load_params(ROOT / "params.yaml", [o for o in MICRO_MODEL if o.startswith("models.")] + FITS_PRETRAINING)
    model = S4DClassifier(params.model, 3, 3).eval()
    report = init_classifier(model, tmp_path / "pretrain.pth")
    assert "published VideoMAE / MAE-DFER plain ViT checkpoint" in report.source
    assert "fc_norm.weight" in report.fresh and any(".moe_layer." in k for k in report.fresh)
    assert "decoder.mask_token" in report.ignored and "norm.weight" in report.ignored
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        tokens = model.embed(x)
        for block in model.blocks:
            tokens = block(tokens)  # MoAE starts at zero output
        assert torch.allclose(tokens, ref_tokens(enc, x, {"tokens": 32, "depth": 2, "heads": 6}), atol=1e-4)
    wrong = load_params(ROOT / "params.yaml", [o for o in MICRO_MODEL if o.startswith("models.")] +
                        FITS_PRETRAINING[:-2])  # the default sincos3d table
    with pytest.raises(CheckpointError, match=r"trained with pos_embed=sincos_flat but the model has "
                                              r"pos_embed=sincos3d: set models.<profile>.pos_embed: sincos_flat"):
        init_classifier(S4DClassifier(wrong.model, 3, 3), tmp_path / "pretrain.pth")


@pytest.mark.slow
def test_finetune_stage_from_a_published_pretraining(micro_project):
    official_pretraining_file(micro_project / "pretrain.pth")
    done = run_module("s4d.train.finetune", "finetune.init=pretrain.pth", "finetune.epochs=1", *MICRO_MODEL,
                      *FITS_PRETRAINING, cwd=micro_project)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (micro_project / "artifacts/finetune/init_report.txt").read_text()
    assert "published VideoMAE / MAE-DFER plain ViT checkpoint pretrain.pth: loaded" in report
