"""Typed configuration: `params.yaml` loaded into structured dataclasses.

Every hyperparameter lives in params.yaml. Loading merges it onto these dataclasses, so an unknown key or
a wrong type fails at load time, and `check_ranges` rejects out-of-range values. Each error names the
full key (e.g. `models.tiny.moae.top_k`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class InputError(ValueError):
    """A file the user gave (params, split lists, manifests) that cannot be read: the message names it."""


class ConfigError(InputError):
    """A params file or override that does not fit the schema."""


def between(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple | None = None):
    """A dataclass field with an allowed range (inclusive) or a fixed set of choices."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


# ---------------------------------------------------------------------------------------------- model
@dataclass
class MoAEConfig:
    layers: int = between(3, 0, 64)  # MoAE on the last `layers` blocks; 0 = vanilla multi-task (no MoAE)
    experts: int = between(8, 1, 64)  # bottleneck adapters per MoAE layer
    top_k: int = between(2, 1, 8)  # experts each token is routed to (noisy top-k while training)
    bottleneck: int = between(48, 1, 4096)  # adapter hidden width
    capacity_factor: float = between(1.25, 0.1, 16.0)  # slots per expert = factor * tokens * top_k / experts
    # priority: slots rounded up, every first choice served before any second choice; official: rounded down,
    # each expert serves its tokens in batch order (the published S4D code; `s4d import` sets it for S4D files)
    capacity: str = between("priority", choices=("priority", "official"))  # how slots are counted and filled


@dataclass
class LGIConfig:
    region: List[int] = field(default_factory=lambda: [2, 4, 4])  # local region in tokens (t, h, w)
    tokens: int = between(1, 1, 64)  # learnable representative tokens per region (MAE-DFER: 1)


@dataclass
class ModelConfig:
    img_size: int = between(64, 16, 1024)  # square input frames, pixels
    patch_size: int = between(8, 2, 64)  # tubelet height and width, pixels
    num_frames: int = between(8, 2, 128)  # frames per clip
    tubelet_size: int = between(2, 1, 8)  # frames per tubelet; an image is repeated to one tubelet
    embed_dim: int = between(192, 16, 4096)  # encoder width
    depth: int = between(6, 1, 64)  # encoder blocks
    num_heads: int = between(3, 1, 64)
    mlp_ratio: float = between(4.0, 0.5, 16.0)
    drop_path: float = between(0.1, 0.0, 0.9)  # stochastic depth at the last block (fine-tuning only)
    # sincos3d: separate time/height/width channels; sincos_flat: the published VideoMAE / MAE-DFER / S4D
    # table over the flattened token index (sin/cos interleaved); learned: a trained table stored with the weights.
    pos_embed: str = between("sincos3d", choices=("sincos3d", "sincos_flat", "learned"))
    # hmlp: a patch-local 3-stage MLP stem (DeiT III) with which small ViTs learn from little data in minutes.
    stem: str = between("hmlp", choices=("linear", "hmlp"))  # tubelet embedding: linear (published checkpoints) or hmlp
    # mean: the paper's (VideoMAE) average over tokens. max: the strongest response of each channel over all
    # tokens; a small expression cue (a mouth corner, a brow) is not diluted by the many tokens that only show
    # who the person is, so a tiny ViT leaves its early loss plateau in tens of steps rather than hundreds.
    pool: str = between("max", choices=("mean", "max"))  # token pooling before the heads: mean (paper) or max
    # MAE decoder (pretraining only). The paper's is half the encoder width (384 of 768); its depth barely moves
    # fine-tuning accuracy (MAE, He et al. 2022, Table 1a: 1 block 84.8, 8 blocks 84.9), and over all positions
    # it costs more than the encoder on the 5 % visible tokens, so the small profile keeps one block.
    decoder_dim: int = between(96, 16, 4096)
    decoder_depth: int = between(1, 1, 32)
    decoder_heads: int = between(3, 1, 64)
    moae: MoAEConfig = field(default_factory=MoAEConfig)
    # vit: global space-time attention. lgi: MAE-DFER's LGI-Former (attention inside regions, representative
    # tokens attend globally and back); the classifier pools the representative tokens.
    encoder: str = between("vit", choices=("vit", "lgi"))  # vit, or lgi (MAE-DFER's LGI-Former)
    lgi: LGIConfig = field(default_factory=LGIConfig)  # used when encoder is lgi


