"""Drawing one face (identity + AU values + head pose) with anti-aliased OpenCV primitives.

The face lives in "face units" (x right, y down, z towards the camera; face half-width ~1, eyes near
y=-0.13, mouth near y=0.66). Points sit on an ellipsoid-like head surface, are rotated by yaw/pitch/roll
and projected orthographically, so yaw slides the nose over the cheek and hides the far ear. The canvas
is RGB and drawn `supersample` times larger than the output; camera.py shrinks it with INTER_AREA.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from s4d.data.synthetic.face import AU, Identity

SHIFT = 4  # OpenCV fixed-point bits: coordinates with 1/16-pixel precision
ONE = 1 << SHIFT
FACE_CENTER_Y = 0.52  # canvas fraction
HEAD_DEPTH = 0.75  # how far the face bulges towards the camera, face units
AA = cv2.LINE_AA


@dataclass
class Pose:
    yaw: float = 0.0  # radians, + turns the face to the image right
    pitch: float = 0.0  # radians, + lifts the chin
    roll: float = 0.0  # radians, in-plane tilt
    scale: float = 1.0
    dx: float = 0.0  # translation, canvas fraction
    dy: float = 0.0
    gaze_x: float = 0.0  # iris offset, -1..1
    gaze_y: float = 0.0


def rotation(pose: Pose) -> np.ndarray:
    cy, sy = np.cos(pose.yaw), np.sin(pose.yaw)
    cp, sp = np.cos(pose.pitch), np.sin(pose.pitch)
    cr, sr = np.cos(pose.roll), np.sin(pose.roll)
    yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return roll @ pitch @ yaw


class Projector:
    """Face units -> fixed-point canvas pixels for one frame."""

    def __init__(self, identity: Identity, pose: Pose, size: int, face_scale: float, rotate: bool = True):
        self.width, self.height = identity.face_width, identity.face_height
        self.rot = rotation(pose) if rotate else np.eye(3)
        self.unit = face_scale * size * pose.scale
        self.center = np.array([size * (0.5 + pose.dx), size * (FACE_CENTER_Y + pose.dy)])

    def surface_z(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        inside = 1.0 - (x / self.width) ** 2 - (y / (self.height * 1.05)) ** 2
        return HEAD_DEPTH * np.sqrt(np.maximum(inside, 0.0))

    def __call__(self, x, y, dz=0.0, surface: bool = True) -> np.ndarray:
        """Points (x, y) on the head surface (+ dz towards the camera) -> int32 [N, 2] fixed-point pixels."""
        x, y = np.asarray(x, float), np.asarray(y, float)
        z = self.surface_z(x, y) + dz if surface else dz
        r, s = self.rot, self.unit * ONE
        out = np.empty((x.size, 2))
        out[:, 0] = self.center[0] * ONE + s * (r[0, 0] * x + r[0, 1] * y + r[0, 2] * z)
        out[:, 1] = self.center[1] * ONE + s * (r[1, 0] * x + r[1, 1] * y + r[1, 2] * z)
        return np.rint(out).astype(np.int32)

    def px(self, length: float) -> int:
        """A line thickness in whole canvas pixels (OpenCV thickness is not fixed-point)."""
        return max(1, int(round(length * self.unit)))


def join(*parts) -> np.ndarray:
    """Arrays and scalars end to end (like np.r_, without its slow index parsing)."""
    return np.concatenate([np.atleast_1d(p) for p in parts])


def rgb(color) -> tuple:
    return tuple(float(c) for c in color)


def mix(a, b, t: float) -> np.ndarray:
    """Colour a blended towards b by t (clamped to 0..1): a translucent mark drawn as an opaque one."""
    a = np.asarray(a, float)
    return a + (np.asarray(b, float) - a) * min(1.0, max(0.0, float(t)))


def fill(img, pts, color) -> None:
    cv2.fillPoly(img, [pts], rgb(color), AA, SHIFT)


def stroke(img, pts, color, thickness: int, closed: bool = False) -> None:
    cv2.polylines(img, [pts], closed, rgb(color), thickness, AA, SHIFT)


@lru_cache(maxsize=None)
def unit_grid(n: int) -> np.ndarray:
    """n evenly spaced parameters in [0, 1] (cached: the same few grids are used for every frame)."""
    return np.linspace(0.0, 1.0, n)


@lru_cache(maxsize=None)
def circle(n: int) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


def through(p0, p1, p2, n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic curve from p0 to p2 passing through p1 at its middle; returns (x, y) arrays."""
    t = unit_grid(n)
    a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t ** 2
    xs = [p0[0], 2 * p1[0] - 0.5 * (p0[0] + p2[0]), p2[0]]
    ys = [p0[1], 2 * p1[1] - 0.5 * (p0[1] + p2[1]), p2[1]]
    return a * xs[0] + b * xs[1] + c * xs[2], a * ys[0] + b * ys[1] + c * ys[2]


