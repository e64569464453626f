"""Dual-modal MAE pretraining under DeepSpeed ZeRO: images and videos, one encoder.

    python -m s4d.train.pretrain [--params params.yaml] [key=value ...]        # 1 process, or
    torchrun --nproc_per_node 2 -m s4d.train.pretrain ...                      # several on one machine
    torchrun --nnodes 2 --node_rank R --master_addr HOST -m s4d.train.pretrain # one launcher per node

With `pretrain.nproc_per_node > 1` the plain command starts s4d.train.launch itself. SIGTERM / SIGINT (to
the command or its launcher) writes a checkpoint at the next step and exits with status 143; the same
command resumes from it.

After training, rank 0 checks that the MAE learned something about its input and writes it into
summary.json and stdout beside the final loss: a ridge probe on frozen pooled features (val accuracy and
UAR) of the pretrained encoder and of the random one it started from, and the MAE's loss beside the loss of
a guess that ignores the input (the per-position mean target) on the same masked tokens of a training sample
augmented as trained (`pretrain.probe_samples`; 0 turns it off).

Each step is a video step or an image step (`image_step_share`), in an order drawn from (seed, epoch).
The masks and the samples of a step are drawn from (seed, step) for the GLOBAL batch and each rank takes
its slice, so a run is reproducible for any world size, and resuming replays the same steps exactly.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from s4d import precision
from s4d.config import Params, to_dict
from s4d.data.loaders import STD, Augment, ClipDataset, ImageDataset
from s4d.data.manifest import dataset_folders, read_manifest
from s4d.data.prepare import POOL_MANIFESTS, pool_manifests
from s4d.data.readers import carve_val
from s4d.io import atomic_output, save_figure, write_json, write_text
from s4d.models import MaskedAutoencoder
from s4d.models.checkpoint import save_checkpoint
from s4d.stage import load_stage_params, stage_parser
from s4d.train.checkpoints import (OutOfSpace, ResumeRefused, claim, move_aside, out_of_space, own_entries,
                                   refusal, remove_all_own, remove_own)
from s4d.train.distributed import Dist, Stopped, init_distributed, step_hook, stop_requested, use_bf16
from s4d.train.inputs import InputsError, changed_inputs, inputs_key, stage_inputs
from s4d.train.launch import StageExit, relaunch, run_worker, under_launcher
from s4d.train.probe import PositionMean, pooled_features, probe

PRETRAIN_AUGMENT = Augment(scale=(0.5, 1.0), flip=True, rand_augment=False, erase_prob=0.0)


# --------------------------------------------------------------------------------------------- plan
def steps_per_epoch(n_videos: int, n_images: int, params: Params, world: int) -> tuple[int, int]:
    """(video steps, image steps) of one epoch: one pass over the videos, images at `image_step_share`
    of the steps (one pass over the images when the share is 1)."""
    cfg = params.pretrain
    share = cfg.image_step_share
    if share >= 1.0:
        return 0, max(1, n_images // (cfg.image_batch_size * world))
    video_steps = max(1, n_videos // (cfg.batch_size * world))
    return video_steps, round(video_steps * share / (1.0 - share))


def step_order(video_steps: int, image_steps: int, seed: int, epoch: int) -> list[str]:
    order = np.array(["video"] * video_steps + ["image"] * image_steps)
    np.random.default_rng((seed, epoch, 7)).shuffle(order)
    return order.tolist()


def global_batches(n: int, global_batch: int, steps: int, seed: int, epoch: int, stream: int) -> np.ndarray:
    """(steps, global_batch) sample indices: shuffled passes over the n samples, as many as needed."""
    passes = math.ceil(steps * global_batch / n)
    rng = np.random.default_rng((seed, epoch, stream))
    order = np.concatenate([rng.permutation(n) for _ in range(passes)])
    return order[: steps * global_batch].reshape(steps, global_batch)


def masking_noise(shape: tuple[int, ...], seed: int, step: int, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of the global batch's masking noise for a step."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    per_rank = shape[0]
    noise = torch.rand((per_rank * world, *shape[1:]), generator=generator)
    return noise[rank * per_rank:(rank + 1) * per_rank]


# --------------------------------------------------------------------------------------- checkpoints
def resume_settings(params: Params, model: torch.nn.Module, world_size: int) -> dict:
    """What a checkpoint must match to be resumed: the one rule of s4d.train.inputs (the settings without
    the performance knobs, the prepared data, the code, the world size: it sets the global batch, hence
    the step plan, and the ZeRO partitions), plus the model's state-dict layout."""
    layout = json.dumps([[name, list(t.shape)] for name, t in model.state_dict().items()])
    try:
        return stage_inputs(params, "pretrain", world_size=world_size,
                            **{"model layout": hashlib.sha256(layout.encode()).hexdigest()[:16]})
    except InputsError as e:
        raise FileNotFoundError(str(e)) from None


