"""Which samples the dataset holds: identities, identity-disjoint splits, labels and file names.

The plan depends only on the config (never on rendering), so every worker rebuilds the same plan and
sample `index` always means the same clip/image. Video identities are 0..V-1, image identities V..V+I-1,
identities of the unlabelled pretraining pool V+I..V+I+P-1: the pool shares no person with any labelled split.
A pool sample's expression is drawn like a labelled one's (it decides the rendered face) and is never written.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from s4d.config import SyntheticConfig
from s4d.data.synthetic.face import CLASS_WEIGHTS, EMOTIONS

SPLITS = ("train", "val", "test")
# Independent random streams: rng([seed, stream, index]).
STREAM = {"plan": 0, "identity": 1, "clip": 2, "image": 3, "pool_plan": 4, "pool_clip": 5, "pool_image": 6}


def stream_rng(seed: int, stream: str, index: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, STREAM[stream], index])


@dataclass(frozen=True)
class Sample:
    name: str  # clip: "00001" (its folder); image: "train_00001" (RAF-DB name without "_aligned"); pool: "00001"
    identity: int
    split: str  # train / val / test; "pool" for the unlabelled pool
    emotion: str  # one of face.EMOTIONS


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> dict:
    """Identities per split; val and test get at least one identity when asked for and n allows it."""
    test = round(n * test_fraction)
    val = round(n * val_fraction)
    if n >= 3:
        test = max(test, 1 if test_fraction > 0 else 0)
        val = max(val, 1 if val_fraction > 0 else 0)
    train = n - val - test
    if train < 1:
        raise ValueError(f"{n} identities leave none for training (val {val_fraction}, test {test_fraction})")
    return {"train": train, "val": val, "test": test}


def class_quota(n: int, rng: np.random.Generator) -> list:
    """n labels with the mild class skew of CLASS_WEIGHTS (largest-remainder rounding), shuffled."""
    weights = np.array([CLASS_WEIGHTS[e] for e in EMOTIONS])
    exact = n * weights / weights.sum()
    counts = np.floor(exact).astype(int)
    for k in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[k] += 1
    labels = [e for e, c in zip(EMOTIONS, counts) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


def _assign(identities: np.ndarray, per_identity: int, fractions: tuple, rng, test: int = 0) -> dict:
    """split -> list of (identity, emotion), labels balanced within each split; test > 0: that many of the
    identities form the test split, the others train and val."""
    order = rng.permutation(identities)
    if test:
        sizes = {**split_sizes(len(identities) - test, fractions[0], 0.0), "test": test}
    else:
        sizes = split_sizes(len(identities), *fractions)
    out, start = {}, 0
    for split in SPLITS:
        ids = np.sort(order[start:start + sizes[split]])
        start += sizes[split]
        slots = [int(i) for i in ids for _ in range(per_identity)]
        out[split] = list(zip(slots, class_quota(len(slots), rng)))
    return out


def image_identity_count(cfg: SyntheticConfig) -> int:
    return max(1, round(cfg.video_identities * cfg.image_identity_ratio))


@lru_cache(maxsize=8)
def _plans(seed, video_identities, clips_per_identity, image_identities, images_per_identity, fractions,
           tests=(0, 0)):
    rng = stream_rng(seed, "plan")
    video_identities += tests[0]
    videos = _assign(np.arange(video_identities), clips_per_identity, fractions, rng, tests[0])
    clips = [(ident, split, emo) for split in SPLITS for ident, emo in videos[split]]
    clip_order = rng.permutation(len(clips))  # clip ids interleave splits and people, as in DFEW
    video_plan = tuple(Sample(f"{k + 1:05d}", *clips[j]) for k, j in enumerate(clip_order))

    image_ids = np.arange(video_identities, video_identities + image_identities + tests[1])
    images = _assign(image_ids, images_per_identity, fractions, rng, tests[1])
    image_plan = []
    for prefix, splits in (("train", ("train", "val")), ("test", ("test",))):
        members = [(ident, split, emo) for split in splits for ident, emo in images[split]]
        for k, j in enumerate(rng.permutation(len(members))):
            image_plan.append(Sample(f"{prefix}_{k + 1:05d}", *members[j]))
    return video_plan, tuple(image_plan)


def plans(cfg: SyntheticConfig) -> tuple:
    """(video samples, image samples); a clip's index is its id - 1; images list train_* then test_*."""
    return _plans(cfg.seed, cfg.video_identities, cfg.clips_per_identity, image_identity_count(cfg),
                  cfg.images_per_identity, (cfg.val_fraction, cfg.test_fraction),
                  (cfg.test_identities, cfg.image_test_identities))


def video_plan(cfg: SyntheticConfig) -> tuple:
    return plans(cfg)[0]


def image_plan(cfg: SyntheticConfig) -> tuple:
    return plans(cfg)[1]


# ----------------------------------------------------------------------------------- unlabelled pool
def pool_identity_ids(cfg: SyntheticConfig) -> range:
    """Pool identities: round(pool_identity_ratio x all labelled identities), numbered after the last of them
    (taken from the labelled plans, so the pool stays disjoint however those are built)."""
    videos, images = plans(cfg)
    labelled = {s.identity for s in videos} | {s.identity for s in images}
    first = max(labelled) + 1
    return range(first, first + round(len(labelled) * cfg.pool_identity_ratio))


@lru_cache(maxsize=8)
def _pool_plans(seed, identities, clips_per_identity, images_per_identity):
    rng = stream_rng(seed, "pool_plan")
    out = []
    for per_identity in (clips_per_identity, images_per_identity):
        slots = [i for i in identities for _ in range(per_identity)]
        members = list(zip(slots, class_quota(len(slots), rng)))
        order = rng.permutation(len(members))  # names follow neither identity nor expression
        out.append(tuple(Sample(f"{k + 1:05d}", members[j][0], "pool", members[j][1]) for k, j in enumerate(order)))
    return tuple(out)


def pool_plans(cfg: SyntheticConfig) -> tuple:
    """(pool clips, pool stills), each named 00001... in a shuffled order."""
    return _pool_plans(cfg.seed, pool_identity_ids(cfg), cfg.pool_clips_per_identity, cfg.pool_images_per_identity)


KINDS = {"clip": video_plan, "image": image_plan, "pool_clip": lambda cfg: pool_plans(cfg)[0],
         "pool_image": lambda cfg: pool_plans(cfg)[1]}


def sample_at(cfg: SyntheticConfig, kind: str, index: int) -> Sample:
    """Sample `index` of a kind (clip, image, pool_clip, pool_image); the kind is also its random stream."""
    return KINDS[kind](cfg)[index]
