"""Procedural pedestrians and street scenes drawn with OpenCV, for the synthetic person-search datasets.

An identity is a fixed :class:`PersonTraits` (clothing colours and styles, hair, skin, accessory, build). Traits are
drawn from small palettes, so many identities share most of them and telling two apart needs a careful look. Each
appearance varies through :class:`Appearance` (pose, lighting, blur) and through the scene (scale, occlusion by
people in front or by foreground objects, image noise).

Layout and drawing are separate: :func:`place_people` decides integer boxes (cheap, enough to write annotations
for very large sets without drawing), :func:`render_scene` draws a :class:`ScenePlan`. A person is drawn so that
its visible extent, before occlusion, is exactly its box: it is rendered on a larger canvas, cropped to its own
silhouette and area-resampled into the box (see :func:`render_person`).
"""
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

__all__ = [
    "PersonTraits",
    "Appearance",
    "PlacedPerson",
    "PersonRequest",
    "Occluder",
    "ScenePlan",
    "sample_identities",
    "sample_traits",
    "render_person",
    "render_background",
    "render_scene",
    "place_people",
    "occluded_fraction",
]

# Palettes (BGR). Kept small on purpose: identities must share traits.
UPPER_COLORS = {
    "red": (40, 40, 200), "blue": (190, 90, 30), "green": (60, 150, 40), "yellow": (40, 200, 230),
    "white": (235, 235, 235), "black": (30, 30, 30), "grey": (128, 128, 128), "orange": (30, 130, 240),
    "purple": (140, 50, 120), "navy": (90, 40, 20),
}
UPPER_PATTERNS = ("plain", "stripes", "checks", "logo")
LOWER_COLORS = {
    "black": (25, 25, 25), "navy": (80, 40, 25), "grey": (110, 110, 110), "khaki": (120, 175, 195),
    "brown": (40, 70, 110), "denim": (160, 110, 70),
}
LOWER_STYLES = ("trousers", "skirt", "shorts")
HAIR_COLORS = {"black": (20, 20, 20), "brown": (30, 60, 100), "blonde": (110, 190, 225), "grey": (170, 170, 170)}
HAIR_LENGTHS = ("short", "long")
SKIN_TONES = {"light": (170, 200, 235), "medium": (120, 160, 205), "tan": (80, 125, 175), "dark": (50, 75, 110)}
ACCESSORIES = ("none", "hat", "bag")
ACCESSORY_COLORS = {"red": (40, 40, 190), "black": (30, 30, 30), "brown": (30, 65, 120), "white": (230, 230, 230)}
# Figure width / height (without accessories); slim, average, broad.
BUILDS = (0.30, 0.36, 0.42)

_SHOE_COLOR = (35, 35, 45)


@dataclass(frozen=True)
class PersonTraits:
    """The fixed look of one identity. Colours are palette names (see the module constants)."""

    upper_color: str
    upper_pattern: str
    lower_color: str
    lower_style: str
    hair_color: str
    hair_length: str
    skin: str
    accessory: str
    accessory_color: str
    build: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Appearance:
    """What changes between two sightings of the same identity."""

    stride: float = 0.0  # -1..1: leg spread and which leg is in front
    arm_swing: float = 0.0  # -1..1: arm angle
    gain: float = 1.0  # contrast
    bias: float = 0.0  # brightness offset (0..255 scale)
    cast: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel colour cast (BGR)
    blur: float = 0.0  # Gaussian blur sigma in output pixels, 0 = sharp

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Appearance":
        return cls(
            stride=float(rng.uniform(-1, 1)),
            arm_swing=float(rng.uniform(-1, 1)),
            gain=float(rng.uniform(0.75, 1.2)),
            bias=float(rng.uniform(-25, 25)),
            cast=tuple(float(c) for c in rng.uniform(0.88, 1.12, size=3)),
            blur=float(rng.choice([0.0, 0.0, 0.0, rng.uniform(0.5, 1.2)])),
        )


@dataclass(frozen=True)
class PlacedPerson:
    """A person in a scene: integer box (x, y, w, h) equal to the visible extent before occlusion."""

    traits: PersonTraits
    box: Tuple[int, int, int, int]
    appearance: Appearance
    identity: Optional[int] = None  # caller's identity index; None = unlabeled passer-by