def save_training_state(engine, ckpt_dir: Path, state: dict, dist: Dist, keep_last: int,
                        settings: dict | None = None) -> None:
    """DeepSpeed checkpoint (model, ZeRO optimizer partitions) + RNG per rank, then `latest` is switched
    atomically; a kill mid-save leaves `latest` on the previous complete checkpoint. Every entry written
    in ckpt_dir is claimed as the project's own first; only own entries are ever removed."""
    tag = f"step_{state['step']:08d}"
    if dist.is_main:
        claim(ckpt_dir, tag)
        before = set(os.listdir(ckpt_dir))
    torch.distributed.barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=state, save_latest=False)
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        torch.save(rng, ckpt_dir / tag / f"rng_rank{dist.rank}.pt")
        if dist.is_main:
            write_json(ckpt_dir / tag / "run.json", {"step": state["step"], "total_steps": state["total_steps"],
                                                     "settings": settings or {}})
    except (OSError, RuntimeError) as e:
        latest = ckpt_dir / "latest"
        failure = out_of_space(e, ckpt_dir, tag, latest.read_text().strip() if latest.is_file() else None)
        if failure is None:
            raise
        if dist.is_main:
            remove_own(ckpt_dir, tag)  # the partial checkpoint: frees the space it took
        raise failure from None
    torch.distributed.barrier()
    if dist.is_main:
        claim(ckpt_dir, "latest", *(set(os.listdir(ckpt_dir)) - before))  # e.g. DeepSpeed's zero_to_fp32.py
        write_text(ckpt_dir / "latest", tag)
        tags = sorted(n for n in own_entries(ckpt_dir) if n.startswith("step_") and (ckpt_dir / n).is_dir())
        for old in tags[:-keep_last]:
            remove_own(ckpt_dir, old)
    torch.distributed.barrier()


def resume_plan(ckpt_dir: Path, settings: dict, fresh: bool) -> tuple[str, str | None]:
    """What to do with ckpt_dir, read-only (every rank reaches the same answer): ("resume", tag), ("clean",
    None) for leftovers that cannot be resumed or a finished run, ("aside", None) to move an unfinished
    run aside; raises ResumeRefused when an unfinished run was made with other settings."""
    latest = ckpt_dir / "latest"
    if not latest.is_file():
        return "clean", None  # no complete checkpoint: only partial ones of a killed first save
    tag = latest.read_text().strip()
    try:
        saved = json.loads((ckpt_dir / tag / "run.json").read_text())
        diff = changed_inputs(saved["settings"], settings)
    except (OSError, ValueError, KeyError):
        saved, diff = {}, [f"{tag}/run.json: missing or unreadable, so its settings are unknown"]
    finished = saved.get("step") is not None and saved.get("step") == saved.get("total_steps")
    if fresh:
        return ("clean" if finished else "aside"), None
    if not diff:
        return "resume", tag
    if finished:
        return "clean", None  # the run ended; its model.pt is the output, its checkpoints are spent
    raise refusal(ckpt_dir, saved.get("step", 0), diff, "`--fresh`")


