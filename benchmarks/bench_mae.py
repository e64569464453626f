"""MAE pretraining throughput against fine-tuning throughput at the params' profile, end to end, in one run.

    python -m benchmarks.bench_mae [--steps 16] [--rounds 7] [--params params.yaml] [--name mae] [key=value ...]

Each call runs `--steps` consecutive steps the way the stages run them, on the prepared data
(artifacts/prepared, from `dvc repro prepare`): a fresh DataLoader iterator with `data.workers` processes
and the stage's augmentation, then the step:
- pretrain: a video step, pretrain.batch_size clips, masking noise, DeepSpeed engine forward / backward / step
  (ZeRO stage and precision from params), as s4d.train.pretrain;
- finetune: a dynamic step, finetune.batch_size clips, the classifier (MoAE) forward, label-smoothed CE plus
  the balance loss, backward, gradient clipping, AdamW with layer decay, as s4d.train.finetune.
Both models get the attention kernel their stage would choose (s4d.precision.configure).
The same two steps also run on one fixed in-memory batch ("model only"), to show what loading costs.
Method (benchmarks/common.py): interleaved, order reversed every round; the figure is the per-round ratio
of clips/s, median and IQR; load and matmul peaks recorded. CPU seconds (this process and its finished
loader workers) are recorded beside wall seconds. Writes benchmarks/results/<name>.json (default mae.json);
key=value overrides (e.g. models.tiny.decoder_depth=1) measure another recipe and are recorded.
"""
from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from benchmarks.common import interleaved, load, machine, peaks, quartiles, ratio, save, target_met
from s4d import precision
from s4d.config import load_params
from s4d.data.loaders import Augment, ClipDataset
from s4d.data.manifest import dataset_folders, read_manifest

