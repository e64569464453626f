"""How a face moves over a clip: the expression envelope per emotion, plus distractors.

Time runs over the clip as t in [0, 1] (so onsets scale with `num_frames`); tremor and talking use frame
periods. The confusable pairs are told apart mostly here:
  surprise: a near-instant onset, a short apex, then decay;  fear: a slow onset held to the end, with tremor;
  anger: brows/lids first, then the lower face;              disgust: the lower face first, then brows/lids;
  sad: a slow, subtle onset from a neutral start;            neutral: no change (at most a faint constant sadness).
Distractors common to all classes: blinks, talking mouth, head motion, gaze shifts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s4d.data.synthetic.face import AU, UPPER_FACE, Identity, apex_aus, face_aus, intensity_range
from s4d.data.synthetic.render import Pose


@dataclass
class Timeline:
    aus: np.ndarray  # [T, len(AUS)] AU values shown on the face
    poses: list  # T Pose objects
    envelope: np.ndarray  # [T] expression strength 0..1 (the lead group for anger/disgust)


def ramp(x: np.ndarray) -> np.ndarray:
    """Smoothstep from 0 (x<=0) to 1 (x>=1)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def envelope(t, onset, rise, offset=None, fall=1.0, residual=0.0) -> np.ndarray:
    """neutral -> onset over `rise` -> apex/hold -> (optional) offset over `fall` down to `residual`."""
    up = ramp((t - onset) / max(rise, 1e-3))
    if offset is None:
        return up
    return up * (1 - (1 - residual) * ramp((t - offset) / max(fall, 1e-3)))


def expression_timing(emotion: str, rng: np.random.Generator, coverage: str) -> dict:
    """Envelope parameters for one clip (see the module docstring for the per-class story).

    coverage: "full" (neutral start, onset inside the clip), "partial" (the expression starts late, or comes
    and goes) or "apex_start" (the clip opens on the apex: no onset to see, as when a clip is cut late).
    """
    if emotion == "surprise":
        onset, rise = rng.uniform(0.1, 0.45), rng.uniform(0.02, 0.08)
        timing = dict(onset=onset, rise=rise, offset=onset + rise + rng.uniform(0.08, 0.2),
                      fall=rng.uniform(0.15, 0.3), residual=rng.uniform(0.2, 0.5))
    elif emotion in ("fear", "sad"):
        timing = dict(onset=rng.uniform(0.0, 0.3), rise=rng.uniform(0.3, 0.55))
    else:
        timing = dict(onset=rng.uniform(0.05, 0.4), rise=rng.uniform(0.12, 0.3))
        if rng.uniform() < 0.35:
            timing.update(offset=timing["onset"] + timing["rise"] + rng.uniform(0.15, 0.35),
                          fall=rng.uniform(0.15, 0.3), residual=rng.uniform(0.3, 0.6))
    if coverage == "apex_start":
        shift = timing["onset"] + timing["rise"] + rng.uniform(0.0, 0.3)
        for key in ("onset", "offset"):
            if key in timing:
                timing[key] -= shift
    elif coverage == "partial":
        if rng.uniform() < 0.5:
            timing["onset"] = rng.uniform(0.55, 0.75)
            timing.pop("offset", None)
        else:
            timing["onset"] = rng.uniform(0.0, 0.35)
            timing.update(offset=timing["onset"] + timing["rise"] + rng.uniform(0.05, 0.15),
                          fall=rng.uniform(0.1, 0.2), residual=0.0)
    return timing


def head_motion(num_frames: int, rng: np.random.Generator, max_yaw_deg: float, tremor: float) -> list:
    t = np.linspace(0, 1, num_frames)
    max_yaw = np.radians(max_yaw_deg)

    def wave(amplitude: float, cycles_lo: float, cycles_hi: float) -> np.ndarray:
        return amplitude * np.sin(2 * np.pi * rng.uniform(cycles_lo, cycles_hi) * t + rng.uniform(0, 2 * np.pi))

    # Frames are detector-aligned face crops: the head turns, but position and size jitter only a little.
    yaw = rng.uniform(-0.6, 0.6) * max_yaw + wave(rng.uniform(0, 0.15) * max_yaw, 0.2, 1.0)
    pitch = rng.uniform(-0.3, 0.3) * max_yaw + wave(rng.uniform(0, 0.06) * max_yaw, 0.2, 1.0)
    if rng.uniform() < 0.2:  # a nod
        pitch = pitch + wave(np.radians(rng.uniform(2, 5)), 1.0, 2.0)
    roll = rng.normal(0, 0.15 * max_yaw) + wave(rng.uniform(0, 0.04) * max_yaw, 0.2, 1.0)
    dx = rng.uniform(-0.025, 0.025) + rng.uniform(-0.01, 0.01) * t + rng.normal(0, tremor, num_frames)
    dy = rng.uniform(-0.025, 0.025) + rng.uniform(-0.01, 0.01) * t + rng.normal(0, tremor, num_frames)
    scale = rng.uniform(0.95, 1.05) + rng.uniform(-0.015, 0.015) * t
    gaze_x = np.full(num_frames, rng.uniform(-0.6, 0.6))
    gaze_y = np.full(num_frames, rng.uniform(-0.5, 0.5))
    if rng.uniform() < 0.5:  # one saccade
        at = rng.integers(1, num_frames) if num_frames > 1 else 0
        gaze_x[at:] = rng.uniform(-0.6, 0.6)
    return [Pose(yaw=yaw[i], pitch=pitch[i], roll=roll[i], scale=scale[i], dx=dx[i], dy=dy[i],
                 gaze_x=gaze_x[i], gaze_y=gaze_y[i]) for i in range(num_frames)]