def restore_training_state(engine, ckpt_dir: Path, dist: Dist, settings: dict, fresh: bool = False) -> dict | None:
    """Resume the run in ckpt_dir when its settings match; otherwise (after the same decision on every
    rank) clean or move aside only the project's own entries, and return None."""
    action, tag = resume_plan(ckpt_dir, settings, fresh)
    torch.distributed.barrier()  # every rank has read the folder before rank 0 changes it
    if action != "resume":
        if dist.is_main and ckpt_dir.is_dir():
            if action == "aside" and (aside := move_aside(ckpt_dir)):
                if (log := ckpt_dir.parent / "log.csv").is_file():
                    shutil.copy2(log, aside / "log.csv")  # its loss curve goes with it
                print(f"started fresh: the unfinished run was moved to {aside}")
            elif removed := remove_all_own(ckpt_dir):
                print(f"starting a new run: removed {len(removed)} checkpoint entries of a finished or "
                      f"incomplete run from {ckpt_dir}")
        torch.distributed.barrier()
        return None
    _, state = engine.load_checkpoint(str(ckpt_dir), tag=tag)
    rng = torch.load(ckpt_dir / tag / f"rng_rank{dist.rank}.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return state


# ----------------------------------------------------------------------------------------------- run
def manifest_files(params: Params) -> list[Path]:
    """The prepared manifests the MAE reads (`pretrain.data`): the labelled sets' (their labels unused), the
    unlabelled pool's (a modality the pool lacks has no file), or both. Only pretraining reads the pool."""
    prepared = Path(params.data.prepared_dir)
    labelled = [prepared / "dynamic.csv", prepared / "static.csv"]
    pool = pool_manifests(prepared)
    if params.pretrain.data != "labelled" and not pool:
        raise ValueError(f"pretrain.data is {params.pretrain.data} but {prepared} holds no pool manifest "
                         f"({' / '.join(POOL_MANIFESTS.values())}): run the prepare stage with data.pool set")
    return {"labelled": labelled, "pool": pool, "both": labelled + pool}[params.pretrain.data]


def train_manifests(params: Params) -> tuple:
    """(videos, images): training rows of the manifests the MAE reads (never val or test: they stay unseen
    until fine-tuning)."""
    rows = pd.concat([read_manifest(path) for path in manifest_files(params)], ignore_index=True)
    rows = rows[rows["split"] == "train"]
    return rows[rows["modality"] == "video"], rows[rows["modality"] == "image"]


def pretrain(params: Params, out_dir: Path = Path("artifacts/pretrain"), fresh: bool = False) -> dict:
    """Run (or resume) pretraining; write out_dir/model.pt (our MAE checkpoint), log.csv, summary.json.
    `fresh`: move an unfinished run in out_dir/checkpoints aside and start over."""
    import deepspeed

    cfg, model_cfg = params.pretrain, params.model
    dist = init_distributed()
    torch.manual_seed(cfg.seed)
    videos, images = train_manifests(params)
    video_steps, image_steps = steps_per_epoch(len(videos), len(images), params, dist.world_size)
    if video_steps and videos.empty or image_steps and images.empty:
        raise ValueError("pretraining needs training videos and images for the configured image_step_share; "
                         f"found {len(videos)} videos and {len(images)} images")
    total_steps = cfg.epochs * (video_steps + image_steps)

    model = build_mae(params)
    bf16 = use_bf16(cfg.precision)
    precision.configure(model, model_cfg, bf16, train=True, device=dist.device)  # fused or manual attention
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "token" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "token" in n]
    global_video_batch = cfg.batch_size * dist.world_size
    lr = cfg.base_lr * global_video_batch / 256
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    # bf16 is torch autocast over fp32 weights, as in fine-tuning (and VideoMAE's amp), not DeepSpeed's bf16
    # mode: that casts the parameters but not the buffers, and the hmlp stem's BatchNorm then refuses the mix.
    ds_config = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": 1,
                 "gradient_clipping": cfg.clip_grad, "zero_optimization": {"stage": cfg.zero_stage},
                 "steps_per_print": 10 ** 9, "wall_clock_breakdown": False}
    engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    warmup = round(cfg.warmup_epochs * (video_steps + image_steps))
    scheduler = CosineLRScheduler(ds_optimizer, t_initial=total_steps, lr_min=cfg.min_lr,
                                  warmup_t=warmup, warmup_lr_init=cfg.min_lr, t_in_epochs=False)

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoints"
    settings = resume_settings(params, model, dist.world_size)
    fingerprint = inputs_key(settings)
    state = restore_training_state(engine, ckpt_dir, dist, settings, fresh) or {"step": 0}
    step = state["step"]
    log_path = out_dir / "log.csv"
    if dist.is_main:
        trim_log(log_path, step)
        if step:
            print(f"resuming from step {step} of {total_steps}")

    size, frames, stride = model_cfg.img_size, model_cfg.num_frames, params.data.frame_stride
    folders = (*dataset_folders(params.data), params.data.pool.root)
    datasets = {"video": ClipDataset(videos, ".", size, frames, stride, PRETRAIN_AUGMENT, seed=cfg.seed,
                                     allowed=folders) if video_steps else None,
                "image": ImageDataset(images, ".", size, PRETRAIN_AUGMENT, seed=cfg.seed, allowed=folders)
                if image_steps else None}
    per_rank = {"video": cfg.batch_size, "image": cfg.image_batch_size}
    ratios = {"video": cfg.video_mask_ratio, "image": cfg.image_mask_ratio}
    started, first_step = time.time(), step
    progress = tqdm(total=total_steps, initial=step, desc="pretrain", disable=not dist.is_main)
    per_epoch = video_steps + image_steps
    while step < total_steps:
        epoch, index_in_epoch = divmod(step, per_epoch)
        order = step_order(video_steps, image_steps, cfg.seed, epoch)
        loaders = {}
        for stream, (modality, steps) in enumerate((("video", video_steps), ("image", image_steps))):
            if not steps:
                continue
            datasets[modality].set_epoch(epoch)
            done = order[:index_in_epoch].count(modality)
            batches = global_batches(len(datasets[modality]), per_rank[modality] * dist.world_size, steps,
                                     cfg.seed, epoch, stream)[done:]
            rank_batches = batches[:, dist.rank * per_rank[modality]:(dist.rank + 1) * per_rank[modality]]
            loaders[modality] = iter(DataLoader(datasets[modality], batch_sampler=rank_batches.tolist(),
                                                num_workers=params.data.workers))
        for modality in order[index_in_epoch:]:
            tick = time.time()
            x, _ = next(loaders[modality])
            x = x.to(dist.device)
            noise = masking_noise(engine.module.noise_shape(x, cfg.tube_masking and modality == "video"),
                                  cfg.seed, step, dist.rank, dist.world_size)
            scheduler.step_update(step)
            with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=bf16):
                out = engine(x, ratios[modality], cfg.tube_masking and modality == "video", noise.to(dist.device))
            engine.backward(out.loss)
            engine.step()
            step += 1
            loss = out.loss.detach().float()
            torch.distributed.all_reduce(loss)
            loss = loss.item() / dist.world_size
            if not math.isfinite(loss):
                raise FloatingPointError(f"pretraining loss is {loss} at step {step}; lower pretrain.base_lr")
            if dist.is_main:
                clips_s = x.shape[0] * dist.world_size / (time.time() - tick)
                append_log(log_path, {"step": step, "epoch": epoch, "modality": modality, "loss": f"{loss:.5f}",
                                      "lr": f"{ds_optimizer.param_groups[0]['lr']:.3e}", "clips_s": f"{clips_s:.2f}"})
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.4f}", modality=modality)
            due = step % cfg.checkpoint_every == 0 or step == total_steps
            if due:
                save_training_state(engine, ckpt_dir, {"step": step, "total_steps": total_steps,
                                                       "fingerprint": fingerprint}, dist, cfg.keep_last, settings)
            step_hook(step)
            signum = stop_requested()  # collective: every rank stops at the same step
            if signum and step < total_steps:
                if not due:
                    save_training_state(engine, ckpt_dir, {"step": step, "total_steps": total_steps,
                                                           "fingerprint": fingerprint}, dist, cfg.keep_last,
                                        settings)
                progress.close()
                raise Stopped(f"pretraining stopped by {signal.Signals(signum).name} at step {step} of "
                              f"{total_steps}; checkpoint written to {ckpt_dir}: run the same command to resume")
    progress.close()

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        if dist.is_main:
            export = build_mae(params)
            export.load_state_dict({k: v.float().cpu() for k, v in engine.module.state_dict().items()})
            save_checkpoint(out_dir / "model.pt", export, meta={"steps": step, "world_size": dist.world_size,
                                                                 "params": to_dict(params)})
    summary = {"steps": step, "epochs": cfg.epochs, "world_size": dist.world_size, "zero_stage": cfg.zero_stage,
               "bf16": bf16, "final_loss": last_losses(log_path), "seconds": round(time.time() - started, 1),
               "steps_this_run": step - first_step,
               "data": {"read": cfg.data, "videos": len(videos), "images": len(images)}}  # what the MAE saw
    if dist.is_main:
        write_json(out_dir / "summary.json", summary)
        plot_losses(log_path, out_dir / "loss.png")
    torch.distributed.barrier()
    # After the last collective: rank 0 alone runs the probe, so no rank waits on it inside a timeout.
    if dist.is_main and cfg.probe_samples:
        tick = time.time()
        trained = {"video": videos if video_steps else None, "image": images if image_steps else None}
        summary.update(learning_evidence(params, export.cpu().eval(), dist.device, trained))
        summary["probe_seconds"] = round(time.time() - tick, 1)
        write_json(out_dir / "summary.json", summary)
        print(evidence_line(summary), flush=True)
    return summary