@dataclass(frozen=True)
class PersonRequest:
    """Input of :func:`place_people`: who to place and under which constraints."""

    traits: PersonTraits
    identity: Optional[int] = None
    height_range: Optional[Tuple[int, int]] = None  # overrides the scene's height range (e.g. low resolution)
    occlude: bool = False  # put a foreground object over part of this person
    at_edge: bool = False  # touch the left or top image border


@dataclass(frozen=True)
class Occluder:
    """A foreground object drawn over the people: kind in {"pole", "bin", "car"}, box (x, y, w, h)."""

    kind: str
    box: Tuple[int, int, int, int]
    color: Tuple[int, int, int]


@dataclass
class ScenePlan:
    """Everything needed to draw one image. ``people`` is in drawing order (back to front)."""

    height: int
    width: int
    seed: int  # seeds the background and the image noise
    people: List[PlacedPerson] = field(default_factory=list)
    occluders: List[Occluder] = field(default_factory=list)


def sample_traits(rng: np.random.Generator) -> PersonTraits:
    """One random combination of traits (used for identities and for passers-by)."""
    accessory = str(rng.choice(ACCESSORIES))
    return PersonTraits(
        upper_color=str(rng.choice(list(UPPER_COLORS))),
        upper_pattern=str(rng.choice(UPPER_PATTERNS)),
        lower_color=str(rng.choice(list(LOWER_COLORS))),
        lower_style=str(rng.choice(LOWER_STYLES, p=(0.6, 0.2, 0.2))),
        hair_color=str(rng.choice(list(HAIR_COLORS))),
        hair_length=str(rng.choice(HAIR_LENGTHS)),
        skin=str(rng.choice(list(SKIN_TONES))),
        accessory=accessory,
        accessory_color=str(rng.choice(list(ACCESSORY_COLORS))) if accessory != "none" else "none",
        build=float(rng.choice(BUILDS)),
    )


def sample_identities(rng: np.random.Generator, n: int) -> List[PersonTraits]:
    """``n`` identities with pairwise different trait combinations."""
    seen, out = set(), []
    while len(out) < n:
        traits = sample_traits(rng)
        if traits not in seen:
            seen.add(traits)
            out.append(traits)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Drawing one person
# ---------------------------------------------------------------------------------------------------------------
def _pt(x: float, y: float) -> Tuple[int, int]:
    return int(round(x)), int(round(y))


def _limb(img, mask, p0, p1, thickness, color):
    cv2.line(img, _pt(*p0), _pt(*p1), color, int(max(1, round(thickness))), cv2.LINE_8)
    cv2.line(mask, _pt(*p0), _pt(*p1), 255, int(max(1, round(thickness))), cv2.LINE_8)


def _poly(img, mask, points, color):
    pts = np.round(np.asarray(points)).astype(np.int32)
    cv2.fillPoly(img, [pts], color)
    cv2.fillPoly(mask, [pts], 255)


def _ellipse(img, mask, center, axes, color, start=0, end=360):
    cv2.ellipse(img, _pt(*center), _pt(*axes), 0, start, end, color, -1)
    cv2.ellipse(mask, _pt(*center), _pt(*axes), 0, start, end, 255, -1)