def blinks(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    closed = np.zeros(num_frames)
    frames = np.arange(num_frames)
    for _ in range(rng.poisson(0.6 * num_frames / 16)):
        centre = rng.uniform(0, num_frames - 1)
        closed = np.maximum(closed, rng.uniform(0.7, 1.0) * np.exp(-((frames - centre) / 0.7) ** 2))
    return closed


def talking(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Mouth opening of speech: an oscillation over part of the clip (zero if this clip has none)."""
    if rng.uniform() >= 0.2:
        return np.zeros(num_frames)
    frames = np.arange(num_frames)
    start = rng.uniform(0, 0.5) * num_frames
    stop = start + rng.uniform(0.4, 1.0) * num_frames
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * frames / rng.uniform(3, 6) + rng.uniform(0, 2 * np.pi))
    return rng.uniform(0.3, 0.7) * wave * ((frames >= start) & (frames < stop))


def clip_timeline(emotion: str, identity: Identity, num_frames: int, rng: np.random.Generator,
                  coverage: str, max_yaw_deg: float, min_intensity: float, lookalike_blend: float) -> Timeline:
    t = np.linspace(0, 1, num_frames)
    apex = apex_aus(emotion, rng.uniform(*intensity_range(emotion, min_intensity)), rng, lookalike_blend)
    if emotion == "neutral":  # nothing happens; a faint sadness, if any, is there all along
        lead = lag = np.ones(num_frames)
    else:
        timing = expression_timing(emotion, rng, coverage)
        lead = envelope(t, **timing)
        lag = lead
        if emotion in ("angry", "disgust"):  # the same units, recruited (and released) in opposite order
            delay = rng.uniform(0.15, 0.3)
            lag = envelope(t - delay, **timing)
    tremor = 0.0
    if emotion == "fear":
        frames = np.arange(num_frames)
        wobble = rng.uniform(0.15, 0.3) * np.sin(2 * np.pi * frames / rng.uniform(2.5, 4) + rng.uniform(0, 6.3))
        lead = lag = np.clip(lead * (1 + wobble), 0, 1)
        tremor = 0.004
    upper_first = emotion != "disgust"
    upper_env, lower_env = (lead, lag) if upper_first else (lag, lead)
    expression = np.where(UPPER_FACE, upper_env[:, None], lower_env[:, None]) * apex[None, :]
    expression = expression + rng.normal(0, 0.015, expression.shape)  # micro-movements
    expression[:, AU["blink"]] = blinks(num_frames, rng)
    speech = talking(num_frames, rng)
    expression[:, AU["lips_part"]] += speech
    expression[:, AU["jaw_drop"]] += 0.4 * speech
    aus = np.stack([face_aus(identity, np.clip(row, 0, 1)) for row in expression])
    poses = head_motion(num_frames, rng, max_yaw_deg, tremor)
    return Timeline(aus=aus, poses=poses, envelope=lead)


def still_face(emotion: str, identity: Identity, rng: np.random.Generator, max_yaw_deg: float,
               min_intensity: float, lookalike_blend: float):
    """AUs and pose of a static image: an expression caught near (not always at) its apex."""
    caught = rng.uniform(0.6, 1.0)
    intensity = rng.uniform(*intensity_range(emotion, min_intensity)) * caught
    expression = apex_aus(emotion, intensity, rng, lookalike_blend).copy()
    if rng.uniform() < 0.05:
        expression[AU["blink"]] = rng.uniform(0.5, 1.0)
    if rng.uniform() < 0.1:  # caught mid-word
        expression[AU["lips_part"]] += rng.uniform(0.2, 0.6)
    pose = head_motion(1, rng, max_yaw_deg, 0.0)[0]
    return face_aus(identity, np.clip(expression, 0, 1)), pose