TARGET = (">=", 5.0)  # issue: pretraining throughput >= 5x the fine-tune step rate at tiny


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def at_least(low: int):
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    parse.__name__ = "int"  # argparse's message: invalid int value
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=at_least(1), default=16,
                        help="steps per timed call (one loader iterator; the stage makes one per epoch: 5 video steps at "
                             "batch 64 on the embedded train clips, 31 on the grid's pool)")
    parser.add_argument("--rounds", type=at_least(2), default=7,
                        help="timed rounds (the first is a warm-up; 2 or more)")
    parser.add_argument("--name", default="mae", help="results file benchmarks/results/<name>.json")
    parser.add_argument("overrides", nargs="*", help="params overrides key=value")
    args = parser.parse_args(argv)

    import deepspeed

    from s4d.models import S4DClassifier
    from s4d.train.distributed import init_distributed, use_bf16
    from s4d.train.finetune import TaskLoss, build_optimizer
    from s4d.train.pretrain import PRETRAIN_AUGMENT, build_mae, masking_noise

    params = load_params(args.params, args.overrides)
    cfg, pt, ft, data = params.model, params.pretrain, params.finetune, params.data
    dist = init_distributed()
    torch.manual_seed(0)
    manifest = read_manifest(f"{data.prepared_dir}/dynamic.csv")
    videos = manifest[manifest["split"] == "train"]
    folders = dataset_folders(data)
    size, frames, stride = cfg.img_size, cfg.num_frames, data.frame_stride

    # ---- pretraining, as s4d.train.pretrain builds it
    pt_bf16 = use_bf16(pt.precision)
    mae = build_mae(params)
    pt_fused = precision.configure(mae, cfg, pt_bf16, train=True, device=dist.device)
    # bf16: autocast over fp32 weights with DeepSpeed in fp32, as the stage (DeepSpeed's bf16 mode breaks BatchNorm)
    engine, _, _, _ = deepspeed.initialize(
        model=mae, optimizer=torch.optim.AdamW(mae.parameters(), lr=1e-4, betas=(0.9, 0.95)),
        config={"train_micro_batch_size_per_gpu": pt.batch_size, "gradient_accumulation_steps": 1,
                "gradient_clipping": pt.clip_grad, "zero_optimization": {"stage": pt.zero_stage},
                "steps_per_print": 10 ** 9})
    pt_set = ClipDataset(videos, ".", size, frames, stride, PRETRAIN_AUGMENT, seed=pt.seed, allowed=folders)

    # ---- fine-tuning, as s4d.train.finetune builds it
    ft_bf16 = use_bf16(ft.precision)
    model = S4DClassifier(cfg, 7, 7).to(dist.device).train()
    ft_fused = precision.configure(model, cfg, ft_bf16, train=True, device=dist.device)
    optimizer = build_optimizer(model, ft, ft.base_lr * ft.batch_size / 256)
    task_loss = TaskLoss(ft, 7)
    ft_set = ClipDataset(videos, ".", size, frames, stride,
                         Augment(scale=(ft.crop_scale, 1.0), flip=True, rand_augment=ft.rand_augment,
                                 erase_prob=ft.erase_prob), seed=ft.seed, allowed=folders)

    step_no = {"pretrain": 0}

    def pretrain_step(x: torch.Tensor) -> None:
        x = x.to(dist.device)
        step_no["pretrain"] += 1
        noise = masking_noise(engine.module.noise_shape(x, pt.tube_masking), pt.seed, step_no["pretrain"], 0, 1)
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=pt_bf16):
            out = engine(x, pt.video_mask_ratio, pt.tube_masking, noise.to(dist.device))
        engine.backward(out.loss)
        engine.step()

    def finetune_step(x: torch.Tensor, y: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        x, target = task_loss.prepare(x.to(dist.device), y.to(dist.device))
        with torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=ft_bf16):
            logits = model(x)
        loss = task_loss.criterion(logits.float(), target) + ft.balance_weight * model.balance_loss().float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), ft.clip_grad)
        optimizer.step()

    rng = np.random.default_rng(0)

    def batches(dataset: ClipDataset, batch: int) -> DataLoader:
        # as many shuffled passes as the call needs (16 steps of 32 clips outnumber the 336 train clips)
        passes = -(-args.steps * batch // len(dataset))
        order = np.concatenate([rng.permutation(len(dataset)) for _ in range(passes)])
        order = order[: args.steps * batch].reshape(args.steps, batch)
        return DataLoader(dataset, batch_sampler=order.tolist(), num_workers=data.workers)

    fixed_pt = next(iter(DataLoader(pt_set, batch_size=pt.batch_size)))[0]
    fixed_ft = next(iter(DataLoader(ft_set, batch_size=ft.batch_size)))
    cpu: dict[str, list[float]] = {}

    def timed(name: str, fn):
        def call():
            start = cpu_seconds()
            fn()
            cpu.setdefault(name, []).append(cpu_seconds() - start)
        return call

    fns = {
        "pretrain": timed("pretrain", lambda: [pretrain_step(x) for x, _ in batches(pt_set, pt.batch_size)]),
        "finetune": timed("finetune", lambda: [finetune_step(x, y) for x, y in batches(ft_set, ft.batch_size)]),
        "pretrain_model_only": timed("pretrain_model_only",
                                     lambda: [pretrain_step(fixed_pt) for _ in range(args.steps)]),
        "finetune_model_only": timed("finetune_model_only",
                                     lambda: [finetune_step(*fixed_ft) for _ in range(args.steps)]),
    }
    load_before = load()
    started = time.perf_counter()
    times = interleaved(fns, rounds=args.rounds, warmup=1)
    seconds = time.perf_counter() - started
    load_after = load()
    clips = {"pretrain": pt.batch_size, "finetune": ft.batch_size, "pretrain_model_only": pt.batch_size,
             "finetune_model_only": ft.batch_size}
    clips = {name: n * args.steps for name, n in clips.items()}
    # clips/s ratio per round: (pretrain clips / pretrain s) / (finetune clips / finetune s)
    scale = clips["pretrain"] / clips["finetune"]
    end_to_end = ratio({"ft": [t * scale for t in times["finetune"]], "pt": times["pretrain"]}, "ft", "pt")
    model_only = ratio({"ft": [t * scale for t in times["finetune_model_only"]],
                        "pt": times["pretrain_model_only"]}, "ft", "pt")
    cpu_ratio = quartiles([f * scale / p for f, p in zip(cpu["finetune"][1:], cpu["pretrain"][1:])])
    figures = {
        "method": "interleaved, order reversed each round, median and IQR (benchmarks/common.py)",
        "profile": params.profile, "overrides": args.overrides, "steps_per_call": args.steps, "rounds": args.rounds,
        "input": {"img_size": size, "num_frames": frames, "frame_stride": stride},
        "data_workers": data.workers, "pretrain_batch": pt.batch_size, "finetune_batch": ft.batch_size,
        "video_mask_ratio": pt.video_mask_ratio, "target_norm": pt.target_norm,
        "precision": {"pretrain_bf16": pt_bf16, "finetune_bf16": ft_bf16,
                      "pretrain_fused_attention": pt_fused, "finetune_fused_attention": ft_fused},
        "load_before": load_before, "load_after": load_after, "seconds": round(seconds, 1),
        "clips_s": {name: quartiles([clips[name] / t for t in ts]) for name, ts in times.items()},
        "cpu_s_per_clip": {name: quartiles([c / clips[name] for c in cs[1:]]) for name, cs in cpu.items()},
        "ratios": {"pretrain_over_finetune_clips_s": end_to_end,
                   "pretrain_over_finetune_clips_s_model_only": model_only,
                   "pretrain_over_finetune_clips_per_cpu_s": cpu_ratio},
        "target": f"{TARGET[0]} {TARGET[1]:g}",
        "target_met": target_met(end_to_end, *TARGET),
        "matmul_peaks": peaks(),
    }
    path = save(args.name, figures)
    r = end_to_end
    print(f"pretrain / finetune clips/s, end to end: {r['median']:.2f}x (IQR {r['q1']:.2f}-{r['q3']:.2f}); "
          f"model only: {model_only['median']:.2f}x; per CPU second: {cpu_ratio['median']:.2f}x; "
          f"target {TARGET[0]} {TARGET[1]:g}: {'met' if figures['target_met'] else 'NOT met'}; "
          f"load {load_before} -> {load_after}; machine {machine()['device']}")
    print(f"written {path}")


if __name__ == "__main__":
    main()