def _torso(img, mask, points, traits: PersonTraits, unit: float):
    """Torso polygon in the upper-body colour with the identity's pattern clipped to it."""
    color = UPPER_COLORS[traits.upper_color]
    torso = np.zeros_like(mask)
    pts = np.round(np.asarray(points)).astype(np.int32)
    cv2.fillPoly(torso, [pts], 255)
    layer = np.empty_like(img)
    layer[:] = color
    # Pattern colour: dark on light shirts, light on dark ones.
    accent = (20, 20, 20) if sum(color) > 360 else (225, 225, 225)
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0)
    step = max(2, int(round(unit * 0.045)))
    if traits.upper_pattern == "stripes":
        for y in range(int(y0), int(y1) + 1, 2 * step):
            cv2.rectangle(layer, (int(x0), y), (int(x1), y + step - 1), accent, -1)
    elif traits.upper_pattern == "checks":
        for y in range(int(y0), int(y1) + 1, step):
            for x in range(int(x0), int(x1) + 1, step):
                if ((y - y0) // step + (x - x0) // step) % 2:
                    cv2.rectangle(layer, (x, y), (x + step - 1, y + step - 1), accent, -1)
    elif traits.upper_pattern == "logo":
        cx, cy = (x0 + x1) / 2, y0 + (y1 - y0) * 0.35
        cv2.circle(layer, _pt(cx, cy), int(max(2, round(unit * 0.04))), accent, -1)
    inside = torso > 0
    img[inside] = layer[inside]
    mask[inside] = 255


def _draw_figure(traits: PersonTraits, appearance: Appearance, unit: int):
    """Draws the figure on a canvas of height ~1.2 * unit; returns (bgr, mask) with the figure somewhere inside."""
    height, width = int(unit * 1.2), int(unit * 1.0)
    img = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    u = float(unit)
    cx, top = width / 2.0, 0.1 * u
    skin = SKIN_TONES[traits.skin]
    upper = UPPER_COLORS[traits.upper_color]
    lower = LOWER_COLORS[traits.lower_color]
    hair = HAIR_COLORS[traits.hair_color]
    acc = ACCESSORY_COLORS.get(traits.accessory_color, (0, 0, 0))

    head_r = 0.062 * u
    head_c = (cx, top + 0.075 * u)
    shoulder_y, waist_y, hip_y, foot_y = top + 0.16 * u, top + 0.47 * u, top + 0.50 * u, top + 0.97 * u
    half_shoulder = traits.build * u * 0.36
    half_waist = half_shoulder * 0.8
    leg_w = 0.075 * u
    stride = appearance.stride * 0.07 * u

    if traits.hair_length == "long":  # hair behind the head, down to the shoulders
        _poly(img, mask, [(cx - head_r * 1.1, head_c[1]), (cx + head_r * 1.1, head_c[1]),
                          (cx + head_r * 1.25, shoulder_y + 0.05 * u), (cx - head_r * 1.25, shoulder_y + 0.05 * u)],
              hair)

    # Legs: trousers cover them; skirts and shorts show skin below.
    hips = [(cx - 0.05 * u, hip_y), (cx + 0.05 * u, hip_y)]
    feet = [(cx - 0.06 * u - stride, foot_y), (cx + 0.06 * u + stride, foot_y)]
    for hip, foot in zip(hips, feet):
        leg_color = lower if traits.lower_style == "trousers" else skin
        _limb(img, mask, hip, foot, leg_w, leg_color)
        if traits.lower_style == "shorts":
            knee = (hip[0] + (foot[0] - hip[0]) * 0.4, hip[1] + (foot[1] - hip[1]) * 0.4)
            _limb(img, mask, hip, knee, leg_w * 1.15, lower)
        _ellipse(img, mask, (foot[0], foot_y + 0.01 * u), (0.05 * u, 0.022 * u), _SHOE_COLOR)
    if traits.lower_style == "skirt":
        skirt_y = top + 0.70 * u
        _poly(img, mask, [(cx - half_waist, waist_y), (cx + half_waist, waist_y),
                          (cx + half_waist * 1.45, skirt_y), (cx - half_waist * 1.45, skirt_y)], lower)
    else:
        _poly(img, mask, [(cx - half_waist, waist_y), (cx + half_waist, waist_y),
                          (cx + half_waist, hip_y + 0.04 * u), (cx - half_waist, hip_y + 0.04 * u)], lower)

    _torso(img, mask, [(cx - half_shoulder, shoulder_y), (cx + half_shoulder, shoulder_y),
                       (cx + half_waist, waist_y + 0.01 * u), (cx - half_waist, waist_y + 0.01 * u)], traits, u)

    # Arms: sleeves in the upper colour, skin hands; swing moves the hands forward/back (up/down in the image).
    arm_len = 0.32 * u
    for side, swing in ((-1, appearance.arm_swing), (1, -appearance.arm_swing)):
        shoulder = (cx + side * (half_shoulder - 0.02 * u), shoulder_y + 0.02 * u)
        angle = np.deg2rad(8 + 10 * swing)
        hand = (shoulder[0] + side * arm_len * np.sin(angle), shoulder[1] + arm_len * np.cos(angle))
        _limb(img, mask, shoulder, hand, 0.055 * u, upper)
        _ellipse(img, mask, hand, (0.025 * u, 0.025 * u), skin)

    _limb(img, mask, (cx, head_c[1] + head_r * 0.8), (cx, shoulder_y + 0.01 * u), 0.04 * u, skin)  # neck
    _ellipse(img, mask, head_c, (head_r * 0.9, head_r), skin)
    _ellipse(img, mask, (head_c[0], head_c[1] - head_r * 0.25), (head_r * 0.95, head_r * 0.8), hair, 180, 360)
    if traits.accessory == "hat":
        brim_y = head_c[1] - head_r * 0.55
        _poly(img, mask, [(cx - head_r * 0.85, brim_y), (cx + head_r * 0.85, brim_y),
                          (cx + head_r * 0.7, brim_y - 0.07 * u), (cx - head_r * 0.7, brim_y - 0.07 * u)], acc)
        _limb(img, mask, (cx - head_r * 1.3, brim_y), (cx + head_r * 1.3, brim_y), 0.018 * u, acc)
    elif traits.accessory == "bag":
        bag_x = cx + half_shoulder + 0.02 * u
        _limb(img, mask, (cx - half_shoulder * 0.6, shoulder_y), (bag_x, top + 0.40 * u), 0.015 * u, acc)
        _poly(img, mask, [(bag_x - 0.03 * u, top + 0.38 * u), (bag_x + 0.07 * u, top + 0.38 * u),
                          (bag_x + 0.07 * u, top + 0.52 * u), (bag_x - 0.03 * u, top + 0.52 * u)], acc)
    return img, mask


def _apply_lighting(bgr: np.ndarray, appearance: Appearance) -> np.ndarray:
    out = (bgr.astype(np.float32) - 128.0) * appearance.gain + 128.0 + appearance.bias
    out *= np.asarray(appearance.cast, np.float32)
    return out


def render_person(traits: PersonTraits, width: int, height: int, appearance: Appearance = Appearance()):
    """Draws one person into a ``height`` x ``width`` patch whose silhouette touches all four borders.

    Returns ``(bgr, alpha)``: float32 (h, w, 3) colours in 0..255 with lighting applied, and float32 (h, w)
    coverage in 0..1. The figure is drawn at a resolution of at least twice the patch, cropped to its silhouette
    and area-resampled: every border row/column of the patch averages source pixels that include the
    silhouette's extreme row/column, so the patch's alpha > 0 extent is exactly the patch.
    """
    if width < 1 or height < 1:
        raise ValueError(f"render_person: patch size must be positive, got width={width}, height={height}")
    unit = max(2 * height, 2 * int(np.ceil(width / max(traits.build, 0.2))), 60)
    img, mask = _draw_figure(traits, appearance, unit)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = img[y0:y1, x0:x1].astype(np.float32)
    alpha = mask[y0:y1, x0:x1].astype(np.float32) / 255.0
    # Premultiply so that resampling does not bleed the black canvas into the edges.
    premul = crop * alpha[..., None]
    premul = cv2.resize(premul, (width, height), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA).reshape(height, width)
    bgr = premul.reshape(height, width, 3) / np.maximum(alpha, 1e-6)[..., None]
    bgr = _apply_lighting(bgr, appearance)
    if appearance.blur > 0:
        bgr = cv2.GaussianBlur(bgr, (0, 0), appearance.blur)
    return bgr, alpha


# ---------------------------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------------------------
def _vertical_gradient(height: int, width: int, c0, c1) -> np.ndarray:
    t = np.linspace(0.0, 1.0, max(height, 1), dtype=np.float32)[:, None, None]
    col = np.asarray(c0, np.float32) * (1 - t) + np.asarray(c1, np.float32) * t
    return np.repeat(col, width, axis=1)[:height]


def _draw_car(img, box, color):
    x, y, w, h = box
    cv2.rectangle(img, (x, y + h // 3), (x + w - 1, y + h - h // 5), color, -1)
    cabin = tuple(int(c * 0.7) for c in color)
    cv2.rectangle(img, (x + w // 5, y), (x + w - w // 4, y + h // 3), cabin, -1)
    cv2.rectangle(img, (x + w // 4, y + h // 12), (x + w - w // 3, y + h // 3 - 1), (200, 180, 150), -1)
    r = max(2, h // 6)
    for wx in (x + w // 5, x + w - w // 5):
        cv2.circle(img, (wx, y + h - r), r, (20, 20, 20), -1)


def _draw_occluder(img, occ: Occluder):
    x, y, w, h = occ.box
    if occ.kind == "car":
        _draw_car(img, occ.box, occ.color)
    elif occ.kind == "bin":
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), occ.color, -1)
        cv2.rectangle(img, (x, y), (x + w - 1, y + max(2, h // 8)), tuple(int(c * 0.6) for c in occ.color), -1)
    elif occ.kind == "pole":
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), occ.color, -1)
    else:
        raise ValueError(f"unknown occluder kind {occ.kind!r}; expected pole, bin or car")


def render_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A cluttered street-like background: sky and ground gradients, buildings with windows, poles, cars, shapes.

    Returns float32 BGR (height, width, 3). Nothing in it has a person's layout (head over torso over legs).
    """
    horizon = int(height * rng.uniform(0.3, 0.6))
    sky0 = rng.uniform([170, 120, 80], [250, 210, 180])
    ground0 = rng.uniform([60, 60, 60], [150, 160, 160])
    img = np.empty((height, width, 3), np.float32)
    img[:horizon] = _vertical_gradient(horizon, width, sky0, sky0 * 0.8 + 40)
    img[horizon:] = _vertical_gradient(height - horizon, width, ground0 * 0.8, ground0 * 1.1)
    canvas = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(1, 5))):  # buildings
        bw = int(width * rng.uniform(0.12, 0.35))
        bh = int(horizon * rng.uniform(0.4, 1.0))
        bx = int(rng.integers(-bw // 2, width))
        color = tuple(int(c) for c in rng.integers(60, 200, size=3))
        cv2.rectangle(canvas, (bx, horizon - bh), (bx + bw, horizon), color, -1)
        win = max(3, bw // 8)
        win_color = tuple(int(c) for c in rng.integers(30, 255, size=3))
        for wy in range(horizon - bh + win, horizon - win, 2 * win):
            for wx in range(bx + win // 2, bx + bw - win, 2 * win):
                cv2.rectangle(canvas, (wx, wy), (wx + win - 1, wy + win - 1), win_color, -1)
    for _ in range(int(rng.integers(0, 4))):  # shapes: circles, ellipses, triangles
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(4, max(5, min(height, width) // 8)))
        kind = rng.integers(3)
        if kind == 0:
            cv2.circle(canvas, c, size, color, -1)
        elif kind == 1:
            cv2.ellipse(canvas, c, (size * 2, size), float(rng.uniform(0, 180)), 0, 360, color, -1)
        else:
            pts = np.array([c, (c[0] + size * 2, c[1]), (c[0] + size, c[1] - size * 2)], np.int32)
            cv2.fillPoly(canvas, [pts], color)
    for _ in range(int(rng.integers(0, 3))):  # parked cars on the ground
        cw = int(width * rng.uniform(0.12, 0.25))
        ch = max(6, int(cw * rng.uniform(0.4, 0.55)))
        cy = int(rng.integers(horizon - ch // 2, max(horizon - ch // 2 + 1, height - ch)))
        _draw_car(canvas, (int(rng.integers(-cw // 3, width)), cy, cw, ch),
                  tuple(int(c) for c in rng.integers(20, 230, size=3)))
    for _ in range(int(rng.integers(0, 3))):  # background poles
        px = int(rng.integers(0, width))
        cv2.rectangle(canvas, (px, int(horizon * rng.uniform(0, 0.6))), (px + int(rng.integers(1, 4)),
                      int(rng.integers(horizon, height))), tuple(int(c) for c in rng.integers(40, 120, size=3)), -1)
    return canvas.astype(np.float32)


def render_scene(plan: ScenePlan) -> np.ndarray:
    """Draws a :class:`ScenePlan` (background, people back to front, foreground occluders, noise) -> uint8 BGR."""
    rng = np.random.default_rng(plan.seed)
    img = render_background(rng, plan.height, plan.width)
    scene_gain = rng.uniform(0.85, 1.1)
    for person in plan.people:
        x, y, w, h = person.box
        bgr, alpha = render_person(person.traits, w, h, person.appearance)
        region = img[y:y + h, x:x + w]
        if region.shape[:2] != (h, w):
            raise ValueError(f"person box {person.box} lies outside the {plan.width}x{plan.height} image")
        region[:] = region * (1 - alpha[..., None]) + bgr * alpha[..., None]
    img *= scene_gain
    fg = np.clip(img, 0, 255).astype(np.uint8)
    for occ in plan.occluders:
        _draw_occluder(fg, occ)
    noisy = fg.astype(np.float32) + rng.normal(0.0, rng.uniform(1.0, 5.0), size=fg.shape).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------------------------
def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / float(aw * ah + bw * bh - inter)


def occluded_fraction(box, covers: Sequence[Tuple[int, int, int, int]]) -> float:
    """Fraction of ``box`` (x, y, w, h) covered by the union of the ``covers`` boxes."""
    x, y, w, h = box
    covered = np.zeros((h, w), bool)
    for cx, cy, cw, ch in covers:
        x0, y0 = max(cx - x, 0), max(cy - y, 0)
        x1, y1 = min(cx + cw - x, w), min(cy + ch - y, h)
        if x1 > x0 and y1 > y0:
            covered[y0:y1, x0:x1] = True
    return float(covered.mean())


def _occluder_for(rng: np.random.Generator, box, height: int, width: int) -> Occluder:
    """A foreground object hiding 25-50% of ``box``: a car or bin over the legs, or a pole over one side."""
    x, y, w, h = box
    kind = str(rng.choice(["car", "bin", "pole"]))
    color = tuple(int(c) for c in rng.integers(30, 220, size=3))
    if kind == "pole":
        pw = max(2, int(w * rng.uniform(0.3, 0.45)))
        px = x + int(rng.choice([0, w - pw]))
        return Occluder(kind, (px, 0, pw, height), color)
    oh = max(2, int(h * rng.uniform(0.3, 0.5)))
    ow = min(width, int(w * rng.uniform(1.5, 3.0))) if kind == "car" else max(2, int(w * rng.uniform(0.8, 1.2)))
    ox = int(np.clip(x + w // 2 - ow // 2 + rng.integers(-w // 4, w // 4 + 1), 0, width - ow))
    oy = min(y + h - oh, height - oh)
    return Occluder(kind, (ox, oy, ow, oh), color)


def place_people(rng: np.random.Generator, height: int, width: int, requests: Sequence[PersonRequest], *,
                 height_range: Tuple[int, int] = (40, 300), max_iou: float = 0.3, occluder_prob: float = 0.1):
    """Chooses integer boxes for ``requests`` in a ``height`` x ``width`` image.

    Person heights are log-uniform in ``height_range`` (capped by the image), widths follow the identity's build.
    Boxes lie inside the image and overlap each other by IoU <= ``max_iou`` when a spot can be found in 30 tries
    (else the least overlapping try is used). Returns ``(people, occluders, occlusion)``: people sorted back to
    front (by foot row), the foreground occluders, and each person's occluded fraction (same order as people).
    """
    boxes, occluders = [], []
    for req in requests:
        lo, hi = req.height_range or height_range
        hi = min(hi, height - 2)
        lo = min(lo, hi)
        best, best_iou = None, 2.0
        for _ in range(30):
            h = int(round(np.exp(rng.uniform(np.log(lo), np.log(hi + 1e-9)))))
            w = max(4, int(round(h * req.traits.build * rng.uniform(1.05, 1.25))))  # arms and pose widen it
            w = min(w, width)
            if req.at_edge and rng.random() < 0.5:
                x, y = 0, int(rng.integers(0, height - h + 1))
            elif req.at_edge:
                x, y = int(rng.integers(0, width - w + 1)), 0
            else:
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            cand = (x, y, w, h)
            worst = max((_iou(cand, b) for b in boxes), default=0.0)
            if worst < best_iou:
                best, best_iou = cand, worst
            if worst <= max_iou:
                break
        boxes.append(best)
        if req.occlude or rng.random() < occluder_prob:
            occluders.append(_occluder_for(rng, best, height, width))
    order = sorted(range(len(boxes)), key=lambda i: (boxes[i][1] + boxes[i][3], i))
    people = [PlacedPerson(requests[i].traits, boxes[i], Appearance.sample(rng), requests[i].identity) for i in order]
    occlusion = []
    for k, person in enumerate(people):
        covers = [p.box for p in people[k + 1:]] + [o.box for o in occluders]
        occlusion.append(occluded_fraction(person.box, covers))
    return people, occluders, occlusion