def tiny_profile() -> ModelConfig:
    return ModelConfig()


def base_profile() -> ModelConfig:
    """The paper: ViT-B/16 at 160 px, 16 frames, decoder 4 x 384, MoAE 8 experts top-2 on blocks 6-11."""
    return ModelConfig(
        img_size=160, patch_size=16, num_frames=16, tubelet_size=2, embed_dim=768, depth=12, num_heads=12,
        drop_path=0.1, stem="linear", pool="mean", decoder_dim=384, decoder_depth=4, decoder_heads=6,
        moae=MoAEConfig(layers=6, experts=8, top_k=2, bottleneck=192), lgi=LGIConfig(region=[2, 5, 10]),
    )



# ------------------------------------------------------------------------------------- synthetic data
@dataclass
class SyntheticConfig:
    """The procedural expression dataset that the `generate` stage renders (s4d.data.synthetic)."""
    seed: int = 0  # every sample is seeded from (seed, kind, index): same seed -> same bytes
    root: str = "data/synthetic"  # output folder (videos/, images/, meta.json)
    # videos (DFEW layout)
    frame_size: int = between(96, 16, 1024)  # rendered square video frame, pixels
    num_frames: int = between(16, 1, 512)  # frames per clip (all clips the same length)
    video_identities: int = between(80, 1, 100000)  # people in the videos
    clips_per_identity: int = between(6, 1, 1000)  # clips per video identity (any expression mix)
    partial_clip_rate: float = between(0.25, 0.0, 1.0)  # expressive clips whose expression spans part of the clip
    min_intensity: float = between(0.85, 0.0, 1.0)  # weakest apex intensity of an expression (1 = full prototype)
    lookalike_blend: float = between(0.2, 0.0, 1.0)  # most an expression blends towards its look-alike
    apex_start_rate: float = between(0.15, 0.0, 1.0)  # expressive clips at the apex from frame 1 (no onset)
    face_scale: float = between(0.45, 0.05, 1.0)  # face half-width / frame width (aligned crops)
    # static images (RAF-DB layout)
    image_size: int = between(96, 16, 1024)  # rendered square still image, pixels
    image_identity_ratio: float = between(10.0, 0.0, 1000.0)  # image identities per video identity
    images_per_identity: int = between(2, 1, 1000)  # stills per image identity
    # the static source vs the video source, as web stills vs movie clips (docs/synthetic.md, Conditions)
    domain_gap: float = between(1.0, 0.0, 1.0)  # scales the stills' shifts in light, sharpness, pose, framing; 0 = none
    static_label_noise: float = between(0.1, 0.0, 1.0)  # share of stills whose face shows another class than the label
    # unlabelled pretraining pool (<root>/pool): new people, clips and stills rendered like the labelled ones,
    # no label written anywhere; only pretraining reads it (pretrain.data)
    pool_identity_ratio: float = between(1.5, 0.0, 1000.0)  # pool identities per labelled identity (videos + images)
    pool_clips_per_identity: int = between(1, 0, 1000)  # clips per pool identity
    pool_images_per_identity: int = between(1, 0, 1000)  # stills per pool identity
    # identity-disjoint splits (same fractions for videos and images)
    val_fraction: float = between(0.1, 0.0, 0.9)  # identities in val (inside the train lists)
    test_fraction: float = between(0.2, 0.0, 0.9)  # identities in test
    # > 0: people in the test split, added to the identities above (which then hold train and val only)
    test_identities: int = between(0, 0, 100000)  # video test identities; 0 = test_fraction of video_identities
    image_test_identities: int = between(0, 0, 1000000)  # image test identities; 0 = test_fraction of them
    # nuisances
    supersample: int = between(2, 1, 8)  # draw at this multiple of the output size, then INTER_AREA down (anti-aliasing)
    occlusion_rate: float = between(0.02, 0.0, 1.0)  # share of samples with a hand/object in front of the face
    glasses_rate: float = between(0.25, 0.0, 1.0)  # share of identities wearing glasses
    max_yaw_deg: float = between(8.0, 0.0, 90.0)  # head yaw reaches about +-75 % of this; pitch about half, roll a fifth
    noise_std: float = between(2.0, 0.0, 255.0)  # upper bound of sensor noise, in 0..255 grey levels
    max_blur_sigma: float = between(0.4, 0.0, 20.0)  # upper bound of defocus blur, output pixels
    jpeg_quality_min: int = between(80, 1, 95)  # each sample is written at a quality drawn from [jpeg_quality_min, 95]


