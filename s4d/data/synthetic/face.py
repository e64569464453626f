"""What a synthetic face is: identity parameters, action-unit controls and the 7 emotion prototypes.

Everything here is plain numbers; drawing lives in render.py, motion over time in dynamics.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Emotions in DFEW label order (the index is the DFEW 0-based label).
EMOTIONS = ("happy", "sad", "neutral", "angry", "surprise", "disgust", "fear")
# RAF-DB labels are 1..7 in its own order.
RAFDB_LABEL = {"surprise": 1, "fear": 2, "disgust": 3, "happy": 4, "sad": 5, "angry": 6, "neutral": 7}
# Pairs blended towards each other so they look alike in a single frame; dynamics.py separates them in
# time. The third confusable pair, sad/neutral, overlaps through subtle sadness and faintly sad neutral faces.
LOOKALIKE = {"fear": "surprise", "surprise": "fear", "disgust": "angry", "angry": "disgust"}
# Mild class skew (relative frequencies), like real in-the-wild data: happy/neutral common, disgust rare.
CLASS_WEIGHTS = {"happy": 1.25, "sad": 1.1, "neutral": 1.15, "angry": 1.0, "surprise": 0.9,
                 "disgust": 0.75, "fear": 0.9}

# Action-unit-like controls, each in [0, 1]. FACS numbers in the comments.
AUS = (
    "inner_brow_raise",    # AU1
    "outer_brow_raise",    # AU2
    "brow_lower",          # AU4
    "lid_raise",           # AU5
    "lid_tighten",         # AU7
    "cheek_raise",         # AU6
    "nose_wrinkle",        # AU9
    "upper_lip_raise",     # AU10
    "lip_corner_pull",     # AU12
    "lip_corner_depress",  # AU15
    "lip_stretch",         # AU20
    "lip_press",           # AU23/24
    "lips_part",           # AU25
    "jaw_drop",            # AU26
    "blink",               # AU45, a distractor rather than an expression
)
AU = {name: i for i, name in enumerate(AUS)}
# Upper-face units (brows, lids); the rest is the lower face. Anger and disgust recruit them in opposite order.
UPPER_FACE = np.array([name in ("inner_brow_raise", "outer_brow_raise", "brow_lower", "lid_raise", "lid_tighten")
                       for name in AUS])


def au_vector(**values: float) -> np.ndarray:
    vec = np.zeros(len(AUS), dtype=np.float64)
    for name, value in values.items():
        vec[AU[name]] = value
    return vec


# Apex configurations at full intensity (loosely after EMFACS). The confusable pairs share most units.
PROTOTYPES = {
    "happy": au_vector(cheek_raise=0.8, lid_tighten=0.3, lip_corner_pull=1.0, lips_part=0.5),
    "sad": au_vector(inner_brow_raise=0.85, brow_lower=0.35, lid_tighten=0.15, lip_corner_depress=0.9,
                     lip_press=0.2),
    "neutral": au_vector(),
    "angry": au_vector(brow_lower=1.0, lid_raise=0.3, lid_tighten=0.55, nose_wrinkle=0.35, upper_lip_raise=0.2,
                       lip_press=0.7),
    "disgust": au_vector(brow_lower=0.65, lid_tighten=0.45, nose_wrinkle=0.85, upper_lip_raise=0.7,
                         lip_corner_depress=0.3, lip_press=0.3),
    "surprise": au_vector(inner_brow_raise=0.9, outer_brow_raise=0.85, lid_raise=0.9, lips_part=0.7, jaw_drop=0.7),
    "fear": au_vector(inner_brow_raise=0.9, outer_brow_raise=0.55, brow_lower=0.3, lid_raise=0.85, lip_stretch=0.6,
                      lips_part=0.6, jaw_drop=0.45),
}

# Skin tones (RGB) from light to dark; identities interpolate between neighbours.
SKIN_TONES = np.array([(255, 224, 196), (241, 194, 167), (224, 172, 125), (198, 134, 90), (160, 102, 62),
                       (120, 74, 44), (86, 54, 34)], dtype=np.float64)
HAIR_COLORS = np.array([(20, 16, 14), (60, 40, 28), (110, 72, 40), (170, 120, 70), (220, 190, 130),
                        (150, 60, 30), (150, 150, 150), (235, 235, 230)], dtype=np.float64)
IRIS_COLORS = np.array([(60, 40, 25), (100, 70, 40), (70, 110, 60), (70, 110, 160), (40, 30, 25)],
                       dtype=np.float64)
HAIR_STYLES = ("bald", "short", "fringe", "side_part", "long", "curly")
BEARDS = ("none", "stubble", "moustache", "full")


@dataclass
class Identity:
    """One person's fixed appearance and expression habits. Lengths are in face units (face half-width ~1)."""
    face_width: float
    face_height: float
    jaw_taper: float        # 0 = square jaw, 1 = pointed chin
    skin: np.ndarray        # RGB
    lip_color: np.ndarray   # RGB
    hair_color: np.ndarray  # RGB (brows too)
    iris_color: np.ndarray  # RGB
    eye_y: float
    eye_sep: float
    eye_width: float
    eye_open: float         # upper-lid height at rest
    eye_tilt: float         # outer corner up (+) or down (-)
    brow_gap: float
    brow_arch: float
    brow_thick: float
    nose_y: float
    nose_width: float
    mouth_y: float
    mouth_width: float
    lip_upper: float
    lip_lower: float
    hair_style: str
    hairline: float         # forehead height factor
    beard: str
    glasses: bool
    glasses_round: bool
    glasses_color: np.ndarray
    shirt_color: np.ndarray
    resting: np.ndarray     # AU offsets of the resting face (a "resting sad face", a frown, a half smile)
    gains: np.ndarray       # per-AU expressiveness multipliers (idiosyncrasy)