def build_mae(params: Params) -> MaskedAutoencoder:
    """The MAE of params: target, motion weight, target norm; the std floor goes from grey levels to the
    input's units per channel (the loaders scale pixels to x / 255 / STD[c] after removing the mean)."""
    cfg = params.pretrain
    floor = [cfg.target_std_floor / 255.0 / s for s in STD]
    return MaskedAutoencoder(params.model, cfg.target, cfg.motion_weight, cfg.target_norm, floor)


# ------------------------------------------------------------------------------ did the MAE learn?
def probe_rows(params: Params) -> dict[str, tuple]:
    """Per modality (train rows, val rows) of the labelled manifests for the probe: at most
    pretrain.probe_samples train rows (a seeded sample), every val row (carved from train with data.seed
    when the manifest has none)."""
    prepared, out = Path(params.data.prepared_dir), {}
    for modality, task in (("video", "dynamic"), ("image", "static")):
        manifest = read_manifest(prepared / f"{task}.csv")
        rows = carve_val(manifest[manifest["split"].isin(("train", "val"))], params.data.val_fraction,
                         params.data.seed)
        train, val = rows[rows["split"] == "train"], rows[rows["split"] == "val"]
        if len(train) > params.pretrain.probe_samples:
            train = train.sample(params.pretrain.probe_samples, random_state=params.pretrain.seed)
        if len(train) and len(val):
            out[modality] = (train, val)
    return out


