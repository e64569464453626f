"""Published checkpoints (VideoMAE, S4D, MAE-DFER's plain ViT) read as the official code writes them and
converted to our names and config, so that our model computes what the official model computes in eval.

A file is `utils.save_model`'s {"model": state_dict, "optimizer", "epoch", "scaler", "args": Namespace},
a DeepSpeed {"module": ...}, a bare state dict, or a pretraining file (`encoder.*`, `decoder.*`,
`encoder_to_decoder.weight`, `mask_token`). It is read with `torch.load(weights_only=True)`, letting
through `argparse.Namespace` and nothing else. The architecture comes from the training args when the file
has them and from tensor shapes otherwise; what neither tells (image size, frames, top-k without args) takes
the published DFER setting and is reported as such.

Name differences: the official attention has `q_bias` + `v_bias` and no k bias (a k bias shifts every logit of
a query equally, so zero is exact); experts are one module each (`moe_layer.experts.E.fc1`) where we stack
them; heads are `head` (VideoMAE) or `head.video` / `head.image` (S4D), ours `head_dynamic` / `head_static`.

Architectures are tried in the order of ARCHITECTURES; each has a detector and a converter. LGI-Former
(MAE-DFER's released models) converts through s4d/models/lgi.py.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch

from s4d.config import MoAEConfig, ModelConfig
from s4d.models.lgi import MAEDFERError, convert_maedfer

# Heads of the published ViT sizes (model name part, else encoder width): huge is 1280 wide with 16 heads.
HEADS_BY_SIZE = {"small": 6, "base": 12, "large": 16, "huge": 16}
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 16}
# What the published DFER models (S4D, MAE-DFER) were trained with, for files that do not say.
DFER_DEFAULTS = {"img_size": 160, "num_frames": 16, "top_k": 2, "capacity_factor": 1.0}


class PublishedFormatError(ValueError):
    """A published file that cannot be read or represented (checkpoint.py reports it as CheckpointError)."""


@dataclass
class Published:
    path: str
    state_dict: dict[str, torch.Tensor]
    args: dict  # the training args (the Namespace's fields); {} when the file has none
    other: list[str]  # top-level entries beside the state dict (optimizer, epoch, ...)


@dataclass
class Converted:
    architecture: str
    kind: str  # "classifier" or "mae"
    cfg: ModelConfig
    num_dynamic_classes: int
    num_static_classes: int
    state_dict: dict[str, torch.Tensor]  # our names
    ignored: dict[str, str] = field(default_factory=dict)  # file entry -> why it is not used
    sources: dict[str, str] = field(default_factory=dict)  # config field -> where its value came from


# ---------------------------------------------------------------------------------------------- read
def read_published(path: str | Path, obj=None) -> Published:
    """The state dict and training args of a published file (`obj`: the already loaded file, if any)."""
    path = str(path)
    if obj is None:
        obj = load_file(path)
    other: list[str] = []
    sd = obj
    if isinstance(obj, dict):
        for key in ("model", "module", "state_dict"):
            if isinstance(obj.get(key), dict):
                sd, other = obj[key], [k for k in obj if k != key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise PublishedFormatError(f"{path}: no state dict found (looked at the top level and under 'model', "
                                   f"'module', 'state_dict')")
    args = obj.get("args") if isinstance(obj, dict) else None
    return Published(path, dict(sd), vars(args) if isinstance(args, argparse.Namespace) else
                     dict(args) if isinstance(args, dict) else {}, other)


def load_file(path: str | Path):
    """torch.load with weights only, plus argparse.Namespace (the official `args`); never full unpickling."""
    path = Path(path)
    if not path.is_file():
        raise PublishedFormatError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PublishedFormatError(f"{path} is not a readable torch checkpoint (tensors, plain containers and "
                                   f"argparse.Namespace only): {first}") from None


# ------------------------------------------------------------------------------------------- detect
def is_lgi_former(p: Published) -> bool:
    return p.args.get("attn_type") == "local_global" or any(
        re.search(r"\.(first|second|third)_attn\.", k) for k in p.state_dict)


def is_s4d_moe(p: Published) -> bool:
    return any(".moe_layer." in k for k in p.state_dict) or "moe" in str(p.args.get("model", ""))


def is_plain_vit(p: Published) -> bool:
    return any(k.endswith("patch_embed.proj.weight") for k in p.state_dict)


# name -> (detector, converter); the first detector that matches decides. A converter of None is refused.
ARCHITECTURES: dict[str, tuple[Callable[[Published], bool], Optional[Callable[[Published], Converted]]]] = {}
SUPPORTED = ("VideoMAE / MAE-DFER plain ViT (fine-tuned or pretrained), MAE-DFER LGI-Former (fine-tuned or "
             "pretrained) and S4D ViT-MoE (moe_adapters)")


def detect(p: Published) -> str:
    for name, (matches, _) in ARCHITECTURES.items():
        if matches(p):
            return name
    raise PublishedFormatError(f"{p.path}: not a known published architecture (no patch_embed.proj.weight); "
                               f"supported: {SUPPORTED}")


def convert(p: Published) -> Converted:
    name = detect(p)
    converter = ARCHITECTURES[name][1]
    if converter is None:
        raise PublishedFormatError(f"{p.path}: {name} checkpoints are not supported yet; supported: {SUPPORTED}")
    return converter(p)


# ------------------------------------------------------------------------------------------ convert
def convert_vit(p: Published) -> Converted:
    """VideoMAE / MAE-DFER plain ViT and S4D ViT-MoE, fine-tuning or pretraining layout."""
    sd, args, path = p.state_dict, p.args, p.path
    refuse = lambda what: PublishedFormatError(f"{path}: {what}; supported: {SUPPORTED}")  # noqa: E731
    for pattern, what in ((r"\.gamma_[12]$", "layer scale (gamma_1/gamma_2, init_values > 0)"),
                          (r"(^|\.)cls_token$", "a cls token"),
                          (r"\.lora_", "LoRA experts (moe_type moe_lora)")):
        if hits := [k for k in sd if re.search(pattern, k)]:
            raise refuse(f"{what} is not supported ({hits[0]})")
    moe_type = args.get("moe_type")
    if is_s4d_moe(p) and moe_type not in (None, "moe_adapters"):
        raise refuse(f"moe_type {moe_type!r} is not supported (only moe_adapters)")

    # Layout: pretraining files carry the encoder under `encoder.` (or `backbone.`) beside a decoder.
    prefix = next((pre for pre in ("encoder.", "backbone.") if f"{pre}patch_embed.proj.weight" in sd), "")
    if not prefix and "patch_embed.proj.weight" not in sd:
        raise refuse("no patch_embed.proj.weight (is this a ViT checkpoint?)")
    enc = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    rest = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    pretraining = bool(prefix)

    sources: dict[str, str] = {}
    proj = enc["patch_embed.proj.weight"]  # (dim, channels, tubelet, patch, patch)
    if proj.ndim != 5 or proj.shape[1] != 3 or proj.shape[3] != proj.shape[4]:
        raise refuse(f"patch_embed.proj.weight has shape {tuple(proj.shape)}; expected (dim, 3, tubelet, p, p)")
    dim, tubelet, patch = proj.shape[0], proj.shape[2], proj.shape[3]
    sources.update(embed_dim="shape of patch_embed.proj.weight", tubelet_size="shape of patch_embed.proj.weight",
                   patch_size="shape of patch_embed.proj.weight")
    if "tubelet_size" in args and int(args["tubelet_size"]) != tubelet:
        raise refuse(f"args.tubelet_size={args['tubelet_size']} but patch_embed.proj.weight has tubelet {tubelet}")
    blocks = sorted({int(m[1]) for k in enc if (m := re.match(r"blocks\.(\d+)\.", k))})
    if not blocks or blocks != list(range(len(blocks))):
        raise refuse(f"encoder blocks {blocks[:3]}... are not numbered 0..depth-1")
    depth = len(blocks)
    mlp_ratio = enc["blocks.0.mlp.fc1.weight"].shape[0] / dim
    model_name = str(args.get("model", ""))
    size = next((s for s in HEADS_BY_SIZE if f"_{s}_" in f"_{model_name}_"), None)
    if size:
        heads, sources["num_heads"] = HEADS_BY_SIZE[size], f"args.model {model_name}"
    elif dim in HEADS_BY_WIDTH:
        heads, sources["num_heads"] = HEADS_BY_WIDTH[dim], f"the published ViT of width {dim}"
    else:
        raise refuse(f"cannot tell the number of attention heads of a {dim}-wide encoder")

    img_size, sources["img_size"] = _arg_or(args, "input_size", model_name, DFER_DEFAULTS["img_size"])
    if "num_frames" in args:
        frames = int(args["num_frames"]) * int(args.get("num_segments") or 1)
        sources["num_frames"] = "args.num_frames"
    else:
        frames, sources["num_frames"] = DFER_DEFAULTS["num_frames"], "not in the file: the published DFER setting"

    checks = (("num_heads", heads, dim), ("img_size", patch, img_size), ("num_frames", tubelet, frames))
    for what, value, unit in checks:
        if unit % value:
            raise refuse(f"{what}: {unit} is not a multiple of {value} ({sources[what]})")
    tokens = frames // tubelet * (img_size // patch) ** 2
    if "pos_embed" in enc:
        pos_embed, rows = "learned", enc["pos_embed"].shape[-2]
        if rows != tokens:
            hint = " (one extra row: a cls token)" if rows == tokens + 1 else ""
            raise refuse(f"pos_embed has {rows} rows{hint} but {frames} frames of {img_size} px with tubelet "
                         f"{tubelet} and patch {patch} make {tokens} tokens")
        sources["pos_embed"] = "pos_embed in the file (use_learnable_pos_emb)"
    else:
        pos_embed, sources["pos_embed"] = "sincos_flat", "not in the file: the official fixed sin-cos table"

    if pretraining:
        pool = "mean"  # unused by the MAE; the encoder's final norm is kept
        if "norm.weight" not in enc:
            raise refuse("the pretraining encoder has no final norm (encoder.norm.weight)")
    elif "fc_norm.weight" in enc:
        pool, sources["pool"] = "mean", "fc_norm in the file (use_mean_pooling)"
        if "norm.weight" in enc:
            raise refuse("both norm and fc_norm are present")
    else:
        raise refuse("first-token pooling (use_mean_pooling=False: norm, no fc_norm) is not supported")

    moae, moe_blocks = MoAEConfig(layers=0), sorted({int(m[1]) for k in enc
                                                     if (m := re.match(r"blocks\.(\d+)\.moe_layer\.", k))})
    if moe_blocks:
        moae, moe_sources = _moae_config(enc, args, moe_blocks, depth, refuse)
        sources.update(moe_sources)

    cfg = ModelConfig(img_size=img_size, patch_size=patch, num_frames=frames, tubelet_size=tubelet, embed_dim=dim,
                      depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, drop_path=float(args.get("drop_path", 0.1)),
                      pos_embed=pos_embed, stem="linear", pool=pool, moae=moae)
    ours = _rename_encoder(enc, refuse)
    ignored = {key: "training state, not the model" for key in p.other}

    if pretraining:
        cfg, decoder = _decoder(rest, cfg, args, refuse, sources)
        ours = {f"encoder.{k}": v for k, v in ours.items()} | decoder
        return Converted(_name(p, moe_blocks), "mae", cfg, 0, 0, ours, ignored, sources)

    heads_sd = {k: v for k, v in ours.items() if k.startswith("head")}
    if not heads_sd:
        raise refuse("no classification head (head.weight or head.video.weight)")
    num_dynamic = ours["head_dynamic.weight"].shape[0]
    num_static = ours["head_static.weight"].shape[0] if "head_static.weight" in ours else 0
    if rest:
        raise refuse(f"unexpected entries {sorted(rest)[:4]}")
    return Converted(_name(p, moe_blocks), "classifier", cfg, num_dynamic, num_static, ours, ignored, sources)


def _name(p: Published, moe_blocks: list[int]) -> str:
    return "S4D ViT-MoE" if moe_blocks else "VideoMAE / MAE-DFER plain ViT"


def _arg_or(args: dict, key: str, model_name: str, default: int) -> tuple[int, str]:
    if key in args:
        return int(args[key]), f"args.{key}"
    if m := re.search(r"_(\d+)$", model_name):
        return int(m[1]), f"args.model {model_name}"
    return default, "not in the file: the published DFER setting"


def _moae_config(enc: dict, args: dict, moe_blocks: list[int], depth: int, refuse) -> tuple[MoAEConfig, dict]:
    first = moe_blocks[0]
    if moe_blocks != list(range(first, depth)):
        raise refuse(f"MoE on blocks {moe_blocks}: only the last blocks of the encoder can carry MoAE here")
    listed = args.get("moe_layers")
    if listed is not None:
        wanted = list(range(int(listed), depth)) if isinstance(listed, int) else sorted(int(i) for i in listed)
        if wanted != moe_blocks:
            raise refuse(f"args.moe_layers={listed} but the state dict has MoE on blocks {moe_blocks}")
    experts = sorted({int(m[1]) for k in enc if (m := re.match(rf"blocks\.{first}\.moe_layer\.experts\.(\d+)\.", k))})
    if not experts or experts != list(range(len(experts))):
        raise refuse(f"blocks.{first}.moe_layer.experts are not numbered 0..E-1 ({experts[:3]}...)")
    if "num_experts" in args and int(args["num_experts"]) != len(experts):
        raise refuse(f"args.num_experts={args['num_experts']} but the state dict has {len(experts)} experts")
    bottleneck = enc[f"blocks.{first}.moe_layer.experts.0.fc1.weight"].shape[0]
    sources = {"moae.layers": "MoE blocks in the state dict", "moae.experts": "experts in the state dict",
               "moae.bottleneck": "shape of moe_layer.experts.0.fc1.weight",
               "moae.capacity": "the published S4D dispatch (floor, token order)"}
    top_k, sources["moae.top_k"] = (int(args["top_k"]), "args.top_k") if "top_k" in args else \
        (DFER_DEFAULTS["top_k"], "not in the file: the paper's top-2")
    factor, sources["moae.capacity_factor"] = (float(args["capacity_factor"]), "args.capacity_factor") \
        if "capacity_factor" in args else (DFER_DEFAULTS["capacity_factor"], "not in the file: the official default")
    if top_k > len(experts):
        raise refuse(f"top_k {top_k} exceeds the {len(experts)} experts")
    return MoAEConfig(layers=len(moe_blocks), experts=len(experts), top_k=top_k, bottleneck=bottleneck,
                      capacity_factor=factor, capacity="official"), sources


def _rename_encoder(enc: dict, refuse) -> dict:
    """Official encoder / classifier names -> ours; any key left unknown is refused."""
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, torch.Tensor]] = {}
    known = re.compile(r"patch_embed\.proj\.(weight|bias)|pos_embed|norm\.(weight|bias)|fc_norm\.(weight|bias)|"
                       r"blocks\.\d+\.(norm[12]\.(weight|bias)|attn\.qkv\.weight|attn\.proj\.(weight|bias)|"
                       r"mlp\.fc[12]\.(weight|bias)|moe_layer\.router\.(topkroute|noise)_linear\.(weight|bias))")
    for key, value in enc.items():
        if m := re.match(r"(blocks\.\d+\.attn\.)(q_bias|v_bias)$", key):
            if m[2] == "q_bias":
                out[m[1] + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), enc[m[1] + "v_bias"]])
        elif m := re.match(r"(blocks\.\d+\.moe_layer\.experts)\.(\d+)\.(fc[12]\.(?:weight|bias))$", key):
            experts.setdefault(f"{m[1]}.{m[3]}", {})[int(m[2])] = value
        elif key in ("head.weight", "head.bias", "head.video.weight", "head.video.bias"):
            out["head_dynamic." + key.rsplit(".", 1)[1]] = value
        elif key in ("head.image.weight", "head.image.bias"):
            out["head_static." + key.rsplit(".", 1)[1]] = value
        elif known.fullmatch(key):
            out[key] = value
        else:
            raise refuse(f"unexpected entry {key} ({tuple(value.shape)})")
    for key, per_expert in experts.items():
        out[key] = torch.stack([per_expert[e] for e in sorted(per_expert)])
    for key in [k for k in out if k.endswith("attn.qkv.weight")]:  # qkv_bias=False: the bias is zero
        bias = key[: -len("weight")] + "bias"
        out.setdefault(bias, torch.zeros(out[key].shape[0], dtype=out[key].dtype))
    return out


def _decoder(rest: dict, cfg: ModelConfig, args: dict, refuse, sources: dict) -> tuple[ModelConfig, dict]:
    """A pretraining file's decoder -> our MAE decoder names (ours keeps the mask token in the decoder)."""
    if "encoder_to_decoder.weight" not in rest or "mask_token" not in rest:
        raise refuse("a pretraining encoder without encoder_to_decoder.weight / mask_token")
    dec = {k[len("decoder."):]: v for k, v in rest.items() if k.startswith("decoder.")}
    unknown = sorted(set(rest) - {"encoder_to_decoder.weight", "mask_token"} - {f"decoder.{k}" for k in dec})
    if unknown:
        raise refuse(f"unexpected entries {unknown[:4]}")
    dec_dim = rest["encoder_to_decoder.weight"].shape[0]
    dec_depth = len({int(m[1]) for k in dec if (m := re.match(r"blocks\.(\d+)\.", k))})
    heads = int(args["decoder_num_heads"]) if "decoder_num_heads" in args else dec_dim // 64
    sources["decoder_heads"] = "args.decoder_num_heads" if "decoder_num_heads" in args else "decoder width / 64"
    if heads < 1 or dec_dim % heads:
        raise refuse(f"decoder_heads: {heads} does not divide the decoder width {dec_dim}")
    expected = 3 * cfg.tubelet_size * cfg.patch_size ** 2
    if dec.get("head.weight") is None or dec["head.weight"].shape[0] != expected:
        raise refuse(f"decoder.head.weight should predict {expected} values per token")
    renamed = _rename_encoder({k: v for k, v in dec.items() if not k.startswith("head.")}, refuse)
    out = {f"decoder.{k}": v for k, v in renamed.items()}
    out |= {"decoder.head.weight": dec["head.weight"], "decoder.head.bias": dec["head.bias"],
            "decoder.mask_token": rest["mask_token"], "encoder_to_decoder.weight": rest["encoder_to_decoder.weight"]}
    return replace(cfg, decoder_dim=dec_dim, decoder_depth=dec_depth, decoder_heads=heads), out


def convert_lgi(p: Published) -> Converted:
    """MAE-DFER's released LGI-Former (fine-tuned or pretrained), through lgi.py's converter."""
    try:
        c = convert_maedfer(p.state_dict, p.args)
    except MAEDFERError as e:
        raise PublishedFormatError(f"{p.path}: {e}; supported: {SUPPORTED}") from None
    return Converted("LGI-Former (MAE-DFER)", c.kind, c.model_config, c.num_dynamic_classes, 0, c.state_dict,
                     sources={"model_config": "args (MAE-DFER run arguments)"})


ARCHITECTURES.update({
    "LGI-Former (MAE-DFER)": (is_lgi_former, convert_lgi),
    "S4D ViT-MoE": (is_s4d_moe, convert_vit),
    "VideoMAE / MAE-DFER plain ViT": (is_plain_vit, convert_vit),
})
