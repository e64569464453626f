"""Everything in the picture that is not the face: a cluttered background and occluders in front of the face."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from s4d.data.synthetic.render import AA, ONE, SHIFT, mix, rgb


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A room-like backdrop: a colour gradient, a few out-of-focus shapes (frames, shelves, lamps, edges)."""
    c0, c1 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:size, 0:size] / size
    ramp_ = (np.cos(angle) * xs + np.sin(angle) * ys + 1) / 2
    img = (c0 + (c1 - c0) * ramp_[..., None]).astype(np.uint8)
    for _ in range(rng.integers(2, 9)):
        color = rgb(mix(rng.uniform(0, 255, 3), c0, rng.uniform(0, 0.6)))
        kind = rng.integers(4)
        p = (rng.uniform(-0.1, 1.1, 2) * size * ONE).astype(np.int32)
        extent = int(rng.uniform(0.05, 0.45) * size * ONE)
        if kind == 0:  # rectangle: picture frame, window, shelf
            q = p + (rng.uniform(0.2, 1.0, 2) * extent).astype(np.int32)
            pts = np.array([p, (q[0], p[1]), q, (p[0], q[1])], np.int32)
            cv2.fillPoly(img, [pts], color, AA, SHIFT)
        elif kind == 1:  # lamp / ball
            cv2.circle(img, tuple(int(v) for v in p), extent // 2, color, -1, AA, SHIFT)
        elif kind == 2:  # edge of furniture, door frame
            q = (rng.uniform(-0.1, 1.1, 2) * size * ONE).astype(np.int32)
            cv2.line(img, tuple(int(v) for v in p), tuple(int(v) for v in q), color,
                     max(1, int(rng.uniform(0.005, 0.04) * size)), AA, SHIFT)
        else:  # frame outline
            q = p + (rng.uniform(0.3, 1.0, 2) * extent).astype(np.int32)
            pts = np.array([p, (q[0], p[1]), q, (p[0], q[1])], np.int32)
            cv2.polylines(img, [pts], True, color, max(1, int(0.015 * size)), AA, SHIFT)
    sigma = rng.uniform(0, 0.02) * size  # depth of field
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    return img


@dataclass
class Occluder:
    kind: str  # hand, phone, cup, scarf
    start: np.ndarray  # centre (canvas fraction) at the first frame
    end: np.ndarray  # centre at the last frame (equal to start for a still occluder)
    size: float  # canvas fraction
    angle: float  # radians
    color: np.ndarray  # RGB


def sample_occluder(rng: np.random.Generator, skin: np.ndarray, moving: bool) -> Occluder:
    kind = ("hand", "phone", "cup", "scarf")[rng.choice(4, p=[0.5, 0.2, 0.15, 0.15])]
    target = np.array([rng.uniform(0.3, 0.7), rng.uniform(0.4, 0.85)])  # somewhere over eyes .. chin
    if kind == "scarf":
        target = np.array([0.5, rng.uniform(0.75, 0.88)])
    start = end = target
    if moving:  # slides in from, or out to, a border over the clip
        outside = target + rng.choice([-1, 1]) * np.array([0.6, 0.0]) if rng.uniform() < 0.5 else \
            target + np.array([0.0, 0.7])
        start, end = (outside, target) if rng.uniform() < 0.5 else (target, outside)
    color = np.clip(skin * rng.uniform(0.85, 1.1), 0, 255) if kind == "hand" else rng.uniform(10, 245, 3)
    return Occluder(kind=kind, start=start, end=end, size=rng.uniform(0.18, 0.3),
                    angle=rng.uniform(-0.6, 0.6), color=color)


def draw_occluder(img: np.ndarray, occ: Occluder, t: float) -> None:
    """Draw the occluder at clip time t (0..1) onto the canvas."""
    size = img.shape[0]
    centre = (occ.start + (occ.end - occ.start) * t) * size
    scale = occ.size * size
    rot = np.array([[np.cos(occ.angle), -np.sin(occ.angle)], [np.sin(occ.angle), np.cos(occ.angle)]])

    def place(pts) -> np.ndarray:
        return np.round((centre + scale * np.asarray(pts, float) @ rot.T) * ONE).astype(np.int32)

    color = rgb(occ.color)
    if occ.kind == "hand":  # palm plus four fingers and a thumb pointing up
        theta = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        cv2.fillPoly(img, [place(np.c_[0.45 * np.cos(theta), 0.4 * np.sin(theta) + 0.3])], color, AA, SHIFT)
        for k, fx in enumerate((-0.3, -0.1, 0.1, 0.3)):
            tip = place([(fx, -0.45 - 0.1 * (k in (1, 2))), (fx, 0.1)])
            cv2.line(img, tuple(map(int, tip[0])), tuple(map(int, tip[1])), color, max(1, int(0.17 * scale)),
                     AA, SHIFT)
        thumb = place([(0.45, 0.3), (0.7, -0.05)])
        cv2.line(img, tuple(map(int, thumb[0])), tuple(map(int, thumb[1])), color, max(1, int(0.18 * scale)),
                 AA, SHIFT)
        line = rgb(mix(occ.color, (0, 0, 0), 0.3))
        for fx in (-0.2, 0.0, 0.2):
            gap = place([(fx, -0.3), (fx, 0.1)])
            cv2.line(img, tuple(map(int, gap[0])), tuple(map(int, gap[1])), line, 1, AA, SHIFT)
    elif occ.kind == "phone":
        cv2.fillPoly(img, [place([(-0.3, -0.55), (0.3, -0.55), (0.3, 0.55), (-0.3, 0.55)])], color, AA, SHIFT)
        cv2.fillPoly(img, [place([(-0.25, -0.45), (0.25, -0.45), (0.25, 0.45), (-0.25, 0.45)])],
                     rgb(mix(occ.color, (0, 0, 0), 0.7)), AA, SHIFT)
    elif occ.kind == "cup":
        cv2.fillPoly(img, [place([(-0.35, -0.4), (0.35, -0.4), (0.28, 0.5), (-0.28, 0.5)])], color, AA, SHIFT)
        handle = place([(0.33, -0.2), (0.55, -0.1), (0.55, 0.15), (0.3, 0.25)])
        cv2.polylines(img, [handle], False, color, max(1, int(0.08 * scale)), AA, SHIFT)
    else:  # scarf across the lower face
        cv2.fillPoly(img, [place([(-1.6, -0.2), (1.6, -0.35), (1.7, 0.6), (-1.7, 0.6)])], color, AA, SHIFT)
        stripe = rgb(mix(occ.color, (255, 255, 255), 0.35))
        stripe_pts = place([(-1.6, 0.05), (1.6, -0.1)])
        cv2.line(img, tuple(map(int, stripe_pts[0])), tuple(map(int, stripe_pts[1])), stripe,
                 max(1, int(0.08 * scale)), AA, SHIFT)
