"""Label sets of the supported datasets, each in the dataset's own index order.

A manifest stores `label` (index), `label_name` and `label_set` (a key of LABEL_SETS). The names are the
dataset's own words ("happiness" in RAF-DB, "happy" in DFEW); `canonical_name` maps them onto one vocabulary
so results can be compared across datasets.

The `folder` reader builds an ad-hoc set from class folder names. Its key carries the classes itself
(`folder:angry,happy,sad`), so a manifest CSV stays self-describing; `classes_of` resolves both kinds.
"""
from __future__ import annotations

LABEL_SETS: dict[str, list[str]] = {
    # DFEW (and the synthetic video set): 0-based form of the official 1..7 files.
    "dfew7": ["happy", "sad", "neutral", "angry", "surprise", "disgust", "fear"],
    # FERV39K: alphabetical, matches the Emotion level of its clip paths.
    "ferv39k7": ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"],
    # MAFW single-label, 11 classes, alphabetical.
    "mafw11": ["anger", "anxiety", "contempt", "disappointment", "disgust", "fear", "happiness",
               "helplessness", "neutral", "sadness", "surprise"],
    # RAF-DB basic (and the synthetic image set): files say 1..7, stored here 0-based.
    "rafdb7": ["surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"],
    "affectnet7": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"],
    "affectnet8": ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"],
    # FERPlus vote columns in file order (unknown and NF are not classes).
    "ferplus8": ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"],
}

# Dataset words -> one shared vocabulary. Names not listed are already canonical.
CANONICAL_NAMES: dict[str, str] = {
    "happiness": "happy",
    "anger": "angry",
    "sadness": "sad",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
    "contemptuous": "contempt",
    "neutrality": "neutral",
}

ADHOC_PREFIX = "folder:"


def canonical_name(name: str) -> str:
    """`happiness` -> `happy`, `Anger` -> `angry`; unknown names come back lower-cased."""
    name = name.strip().lower()
    return CANONICAL_NAMES.get(name, name)


def adhoc_key(classes: list[str]) -> str:
    """The label-set key for a user's class folders (already sorted by the caller)."""
    bad = [c for c in classes if "," in c]
    if bad:
        raise ValueError(f"class names may not contain ',': {bad}")
    return ADHOC_PREFIX + ",".join(classes)


def classes_of(label_set: str) -> list[str]:
    """Class names of a LABEL_SETS key or an ad-hoc `folder:...` key, by index."""
    if label_set in LABEL_SETS:
        return LABEL_SETS[label_set]
    if label_set.startswith(ADHOC_PREFIX) and len(label_set) > len(ADHOC_PREFIX):
        return label_set[len(ADHOC_PREFIX):].split(",")
    raise KeyError(f"unknown label set {label_set!r}; known: {', '.join(LABEL_SETS)} or 'folder:a,b,...'")