# The training-sample comparison: the guess is fitted on up to FIT_SAMPLES x probe_samples training rows (its
# own estimation error, ~1/n of the loss, stays below the margins it is compared at), augmented in a pass
# that no training epoch draws.
FIT_SAMPLES = 8
EVIDENCE_EPOCH = 10 ** 6


def training_sample_losses(params: Params, mae: MaskedAutoencoder, device: torch.device, rows: pd.DataFrame,
                           modality: str) -> dict:
    """The MAE's loss and the per-position-mean guess's loss on the same masked tokens of a sample of the rows
    the MAE trained on, augmented as in training (eval mode, masks drawn from pretrain.seed). The guess is the
    mean target per position over other training rows, augmented the same way: the input-ignoring predictor
    of the MAE's own task. (Fitted on un-augmented crops it would predict another distribution: the centred
    faces' mean is sharper than the random crops' the MAE learns, so the two are not comparable.)"""
    cfg, model_cfg = params.pretrain, params.model
    video = modality == "video"
    ratio, tube = (cfg.video_mask_ratio, cfg.tube_masking) if video else (cfg.image_mask_ratio, False)
    shuffled = rows.sample(frac=1.0, random_state=cfg.seed)
    n = min(cfg.probe_samples, len(rows) // 2)
    held, fit = shuffled.iloc[:n], shuffled.iloc[n:n + FIT_SAMPLES * cfg.probe_samples]
    folders = (*dataset_folders(params.data), params.data.pool.root)

    def batches(part: pd.DataFrame) -> DataLoader:
        size = model_cfg.img_size
        dataset = (ClipDataset(part, ".", size, model_cfg.num_frames, params.data.frame_stride, PRETRAIN_AUGMENT,
                               seed=cfg.seed, allowed=folders) if video
                   else ImageDataset(part, ".", size, PRETRAIN_AUGMENT, seed=cfg.seed, allowed=folders))
        dataset.set_epoch(EVIDENCE_EPOCH)
        return DataLoader(dataset, batch_size=32, num_workers=params.data.workers)

    position_mean = PositionMean()
    with torch.no_grad():
        for x, _ in batches(fit):
            position_mean.update(mae.targets(x.to(device)).cpu())
        guess = position_mean.mean()
        generator = torch.Generator().manual_seed(cfg.seed)
        mae_total = guess_total = 0.0
        for x, _ in batches(held):
            x = x.to(device)
            noise = torch.rand(mae.noise_shape(x, tube), generator=generator)
            out = mae(x, ratio, tube, noise)
            masked = out.mask.cpu().nonzero()[:, 1].view(len(x), -1)  # the scored tokens, in token order
            error = (guess[masked] - out.target.cpu().double()).pow(2)
            mae_total += out.loss.item() * len(x)
            guess_total += float(mae.score(error, video)) * len(x)
    return {"mae_loss": round(mae_total / n, 5), "baseline_loss": round(guess_total / n, 5), "samples": n,
            "fit_samples": position_mean.n}


def learning_evidence(params: Params, mae: MaskedAutoencoder, device: torch.device,
                      trained: dict[str, pd.DataFrame | None] | None = None) -> dict:
    """Linear probes (s4d.train.probe) on val of the pretrained encoder and of the random encoder it started
    from, per modality; the MAE's loss beside the per-position-mean guess's on the same masked tokens of a
    training sample augmented as trained (`training_sample`, per modality in `trained`: the rows the MAE
    trained on): a loss not below the guess's means the MAE ignores its input; and both on the probe's train
    sample without augmentation (eval mode, masks drawn from pretrain.seed), a stricter test: the guess is
    then fitted on the centred crops it is scored on, the MAE on random crops."""
    cfg, model_cfg = params.pretrain, params.model
    torch.manual_seed(cfg.seed)
    start = build_mae(params).encoder.eval().to(device)  # the initial weights of this run (same seed)
    mae = mae.to(device)
    folders = dataset_folders(params.data)
    size, frames, stride = model_cfg.img_size, model_cfg.num_frames, params.data.frame_stride
    generator = torch.Generator().manual_seed(cfg.seed)
    evidence: dict = {"probe": {}, "baseline_loss": {}, "mae_loss_on_probe_sample": {}, "training_sample": {}}
    for modality, rows in (trained or {}).items():
        if rows is not None and len(rows) >= 2:
            evidence["training_sample"][modality] = training_sample_losses(params, mae, device, rows, modality)
    for modality, (train, val) in probe_rows(params).items():
        classes = int(max(train["label"].max(), val["label"].max())) + 1
        ratio = cfg.video_mask_ratio if modality == "video" else cfg.image_mask_ratio
        feats: dict = {}
        baseline, mae_losses = PositionMean(), []
        for split, rows in (("train", train), ("val", val)):
            dataset = (ClipDataset(rows, ".", size, frames, stride, allowed=folders) if modality == "video"
                       else ImageDataset(rows, ".", size, None, allowed=folders))
            loader = DataLoader(dataset, batch_size=32, num_workers=params.data.workers)
            parts = {"pretrained": [], "random_init": [], "labels": []}
            for x, y in loader:
                x = x[:, 0].to(device)  # the one centre view
                parts["pretrained"].append(pooled_features(mae.encoder, x).cpu())
                parts["random_init"].append(pooled_features(start, x).cpu())
                parts["labels"].append(y)
                if split == "train":
                    with torch.no_grad():
                        baseline.update(mae.targets(x).cpu())
                        noise = torch.rand(mae.noise_shape(x, cfg.tube_masking and modality == "video"),
                                           generator=generator)
                        out = mae(x, ratio, cfg.tube_masking and modality == "video", noise)
                    mae_losses.append((out.loss.item(), len(x)))
            feats[split] = {k: torch.cat(v) for k, v in parts.items()}
        evidence["probe"][modality] = {
            encoder: probe(feats["train"][encoder], feats["train"]["labels"], feats["val"][encoder],
                           feats["val"]["labels"], classes)
            for encoder in ("pretrained", "random_init")}
        evidence["baseline_loss"][modality] = round(float(mae.score(baseline.variance(), modality == "video")), 5)
        evidence["mae_loss_on_probe_sample"][modality] = round(
            sum(loss * n for loss, n in mae_losses) / sum(n for _, n in mae_losses), 5)
    return evidence


def evidence_line(summary: dict) -> str:
    """One line per modality: the final MAE loss beside the baseline, and the probes' val UAR."""
    lines = []
    for modality, probes in summary.get("probe", {}).items():
        final = summary["final_loss"].get(modality)  # None: no training step on this modality (video-only MAE)
        trained = f"MAE loss {final:.4f} (last steps)" if final is not None else "no MAE training steps"
        sample = summary.get("training_sample", {}).get(modality)
        if sample:
            trained += (f"; on {sample['samples']} training samples augmented as trained {sample['mae_loss']:.4f} vs "
                        f"{sample['baseline_loss']:.4f} for the per-position mean of {sample['fit_samples']} others")
        lines.append(
            f"{modality}: {trained}; "
            f"{summary['mae_loss_on_probe_sample'][modality]:.4f} on the probe sample without augmentation vs "
            f"{summary['baseline_loss'][modality]:.4f} for its per-position mean; linear probe val UAR "
            f"{probes['pretrained']['val_uar']:.3f} pretrained vs {probes['random_init']['val_uar']:.3f} random "
            f"init (accuracy {probes['pretrained']['val_accuracy']:.3f} vs "
            f"{probes['random_init']['val_accuracy']:.3f})")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- outputs
LOG_FIELDS = ["step", "epoch", "modality", "loss", "lr", "clips_s"]


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def trim_log(path: Path, step: int) -> None:
    """Drop log rows past the checkpoint being resumed (they are about to be redone)."""
    if not path.exists():
        return
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with atomic_output(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def last_losses(path: Path, window: int = 10) -> dict:
    """Mean loss per modality over the last `window` steps of each."""
    if not path.exists():
        return {}
    with path.open() as f:
        rows = list(csv.DictReader(f))
    out = {}
    for modality in ("video", "image"):
        losses = [float(r["loss"]) for r in rows if r["modality"] == modality][-window:]
        if losses:
            out[modality] = round(sum(losses) / len(losses), 5)
    return out


def plot_losses(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log_path.exists():
        return
    with log_path.open() as f:
        rows = list(csv.DictReader(f))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for modality in ("video", "image"):
        pts = [(int(r["step"]), float(r["loss"])) for r in rows if r["modality"] == modality]
        if pts:
            ax.plot(*zip(*pts), label=f"{modality} steps", lw=1)
    ax.set(xlabel="step", ylabel="masked-patch MSE (normalised pixels)", title="MAE pretraining")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = stage_parser(__doc__)
    parser.add_argument("--fresh", action="store_true",
                        help="start over: an unfinished run in artifacts/pretrain/checkpoints is moved aside "
                             "(into checkpoints/previous-<time>/), not deleted")
    parser.add_argument("--out", default="artifacts/pretrain",
                        help="output folder: model.pt, log.csv, summary.json, checkpoints/ "
                             "(default: artifacts/pretrain)")
    args = parser.parse_args(argv)
    params = load_stage_params(args)
    nproc = params.pretrain.nproc_per_node
    if nproc > 1 and not under_launcher():  # not under a launcher yet: become one (s4d.train.launch)
        return relaunch("s4d.train.pretrain", ["--params", args.params, *(["--fresh"] if args.fresh else []),
                                               "--out", args.out, *args.overrides], nproc, params.launch)

    def work() -> dict:
        try:
            return pretrain(params, Path(args.out), fresh=args.fresh)
        except ResumeRefused as e:  # the user decides: resume with the old settings or start fresh
            raise StageExit(2, f"pretrain refused: {e}") from None
        except (FileNotFoundError, ValueError, OutOfSpace) as e:  # missing/empty data, full disk: say so
            raise StageExit(1, f"pretrain failed: {e}") from None

    # SIGTERM / SIGINT: checkpoint at the next step, exit 143; a lost rank is named (s4d.train.launch)
    return run_worker(work, join=init_distributed)


if __name__ == "__main__":
    sys.exit(main())