# ----------------------------------------------------------------------------------------------- data
@dataclass
class DatasetConfig:
    reader: str = "synthetic_video"  # dfew, ferv39k, mafw, rafdb, affectnet, affectnet8, ferplus, folder, synthetic_*
    root: str = "data/synthetic/videos"
    fold: int = between(1, 1, 5)  # for 5-fold datasets (DFEW, MAFW)


@dataclass
class PoolConfig:
    """Unlabelled clips and stills that only pretraining reads (prepared into pool_dynamic.csv, pool_static.csv)."""
    # synthetic_pool: the generator's <synthetic.root>/pool; folder: root/videos/ (video files or frame folders)
    # and root/images/ (stills), any depth, no labels; none: no pool
    reader: str = between("none", choices=("synthetic_pool", "folder", "none"))
    root: str = "data/synthetic/pool"


@dataclass
class DataConfig:
    dynamic: DatasetConfig = field(default_factory=DatasetConfig)
    static: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(reader="synthetic_image", root="data/synthetic/images"))
    pool: PoolConfig = field(default_factory=PoolConfig)
    prepared_dir: str = "artifacts/prepared"
    face_size: int = between(112, 32, 1024)  # aligned face crops written for raw videos, pixels
    val_fraction: float = between(0.15, 0.0, 0.5)  # carved from train when the dataset has no val split
    seed: int = 0  # for the val carve
    frame_stride: int = between(2, 1, 16)  # a clip takes every n-th frame
    # ours: short side to img_size then centre crop, test clips spread from the first to the last frame.
    # official: the published S4D / VideoMAE code's (frames squashed to img_size x img_size, test clips on the
    # stride grid from frame 0, stills squashed; fine-tuning stills squashed to 1.2 x img_size then a random crop).
    transforms: str = between("ours", choices=("ours", "official"))  # fine-tuning and evaluation inputs
    workers: int = between(2, 0, 64)  # data loader / face detection processes
    balanced_sampling: bool = False  # fine-tuning draws each class equally often


@dataclass
class ValidateConfig:
    min_class_share: float = between(0.01, 0.0, 1.0)  # real DFEW has 1.2 % disgust
    max_class_share: float = between(0.6, 0.0, 1.0)
    min_size: int = between(32, 1, 4096)  # smallest frame height/width, pixels


# ------------------------------------------------------------------------------------------- training
@dataclass
class PretrainConfig:
    epochs: int = between(4, 1, 10000)  # an epoch is one pass over the training videos
    batch_size: int = between(16, 1, 4096)  # videos per rank and step
    image_batch_size: int = between(64, 1, 16384)  # per rank; images are 1 tubelet, so they are cheap
    image_step_share: float = between(0.5, 0.0, 1.0)  # share of steps that are image steps
    video_mask_ratio: float = between(0.95, 0.0, 0.99)  # share of video tokens hidden (the paper's)
    image_mask_ratio: float = between(0.9, 0.0, 0.99)  # share of image tokens hidden (the paper's)
    # what the MAE sees: labelled (the train split of the labelled sets; their labels unused), pool (the
    # unlabelled pool, as the paper pretrains on VoxCeleb2 + AffectNet), or both
    data: str = between("labelled", choices=("labelled", "pool", "both"))
    tube_masking: bool = False  # hide the same patches in every frame (else random per token)
    # pixels+motion (MAE-DFER): per tubelet, the first frame's normalised pixels and the later frames'
    # differences to it; images keep the pixel target (a still has no motion).
    target: str = between("pixels", choices=("pixels", "pixels+motion"))  # video reconstruction target
    motion_weight: float = between(0.5, 0.0, 1.0)  # loss = (1 - w) appearance + w motion (0.5: MAE-DFER's script)
    # How each patch's pixels are normalised before they become the target: its own key, not a `target` value,
    # because it applies to both targets (pixels and pixels+motion) and to images. normalised: per patch and
    # channel to zero mean, unit std (VideoMAE); floored: the std floored at target_std_floor grey levels, so a
    # flat patch's JPEG and sensor noise are not blown up to unit variance; raw: the input pixels.
    target_norm: str = between("normalised", choices=("normalised", "floored", "raw"))
    target_std_floor: float = between(4.0, 0.01, 255.0)  # floored: smallest per-patch std, grey levels 0..255
    # Linear probe after pretraining: ridge on frozen pooled features of at most this many labelled train
    # samples per modality, scored on val, beside the same probe on the random initial encoder; 0 = no probe.
    # Measured at tiny: 128 -> 12 s in a quiet make repro; on the shared 2-core machine at load 7-10 (before the
    # 1 x 96 decoder) 128 -> 110 s wall / 52 CPU s, 256 -> 242 s / 91.
    probe_samples: int = between(128, 0, 10**6)
    base_lr: float = between(0.024, 0.0, 1.0)  # lr = base_lr * global_batch / 256
    min_lr: float = between(1e-6, 0.0, 1.0)
    weight_decay: float = between(0.05, 0.0, 1.0)
    warmup_epochs: float = between(1.0, 0.0, 1000.0)
    clip_grad: float = between(1.0, 0.0, 1000.0)
    zero_stage: int = between(2, 0, 3)
    nproc_per_node: int = between(1, 1, 64)  # > 1: the stage starts torchrun with this many processes
    precision: str = between("auto", choices=("auto", "bf16", "fp32"))  # auto: bf16 on CUDA that has it
    checkpoint_every: int = between(200, 1, 10**9)  # steps between resumable checkpoints
    keep_last: int = between(2, 1, 1000)  # checkpoints kept
    seed: int = 0