def _palette_pick(rng: np.random.Generator, palette: np.ndarray, jitter: float) -> np.ndarray:
    """A colour between two neighbouring palette entries, with a little per-channel jitter."""
    pos = rng.uniform(0, len(palette) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(palette) - 1)
    color = palette[lo] + (pos - lo) * (palette[hi] - palette[lo])
    return np.clip(color + rng.normal(0, jitter, 3), 0, 255)


def sample_identity(rng: np.random.Generator, glasses_rate: float) -> Identity:
    skin = _palette_pick(rng, SKIN_TONES, 6)
    hair = HAIR_COLORS[rng.integers(len(HAIR_COLORS))] + rng.normal(0, 8, 3)
    lip = np.clip(skin * rng.uniform(0.72, 0.88) + np.array([40, 0, 5]) * rng.uniform(0.3, 1.0), 0, 255)

    resting = np.zeros(len(AUS))  # most people's resting face shows something; only a change is an expression
    habit = rng.uniform()
    if habit < 0.25:  # resting sad face: sad and neutral clips of this person look alike in a single frame
        resting[[AU["inner_brow_raise"], AU["lip_corner_depress"]]] = rng.uniform(0.2, 0.5, 2)
    elif habit < 0.42:  # resting frown (looks angry)
        resting[[AU["brow_lower"], AU["lid_tighten"]]] = rng.uniform(0.2, 0.45, 2)
    elif habit < 0.57:  # resting half smile
        resting[AU["lip_corner_pull"]] = rng.uniform(0.15, 0.35)
    elif habit < 0.67:  # wide-eyed, raised brows (looks surprised)
        resting[[AU["lid_raise"], AU["outer_brow_raise"]]] = rng.uniform(0.2, 0.4, 2)
    gains = rng.uniform(0.6, 1.3, len(AUS))
    gains[AU["blink"]] = 1.0

    return Identity(
        face_width=rng.uniform(0.88, 1.08),
        face_height=rng.uniform(1.2, 1.42),
        jaw_taper=rng.uniform(0.1, 0.75),
        skin=skin,
        lip_color=lip,
        hair_color=np.clip(hair, 0, 255),
        iris_color=IRIS_COLORS[rng.integers(len(IRIS_COLORS))],
        eye_y=rng.uniform(-0.2, -0.06),
        eye_sep=rng.uniform(0.36, 0.46),
        eye_width=rng.uniform(0.17, 0.23),
        eye_open=rng.uniform(0.07, 0.1),
        eye_tilt=rng.uniform(-0.03, 0.04),
        brow_gap=rng.uniform(0.17, 0.25),
        brow_arch=rng.uniform(0.02, 0.07),
        brow_thick=rng.uniform(0.035, 0.07),
        nose_y=rng.uniform(0.28, 0.38),
        nose_width=rng.uniform(0.13, 0.2),
        mouth_y=rng.uniform(0.6, 0.72),
        mouth_width=rng.uniform(0.26, 0.36),
        lip_upper=rng.uniform(0.035, 0.06),
        lip_lower=rng.uniform(0.045, 0.08),
        hair_style=HAIR_STYLES[rng.integers(len(HAIR_STYLES))],
        hairline=rng.uniform(0.55, 0.8),
        beard=BEARDS[rng.choice(len(BEARDS), p=[0.7, 0.12, 0.08, 0.1])],
        glasses=bool(rng.uniform() < glasses_rate),
        glasses_round=bool(rng.uniform() < 0.5),
        glasses_color=rng.uniform(10, 120, 3) if rng.uniform() < 0.7 else rng.uniform(120, 230, 3),
        shirt_color=rng.uniform(20, 235, 3),
        resting=resting,
        gains=gains,
    )


def apex_aus(emotion: str, intensity: float, rng: np.random.Generator, lookalike_blend: float) -> np.ndarray:
    """The expression part of the apex AU vector of one sample (before the identity's gains and resting offsets).

    Each sample jitters its prototype and blends it part-way towards its confusable partner
    (up to `lookalike_blend`), so fear/surprise and anger/disgust overlap in appearance; the time course
    (dynamics.py) tells them apart.
    """
    if emotion == "neutral":  # a third of neutral faces look faintly sad
        faint = rng.uniform(0.1, 0.3) if rng.uniform() < 0.3 else 0.0
        return faint * PROTOTYPES["sad"]
    aus = PROTOTYPES[emotion]
    partner = LOOKALIKE.get(emotion)  # happy has none: it stays the easy class, as in real data
    if partner:
        aus = aus + rng.uniform(0.0, lookalike_blend) * (PROTOTYPES[partner] - aus)
    aus = aus * rng.uniform(0.8, 1.2, len(AUS))
    return np.clip(aus * intensity, 0, 1)


def intensity_range(emotion: str, min_intensity: float) -> tuple[float, float]:
    """Apex intensities are drawn from [min_intensity, 1]; sad is subtler (the neutral look-alike)."""
    return (0.85 * min_intensity, 0.75) if emotion == "sad" else (min_intensity, 1.0)


def face_aus(identity: Identity, expression: np.ndarray) -> np.ndarray:
    """Final AU values shown on the face: the person's resting face plus their own gain on the expression."""
    return np.clip(identity.resting + identity.gains * expression, 0, 1)