def ellipse_xy(cx, cy, ax, ay, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    cos, sin = circle(n)
    return cx + ax * cos, cy + ay * sin


# --------------------------------------------------------------------------------------------- parts
def outline_xy(idt: Identity, jaw_drop: float, n: int = 48, grow: float = 1.0):
    """Face contour: an ellipse whose lower half tapers to the chin and stretches when the jaw drops."""
    c, s = circle(n)
    lower = np.maximum(s, 0.0)
    x = idt.face_width * c * (1 - 0.4 * idt.jaw_taper * lower ** 2) * grow
    y = idt.face_height * s * grow + 0.3 * jaw_drop * lower ** 3
    return x, y


def draw_body(img, proj_body: Projector, idt: Identity) -> None:
    w, h = idt.face_width, idt.face_height
    neck_x = np.array([-0.42 * w, 0.42 * w, 0.5 * w, -0.5 * w])
    neck_y = np.array([0.5 * h, 0.5 * h, h + 0.9, h + 0.9])
    fill(img, proj_body(neck_x, neck_y, surface=False), idt.skin * 0.8)
    shirt_x = np.array([-2.6, -2.1, -0.55 * w, 0.0, 0.55 * w, 2.1, 2.6])
    shirt_y = np.array([3.0, h + 0.55, h + 0.35, h + 0.7, h + 0.35, h + 0.55, 3.0])
    fill(img, proj_body(shirt_x, shirt_y, surface=False), idt.shirt_color)


def draw_hair_back(img, proj: Projector, idt: Identity) -> None:
    if idt.hair_style == "bald":
        return
    w, h = idt.face_width, idt.face_height
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    bumps = 0.07 * np.abs(np.sin(6 * t)) if idt.hair_style == "curly" else 0.0
    x = (w * 1.1 + bumps) * np.cos(t)
    y = np.minimum(-0.08 + (h * 1.04 + bumps) * np.sin(t), idt.eye_y + 0.2)  # short hair ends at the ears
    fill(img, proj(x, y, dz=-0.3, surface=False), idt.hair_color)
    if idt.hair_style == "long":
        lx = np.array([-1.12 * w, 1.12 * w, 1.3 * w, -1.3 * w])
        ly = np.array([-0.3, -0.3, h + 0.45, h + 0.45])
        fill(img, proj(lx, ly, dz=-0.3, surface=False), idt.hair_color * 0.92)


def draw_ears(img, proj: Projector, idt: Identity) -> None:
    for side in (-1, 1):
        x, y = ellipse_xy(side * idt.face_width * 0.97, idt.eye_y + 0.12, 0.11, 0.2, 16)
        fill(img, proj(x, y, dz=-0.1, surface=False), idt.skin * 0.9)


def draw_skin(img, proj: Projector, idt: Identity, aus: np.ndarray) -> None:
    x, y = outline_xy(idt, aus[AU["jaw_drop"]])
    fill(img, proj(x, y, surface=False), idt.skin)


def draw_beard(img, proj: Projector, idt: Identity, aus: np.ndarray) -> None:
    if idt.beard not in ("stubble", "full"):
        return
    x, y = outline_xy(idt, aus[AU["jaw_drop"]], n=48)
    lower = y > idt.nose_y + 0.05
    order = np.argsort(np.arctan2(y[lower], x[lower]))
    bx, by = x[lower][order], y[lower][order]
    mw = idt.mouth_width
    inner_x = np.array([-(mw + 0.1), 0.0, mw + 0.1])
    inner_y = np.array([idt.nose_y + 0.1, idt.nose_y + 0.13, idt.nose_y + 0.1])
    px_ = np.concatenate([bx, inner_x])
    py_ = np.concatenate([by, inner_y])
    color = idt.hair_color if idt.beard == "full" else mix(idt.skin, idt.hair_color, 0.3)
    fill(img, proj(px_, py_), color)


def draw_cheeks_and_folds(img, proj: Projector, idt: Identity, aus: np.ndarray, mouth_corner) -> None:
    cheek, pull = aus[AU["cheek_raise"]], aus[AU["lip_corner_pull"]]
    wrinkle, lip_raise = aus[AU["nose_wrinkle"]], aus[AU["upper_lip_raise"]]
    depress = aus[AU["lip_corner_depress"]]
    corner_x, corner_y = mouth_corner
    for side in (-1, 1):
        if cheek > 0.05:  # raised cheek "apples"
            x, y = ellipse_xy(side * (idt.eye_sep + 0.06), idt.nose_y - 0.02 - 0.04 * cheek, 0.17, 0.1, 16)
            fill(img, proj(x, y), mix(idt.skin, (255, 170, 160), 0.05 + 0.12 * cheek))
        fold = 0.1 + 0.5 * cheek + 0.3 * pull + 0.45 * wrinkle + 0.3 * lip_raise
        fx, fy = through((side * (idt.nose_width + 0.04), idt.nose_y - 0.03),
                         (side * (idt.nose_width + 0.13 + 0.06 * cheek), idt.nose_y + 0.13),
                         (side * (corner_x + 0.07), corner_y + 0.03), 10)
        stroke(img, proj(fx, fy), mix(idt.skin, (0, 0, 0), min(0.45, 0.5 * fold)), proj.px(0.02))
        if depress > 0.1:  # lines pulled down from the mouth corners
            mx, my = through((side * (corner_x + 0.02), corner_y + 0.03),
                             (side * (corner_x + 0.05), corner_y + 0.1),
                             (side * (corner_x + 0.05), corner_y + 0.2), 6)
            stroke(img, proj(mx, my), mix(idt.skin, (0, 0, 0), 0.35 * depress), proj.px(0.018))


def draw_nose(img, proj: Projector, idt: Identity, aus: np.ndarray) -> None:
    wrinkle = aus[AU["nose_wrinkle"]]
    nw = idt.nose_width * (1 + 0.25 * wrinkle)
    ny = idt.nose_y - 0.06 * wrinkle - 0.03 * aus[AU["upper_lip_raise"]]
    dark = mix(idt.skin, (0, 0, 0), 0.25)
    for side in (-1, 1):  # bridge shading, projecting more towards the tip
        ramp_ = unit_grid(6)
        by = idt.eye_y + 0.03 + (ny - 0.13 - idt.eye_y) * ramp_
        bx = side * (0.07 + (0.6 * nw - 0.07) * ramp_)
        stroke(img, proj(bx, by, dz=0.22 * ramp_), mix(idt.skin, (0, 0, 0), 0.1), proj.px(0.02))
    tx, ty = ellipse_xy(0, ny - 0.04, 0.07, 0.055, 14)
    fill(img, proj(tx, ty, dz=0.25), mix(idt.skin, (255, 255, 255), 0.12))
    wx, wy = through((-nw, ny - 0.05), (0, ny + 0.03), (nw, ny - 0.05), 12)
    stroke(img, proj(wx, wy, dz=0.18), dark, proj.px(0.022))
    for side in (-1, 1):
        nx, nyy = ellipse_xy(side * nw * 0.45, ny, 0.045, 0.022, 12)
        fill(img, proj(nx, nyy, dz=0.2), mix(idt.skin, (0, 0, 0), 0.55))
    if wrinkle > 0.1:  # wrinkles across the bridge
        for k in range(3):
            wy_ = idt.eye_y + 0.06 + 0.035 * k
            lx, ly = through((-0.08, wy_ + 0.01), (0, wy_ - 0.01), (0.08, wy_ + 0.01), 6)
            stroke(img, proj(lx, ly, dz=0.06), mix(idt.skin, (0, 0, 0), 0.6 * wrinkle), proj.px(0.02))


def draw_eyes(img, proj: Projector, idt: Identity, aus: np.ndarray, pose: Pose) -> None:
    raise_, tighten = aus[AU["lid_raise"]], aus[AU["lid_tighten"]]
    cheek, lower_brow, blink = aus[AU["cheek_raise"]], aus[AU["brow_lower"]], aus[AU["blink"]]
    ew, eo = idt.eye_width, idt.eye_open
    open_h = eo * max(0.0, 1 + 1.3 * raise_ - 0.45 * tighten - 0.3 * lower_brow - 0.2 * cheek)
    lower_h = eo * 0.75 * (1 - 0.55 * tighten - 0.5 * cheek)
    upper_h = open_h * (1 - blink) - blink * lower_h * 0.9  # a closing lid meets the lower lid
    iris_r = eo * 1.1  # bigger than the resting opening: raised lids show white above the iris
    u = 2 * unit_grid(15) - 1
    prof = (1 - u ** 2) ** 0.7
    sclera = (232, 228, 222)
    for side in (-1, 1):
        cx, cy = side * idt.eye_sep, idt.eye_y
        ex = cx + ew * u
        corner = cy - idt.eye_tilt * (1 + side * u) / 2  # the outer corner sits higher with positive tilt
        up = corner - upper_h * prof
        lo = corner + lower_h * prof
        dz = -0.03
        if upper_h > -0.8 * lower_h:  # anything visible between the lids
            fill(img, proj(join(ex, ex[::-1]), join(up, lo[::-1]), dz), sclera)
            ix = cx + 0.45 * ew * min(1.0, max(-1.0, pose.gaze_x))
            iy = cy + 0.02 * min(1.0, max(-1.0, pose.gaze_y))
            ox, oy = ellipse_xy(ix, iy, iris_r, iris_r, 18)
            fill(img, proj(ox, oy, dz), idt.iris_color)
            ox, oy = ellipse_xy(ix, iy, iris_r * 0.45, iris_r * 0.45, 12)
            fill(img, proj(ox, oy, dz), (15, 12, 12))
            ox, oy = ellipse_xy(ix + 0.3 * iris_r, iy - 0.3 * iris_r, iris_r * 0.18, iris_r * 0.18, 8)
            fill(img, proj(ox, oy, dz), (250, 250, 250))
        # lid skin hides whatever of the iris lies outside the opening
        top = min(cy - iris_r - 0.02, up.min() - 0.004) - idt.eye_tilt
        bottom = max(cy + iris_r + 0.02, lo.max() + 0.004)
        fill(img, proj(join(ex, ex[-1], ex[0]), join(up, top, top), dz), mix(idt.skin, (0, 0, 0), 0.05))
        fill(img, proj(join(ex, ex[-1], ex[0]), join(lo, bottom, bottom), dz), idt.skin)
        stroke(img, proj(ex, up, dz), mix(idt.hair_color, (0, 0, 0), 0.6), proj.px(0.022))
        stroke(img, proj(ex, lo, dz), mix(idt.skin, (0, 0, 0), 0.3), proj.px(0.01))
        if upper_h > 0:  # lid crease, flattened by a raised lid
            crease = corner - (upper_h + 0.045 * (1 - 0.7 * raise_)) * prof
            stroke(img, proj(ex[2:-2], crease[2:-2], dz), mix(idt.skin, (0, 0, 0), 0.22), proj.px(0.012))
        if cheek > 0.15:  # crow's feet at the outer corner
            ox_, oy_ = cx + side * ew * 1.08, corner[-1 if side > 0 else 0]
            for ang in (-0.45, 0.0, 0.45):
                lx = np.array([ox_, ox_ + side * 0.07 * np.cos(ang)])
                ly = np.array([oy_, oy_ + 0.07 * np.sin(ang)])
                stroke(img, proj(lx, ly), mix(idt.skin, (0, 0, 0), 0.4 * cheek), proj.px(0.012))
            stroke(img, proj(ex[3:-3], lo[3:-3] + 0.045, dz), mix(idt.skin, (0, 0, 0), 0.25 * cheek),
                   proj.px(0.014))


def draw_brows(img, proj: Projector, idt: Identity, aus: np.ndarray) -> None:
    inner_up, outer_up = aus[AU["inner_brow_raise"]], aus[AU["outer_brow_raise"]]
    lower = aus[AU["brow_lower"]]
    base_y = idt.eye_y - idt.brow_gap
    color = mix(idt.hair_color, (35, 28, 24), 0.35)
    peaks = []
    for side in (-1, 1):
        inner = (side * (idt.eye_sep - 0.85 * idt.eye_width - 0.07 * lower),
                 base_y + 0.01 - 0.22 * inner_up - 0.04 * outer_up + 0.14 * lower)
        peak = (side * (idt.eye_sep + 0.15 * idt.eye_width),
                base_y - idt.brow_arch - 0.1 * inner_up - 0.17 * outer_up + 0.11 * lower)
        outer = (side * (idt.eye_sep + 1.25 * idt.eye_width),
                 base_y + 0.035 - 0.02 * inner_up - 0.18 * outer_up + 0.07 * lower)
        x, y = through(inner, peak, outer, 12)
        # a tapering band: thick at the inner end
        nx, ny = np.gradient(y), -np.gradient(x)
        norm = np.hypot(nx, ny) + 1e-9
        half = idt.brow_thick * (0.9 - 0.5 * unit_grid(12))
        px_ = join(x + nx / norm * half, (x - nx / norm * half)[::-1])
        py_ = join(y + ny / norm * half, (y - ny / norm * half)[::-1])
        fill(img, proj(px_, py_, 0.01), color)
        peaks.append(peak[1])
    raised = min(1.0, max(0.0, 0.5 * (inner_up + outer_up) - 0.15))
    if raised > 0:  # forehead wrinkles
        for k in range(3):
            fy = min(peaks) - 0.1 - 0.06 * k
            lx, ly = through((-0.42, fy + 0.02), (0, fy - 0.01), (0.42, fy + 0.02), 10)
            stroke(img, proj(lx, ly), mix(idt.skin, (0, 0, 0), 0.45 * raised), proj.px(0.012))
    if lower > 0.15:  # vertical lines between the brows
        for side in (-1, 1):
            gx = np.array([side * 0.045, side * 0.035])
            gy = np.array([base_y - 0.02, base_y + 0.08])
            stroke(img, proj(gx, gy), mix(idt.skin, (0, 0, 0), 0.5 * lower), proj.px(0.014))


def mouth_shape(idt: Identity, aus: np.ndarray, n: int = 21) -> dict:
    """Lip curves (x plus four y rows) from the mouth AUs; corners move, lips thin, the gap opens."""
    pull, depress = aus[AU["lip_corner_pull"]], aus[AU["lip_corner_depress"]]
    stretch, press = aus[AU["lip_stretch"]], aus[AU["lip_press"]]
    part, jaw, lift = aus[AU["lips_part"]], aus[AU["jaw_drop"]], aus[AU["upper_lip_raise"]]
    mw = idt.mouth_width * (1 + 0.22 * pull + 0.35 * stretch - 0.2 * press - 0.06 * depress)
    corner_dy = -0.13 * pull + 0.12 * depress + 0.02 * stretch
    gap = (0.1 * part + 0.38 * jaw) * (1 - 0.8 * press)
    thin = (1 - 0.6 * press) * (1 - 0.3 * stretch)
    u = 2 * unit_grid(n) - 1
    arc = np.sqrt(1 - u ** 2)
    line = idt.mouth_y + corner_dy * u ** 2
    upper_in = line - 0.3 * gap * arc - 0.07 * lift * (1 - u ** 4)
    lower_in = line + 0.7 * gap * arc
    bow = 1 - 0.25 * np.exp(-(u / 0.15) ** 2)  # cupid's bow
    upper_out = upper_in - idt.lip_upper * thin * (0.25 + 0.75 * arc) * bow
    lower_out = lower_in + idt.lip_lower * thin * (0.2 + 0.8 * arc)
    return {"x": mw * u, "upper_out": upper_out, "upper_in": upper_in, "lower_in": lower_in,
            "lower_out": lower_out, "corner": (mw, line[-1])}


def draw_mouth(img, proj: Projector, idt: Identity, m: dict) -> None:
    x, dz = m["x"], 0.03
    opening = m["lower_in"] - m["upper_in"]
    if opening.max() > 0.006:
        fill(img, proj(join(x, x[::-1]), join(m["upper_in"], m["lower_in"][::-1]), dz), (70, 22, 28))
        teeth = m["upper_in"] + np.minimum(0.045, 0.6 * opening)
        fill(img, proj(join(x, x[::-1]), join(m["upper_in"], teeth[::-1]), dz), (232, 226, 212))
        if opening.max() > 0.1:
            low_teeth = m["lower_in"] - np.minimum(0.025, 0.2 * opening)
            fill(img, proj(join(x, x[::-1]), join(low_teeth, m["lower_in"][::-1]), dz), (215, 208, 195))
    fill(img, proj(join(x, x[::-1]), join(m["upper_out"], m["upper_in"][::-1]), dz), idt.lip_color)
    fill(img, proj(join(x, x[::-1]), join(m["lower_in"], m["lower_out"][::-1]), dz),
         mix(idt.lip_color, (255, 255, 255), 0.06))
    stroke(img, proj(x, m["upper_in"], dz), mix(idt.lip_color, (0, 0, 0), 0.55), proj.px(0.016))
    if idt.beard in ("moustache", "full"):
        lower_edge = m["upper_out"] - 0.006 + 0.03 * (x / x[-1]) ** 4  # drooping at the corners
        top = lower_edge - 0.05 * np.sqrt(1 - (x / x[-1]) ** 2) - 0.012
        fill(img, proj(join(x, x[::-1]) * 1.08, join(lower_edge, top[::-1]), dz), idt.hair_color)


def draw_hair_front(img, proj: Projector, idt: Identity) -> None:
    if idt.hair_style == "bald":
        return
    w, h = idt.face_width, idt.face_height
    temple_y = idt.eye_y - 0.08
    brow_y = idt.eye_y - idt.brow_gap
    hair_y = -h * idt.hairline
    if idt.hair_style == "fringe":
        hair_y = brow_y - 0.12
    xs = np.linspace(0.99 * w, -0.99 * w, 17)
    edge = hair_y + (temple_y - hair_y) * np.abs(xs / w) ** 3
    if idt.hair_style == "side_part":
        edge = edge + 0.1 * (xs / w) - 0.06 * np.abs(xs / w)
    if idt.hair_style in ("fringe", "curly"):
        edge = edge + 0.025 * (np.arange(17) % 2)
    t = np.linspace(np.pi, 2 * np.pi, 24)  # the top of the head, right to left order below
    top_x = w * 1.04 * np.cos(t)
    top_y = -0.08 + h * 1.02 * np.sin(t)
    keep = top_y < temple_y
    px_ = join(top_x[keep], xs)
    py_ = join(top_y[keep], edge)
    fill(img, proj(px_, py_, dz=0.02), idt.hair_color)


def draw_glasses(img, proj: Projector, idt: Identity) -> None:
    if not idt.glasses:
        return
    thick = proj.px(0.025)
    ew = idt.eye_width
    inner_edges = []
    for side in (-1, 1):
        cx, cy = side * idt.eye_sep, idt.eye_y + 0.01
        if idt.glasses_round:
            x, y = ellipse_xy(cx, cy, ew * 1.3, ew * 1.05, 24)
        else:  # a rounded rectangle as a superellipse
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            c, s = np.cos(t), np.sin(t)
            x = cx + ew * 1.4 * np.sign(c) * np.abs(c) ** 0.5
            y = cy + ew * 0.9 * np.sign(s) * np.abs(s) ** 0.5
        dz = proj.surface_z(np.array([cx]), np.array([cy]))[0] + 0.12
        stroke(img, proj(x, y, dz=dz, surface=False), idt.glasses_color, thick, closed=True)
        inner_edges.append((cx - side * ew * 1.35, cy - 0.03, dz))
        arm_x = np.array([cx + side * ew * 1.35, side * idt.face_width * 0.98])
        arm_y = np.array([cy - 0.02, cy - 0.03])
        stroke(img, proj(arm_x, arm_y, dz=np.array([dz, 0.0]), surface=False), idt.glasses_color, thick)
    (lx, ly, dz), (rx, ry, _) = inner_edges
    stroke(img, proj(np.array([lx, 0.0, rx]), np.array([ly, ly - 0.02, ry]), dz=dz + 0.05, surface=False),
           idt.glasses_color, thick)


def draw_face(img: np.ndarray, idt: Identity, aus: np.ndarray, pose: Pose, face_scale: float) -> None:
    """Draw the whole head and shoulders onto `img` (RGB, uint8, square canvas) in painter's order.
    `face_scale`: the face half-width as a fraction of the canvas."""
    size = img.shape[0]
    proj = Projector(idt, pose, size, face_scale)
    body_pose = Pose(scale=pose.scale, dx=pose.dx, dy=pose.dy)  # the torso does not turn with the head
    draw_body(img, Projector(idt, body_pose, size, face_scale, rotate=False), idt)
    draw_hair_back(img, proj, idt)
    draw_ears(img, proj, idt)
    draw_skin(img, proj, idt, aus)
    draw_beard(img, proj, idt, aus)
    mouth = mouth_shape(idt, aus)
    draw_cheeks_and_folds(img, proj, idt, aus, mouth["corner"])
    draw_nose(img, proj, idt, aus)
    draw_eyes(img, proj, idt, aus, pose)
    draw_brows(img, proj, idt, aus)
    draw_mouth(img, proj, idt, mouth)
    draw_hair_front(img, proj, idt)
    draw_glasses(img, proj, idt)