@dataclass
class FinetuneConfig:
    # scratch on the embedded default: the minute of MAE that `dvc repro` affords leaves every token of an image
    # holding the same image-wide average (rms 12 vs 1 at random init), a worse start than random (docs/recipe.md).
    init: str = "scratch"  # "pretrain" (our MAE output), "scratch", or a path to a checkpoint file
    epochs: int = between(16, 1, 10000)  # an epoch is one pass over the training videos
    batch_size: int = between(8, 1, 4096)  # videos per dynamic step
    image_batch_size: int = between(16, 1, 16384)  # images per static step
    static_share: float = between(0.5, 0.0, 1.0)  # share of steps on static data; 0 = video-only baseline
    base_lr: float = between(0.032, 0.0, 1.0)  # lr = base_lr * batch_size / 256
    min_lr: float = between(1e-6, 0.0, 1.0)
    weight_decay: float = between(0.05, 0.0, 1.0)
    layer_decay: float = between(0.85, 0.0, 1.0)  # LR scale per block below the head (layer-wise decay)
    warmup_epochs: float = between(1.0, 0.0, 1000.0)
    clip_grad: float = between(1.0, 0.0, 1000.0)
    balance_weight: float = between(0.01, 0.0, 10.0)  # MoAE load-balancing loss weight
    label_smoothing: float = between(0.1, 0.0, 0.5)
    crop_scale: float = between(0.7, 0.05, 1.0)  # random resized crop keeps at least this share of the area
    rand_augment: bool = False  # RandAugment (2 ops, magnitude 9), the same ops on every frame of a clip
    erase_prob: float = between(0.0, 0.0, 1.0)  # random erasing (timm) per frame
    mixup: float = between(0.0, 0.0, 10.0)  # mixup alpha (0 = off)
    cutmix: float = between(0.0, 0.0, 10.0)  # cutmix alpha (0 = off)
    patience: int = between(6, 1, 10000)  # epochs without val improvement before stopping
    select_metric: str = between("uar", choices=("uar", "war"))  # the val metric that picks the checkpoint
    precision: str = between("auto", choices=("auto", "bf16", "fp32"))  # also used by evaluate
    seed: int = 0
    nproc_per_node: int = between(1, 1, 64)  # > 1: fine-tuning and evaluation start this many processes (s4d.train.launch)
    micro_batch: int = between(0, 0, 4096)  # most samples one forward takes (gradient accumulation); 0 = batch / ranks
    checkpoint_every: int = between(50, 1, 10**9)  # steps between resumable checkpoints (and one after each epoch)
    keep_last: int = between(2, 1, 1000)  # resumable checkpoints kept


@dataclass
class EvaluateConfig:
    clips: int = between(2, 1, 32)  # temporal views per video
    crops: int = between(1, 1, 3)  # spatial views per clip (1 = centre; 3 = left/centre/right)
    batch_size: int = between(16, 1, 4096)  # videos per forward (each with clips x crops views)


@dataclass
class LaunchConfig:
    timeout_s: float = between(60.0, 5.0, 86400.0)  # longest a rank waits in a collective (a lost node, a cut link)
    grace_s: float = between(120.0, 1.0, 86400.0)  # after SIGTERM, time the workers get to checkpoint before SIGKILL
    socket_ifname: str = ""  # network interface for gloo/NCCL (GLOO_SOCKET_IFNAME); "" = their own choice


@dataclass
class GateConfig:
    min_uar: float = between(0.25, 0.0, 1.0)  # absolute floor on the dynamic test UAR (7 classes: chance 0.14)
    min_war: float = between(0.25, 0.0, 1.0)  # absolute floor on the dynamic test WAR
    max_uar_drop: float = between(0.01, 0.0, 1.0)  # tolerated UAR drop vs the champion, absolute (0.01 = 1 point)
    max_war_drop: float = between(0.01, 0.0, 1.0)  # tolerated WAR drop vs the champion
    reevaluate_champion: bool = True  # score the champion on the candidate's test split (else: stored metrics)


# A preset is a few overrides applied over params.yaml (a `key=value` on the command line still wins).
# paper: what the published S4D DFER models were fine-tuned and tested on (MSA-LMC/S4D
# finetune/scripts/DFEW/ft_moe_dfew.sh: --sampling_rate 4 --test_num_segment 2 --test_num_crop 2; the frame
# and still transforms of finetune/datasets/kinetics.py and finetune/s4d/sfer/__init__.py).
PRESETS = {"paper": {"data": {"transforms": "official", "frame_stride": 4}, "evaluate": {"clips": 2, "crops": 2}}}


@dataclass
class Params:
    profile: str = "tiny"  # key of `models` the stages build
    preset: str = between("none", choices=("none", *PRESETS))  # paper: the published models' inputs (PRESETS)
    models: Dict[str, ModelConfig] = field(
        default_factory=lambda: {"tiny": tiny_profile(), "base": base_profile()})
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)

    @property
    def model(self) -> ModelConfig:
        return self.models[self.profile]


# -------------------------------------------------------------------------------------------- loading
def check_ranges(obj: Any, prefix: str = "") -> None:
    """Walk a dataclass tree and raise ConfigError naming the first value outside its declared range."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_ranges(value, f"{prefix}{key}.")
        return
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), prefix + f.name
        lo, hi, choices = f.metadata.get("lo"), f.metadata.get("hi"), f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        if lo is not None and value < lo or hi is not None and value > hi:
            raise ConfigError(f"{key}: {value!r} is outside the allowed range [{lo}, {hi}]")
        check_ranges(value, key + ".")


def check_consistency(p: Params) -> None:
    if p.synthetic.val_fraction + p.synthetic.test_fraction >= 1:
        raise ConfigError(f"synthetic.val_fraction + synthetic.test_fraction: {p.synthetic.val_fraction} + "
                          f"{p.synthetic.test_fraction} leaves no identity for train (must be < 1)")
    if p.pretrain.data != "labelled" and p.data.pool.reader == "none":
        raise ConfigError(f"pretrain.data: {p.pretrain.data} needs a pool, but data.pool.reader is none")
    if p.profile not in p.models:
        raise ConfigError(f"profile: {p.profile!r} is not a key of models ({', '.join(p.models)})")
    for name, m in p.models.items():
        key = f"models.{name}"
        if m.img_size % m.patch_size:
            raise ConfigError(f"{key}.img_size: {m.img_size} is not a multiple of patch_size {m.patch_size}")
        if m.num_frames % m.tubelet_size:
            raise ConfigError(f"{key}.num_frames: {m.num_frames} is not a multiple of tubelet_size "
                              f"{m.tubelet_size}")
        if m.embed_dim % m.num_heads:
            raise ConfigError(f"{key}.embed_dim: {m.embed_dim} is not divisible by num_heads {m.num_heads}")
        if m.decoder_dim % m.decoder_heads:
            raise ConfigError(f"{key}.decoder_dim: {m.decoder_dim} is not divisible by decoder_heads "
                              f"{m.decoder_heads}")
        if m.stem == "hmlp" and m.patch_size % 4:
            raise ConfigError(f"{key}.stem: hmlp needs a patch_size divisible by 4, got {m.patch_size}")
        if m.moae.layers > m.depth:
            raise ConfigError(f"{key}.moae.layers: {m.moae.layers} exceeds depth {m.depth}")
        if m.moae.top_k > m.moae.experts:
            raise ConfigError(f"{key}.moae.top_k: {m.moae.top_k} exceeds experts {m.moae.experts}")
        grid = [m.num_frames // m.tubelet_size, m.img_size // m.patch_size, m.img_size // m.patch_size]
        region = list(m.lgi.region)
        if m.encoder == "lgi" and (len(region) != 3 or min(region) < 1 or any(g % r for g, r in zip(grid, region))):
            raise ConfigError(f"{key}.lgi.region: {region} must be 3 positive sizes (t, h, w) that divide the "
                              f"token grid {grid}")
    if p.pretrain.target == "pixels+motion" and p.model.tubelet_size < 2:
        raise ConfigError(f"pretrain.target: pixels+motion needs frame differences inside a tubelet; "
                          f"models.{p.profile}.tubelet_size is {p.model.tubelet_size}")


def read_text(path: str | Path) -> str:
    """A user's text file (params, split lists) as str; InputError naming the file, line and byte for
    bytes that are not UTF-8, or when it does not exist."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, expected a text file") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(f"{path}:{line}:{column}: byte 0x{data[e.start]:02x} is not UTF-8 text "
                         f"(save the file as UTF-8)") from None


def _yaml_error(e: Exception, source: str) -> str:
    """A YAML parse error as `source:line:column: problem` (PyYAML marks are 0-based)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e).split("\n")[0]
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    if "\t" in problem or "'\\t'" in problem:
        problem += " (YAML indents with spaces, not tabs)"
    return f"{where}: YAML syntax error: {problem}"


def load_params(path: str | Path = "params.yaml", overrides: Optional[List[str]] = None) -> Params:
    """Load params.yaml (and dotlist overrides such as `finetune.epochs=3`) into a checked `Params`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} does not exist")
    try:
        text = read_text(path)
    except InputError as e:
        raise ConfigError(str(e)) from None
    try:
        loaded = OmegaConf.create(text)
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_error(e, str(path))) from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_describe(e)}") from None
    if not isinstance(loaded, DictConfig) or not loaded:
        # built-in defaults without a word would hide a truncated or wrongly named file
        what = "is empty" if not text.strip() or not loaded else "does not hold `key: value` lines at the top"
        raise ConfigError(f"{path} {what}; expected the params (the repository's params.yaml holds every key)")
    dotlist = []
    for override in overrides or []:
        try:
            dotlist.append(OmegaConf.from_dotlist([override]))
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"override {override!r}: the value is not valid YAML ({problem})") from None
        except OmegaConfBaseException as e:
            raise ConfigError(f"override {override!r}: {_describe(e)}") from None
    schema = OmegaConf.structured(Params)
    try:
        # A profile in YAML merges onto the built-in one of the same name; a new name starts from
        # ModelConfig's defaults. Either way it goes through the ModelConfig schema.
        cfg = OmegaConf.merge(schema, loaded, *dotlist)
        if cfg.preset in PRESETS:  # over the file, under the command line
            cfg = OmegaConf.merge(schema, loaded, PRESETS[cfg.preset], *dotlist)
        params: Params = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: {_describe(e)}") from None
    check_ranges(params)
    check_consistency(params)
    return params


def _describe(e: OmegaConfBaseException) -> str:
    """OmegaConf messages carry the key in `full_key`; lead with it."""
    key = getattr(e, "full_key", None)
    msg = str(e).split("\n")[0]
    return f"{key}: {msg}" if key else msg


def to_dict(obj: Any) -> dict:
    """A plain-dict copy (for checkpoints, logs and metrics files)."""
    return OmegaConf.to_container(OmegaConf.structured(obj), resolve=True)


# Model fields added after checkpoints were first written, with the behaviour those checkpoints were trained
# with: a stored config without them must not pick up today's tiny defaults (max pooling would run silently
# on weights trained with the mean).
LEGACY_MODEL_FIELDS = {"stem": "linear", "pool": "mean"}


def model_from_dict(d: dict) -> ModelConfig:
    """Rebuild a ModelConfig stored in a checkpoint, checked like the params file."""
    d = {**LEGACY_MODEL_FIELDS, **d}
    try:
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), d))
    except OmegaConfBaseException as e:
        raise ConfigError(f"checkpoint model config: {_describe(e)}") from None
    check_ranges(cfg, "model.")
    return cfg
