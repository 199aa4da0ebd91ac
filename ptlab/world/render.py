"""Procedural image world: one object on a patterned background.

Every image is a pure function of its attributes and its seed: the seed fixes
the nuisance variables (position, rotation, colour jitter, background colours,
pattern phase, pixel noise), the attributes fix what a caption may say.
Rendering is vectorised over a batch, so thousands of images take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "ring", "heart", "moon")
COLORS = {
    "red": (0.85, 0.10, 0.10),
    "orange": (0.98, 0.55, 0.05),
    "yellow": (0.98, 0.92, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.25, 0.90),
    "purple": (0.55, 0.15, 0.75),
    "pink": (1.00, 0.55, 0.75),
    "brown": (0.50, 0.28, 0.08),
    "white": (0.98, 0.98, 0.98),
    "black": (0.03, 0.03, 0.03),
}
COLOR_NAMES = tuple(COLORS)
PATTERNS = ("plain", "striped", "dotted", "checkered", "grid", "gradient")
SIZES = {"small": 0.30, "medium": 0.45, "large": 0.62}
SIZE_NAMES = tuple(SIZES)
DOMAINS = ("photo", "outline", "pixel")

# Desaturated mid-tone background colours keep every object colour, white and
# black included, visible against every background.
_BACKGROUND_TONES = np.array(
    [
        (0.45, 0.45, 0.45),
        (0.60, 0.58, 0.52),
        (0.38, 0.42, 0.48),
        (0.55, 0.50, 0.42),
        (0.42, 0.48, 0.42),
        (0.62, 0.62, 0.64),
        (0.35, 0.33, 0.36),
        (0.50, 0.44, 0.50),
    ]
)
_PIXEL_GRID = 12  # the pixel domain is drawn on a 12x12 grid, then enlarged


@dataclass(frozen=True)
class Attributes:
    """Column-wise attributes of a batch of images (indices into the tuples above)."""

    shape: np.ndarray
    color: np.ndarray
    pattern: np.ndarray
    size: np.ndarray
    domain: np.ndarray
    seed: np.ndarray

    def __len__(self) -> int:
        return len(self.seed)

    def take(self, index: np.ndarray) -> Attributes:
        return Attributes(**{k: getattr(self, k)[index] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts: list[Attributes]) -> Attributes:
        return Attributes(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Attributes.__dataclass_fields__})


@dataclass(frozen=True)
class _Nuisance:
    center: np.ndarray  # (N, 2) in [-1, 1] image coordinates
    radius: np.ndarray  # (N,)
    angle: np.ndarray  # (N,)
    fg: np.ndarray  # (N, 3)
    bg1: np.ndarray  # (N, 3)
    bg2: np.ndarray  # (N, 3)
    period: np.ndarray  # (N,) pattern period in image units
    phase: np.ndarray  # (N, 2)
    direction: np.ndarray  # (N,) pattern angle
    noise_std: np.ndarray  # (N,)


def _draw_nuisance(attrs: Attributes) -> _Nuisance:
    n = len(attrs)
    out = {k: [] for k in _Nuisance.__dataclass_fields__}
    size_values = np.array(list(SIZES.values()))
    color_values = np.array(list(COLORS.values()))
    for i in range(n):
        rng = np.random.default_rng(int(attrs.seed[i]))
        radius = size_values[attrs.size[i]] * rng.uniform(0.92, 1.08)
        slack = max(1.0 - radius - 0.04, 0.0)
        out["center"].append(rng.uniform(-slack, slack, size=2))
        out["radius"].append(radius)
        out["angle"].append(rng.uniform(0, 2 * np.pi))
        out["fg"].append(np.clip(color_values[attrs.color[i]] + rng.normal(0, 0.04, 3), 0, 1))
        tones = rng.choice(len(_BACKGROUND_TONES), size=2, replace=False)
        out["bg1"].append(_BACKGROUND_TONES[tones[0]] + rng.normal(0, 0.02, 3))
        out["bg2"].append(_BACKGROUND_TONES[tones[1]] * 0.6 + rng.normal(0, 0.02, 3))
        out["period"].append(rng.uniform(0.32, 0.48))
        out["phase"].append(rng.uniform(0, 1, size=2))
        out["direction"].append(rng.choice([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]) + rng.normal(0, 0.05))
        out["noise_std"].append(rng.uniform(0.0, 0.04))
    return _Nuisance(**{k: np.asarray(v, dtype=np.float64) for k, v in out.items()})


def _polygon(r, theta, sides, apothem):
    sector = 2 * np.pi / sides
    local = np.mod(theta, sector) - sector / 2
    return r * np.cos(local) < apothem


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Is (u, v) inside the unit-radius shape? u, v: (..., H, W) object coordinates."""
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    if shape == "circle":
        return r < 0.95
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.75
    if shape == "triangle":
        return _polygon(r, theta + np.pi / 2, 3, 0.5)
    if shape == "hexagon":
        return _polygon(r, theta, 6, 0.85)
    if shape == "diamond":
        return np.abs(u) * 1.35 + np.abs(v) < 1.0
    if shape == "star":
        sector = 2 * np.pi / 5
        local = np.abs(np.mod(theta + np.pi / 2, sector) - sector / 2) / (sector / 2)
        return r < 0.42 + 0.58 * (1 - local) ** 1.6
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    if shape == "ring":
        return (r < 0.95) & (r > 0.55)
    if shape == "heart":
        x, y = u * 1.15, -v * 1.15 + 0.2
        return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0
    if shape == "moon":
        return (r < 0.95) & (np.hypot(u - 0.45, v - 0.15) > 0.75)
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _background(pattern: str, x, y, nz: _Nuisance, idx) -> np.ndarray:
    """Blend weight of the second background colour, (n, H, W) in [0, 1]."""
    period = nz.period[idx][:, None, None]
    d = nz.direction[idx][:, None, None]
    px = nz.phase[idx][:, 0][:, None, None]
    py = nz.phase[idx][:, 1][:, None, None]
    along = (x * np.cos(d) + y * np.sin(d)) / period + px
    across = (-x * np.sin(d) + y * np.cos(d)) / period + py
    if pattern == "plain":
        return np.zeros_like(along)
    if pattern == "striped":
        return (np.mod(along, 1.0) < 0.5).astype(float)
    if pattern == "checkered":
        return (np.mod(np.floor(along) + np.floor(across), 2) == 0).astype(float)
    if pattern == "dotted":
        du = np.mod(along, 1.0) - 0.5
        dv = np.mod(across, 1.0) - 0.5
        return (np.hypot(du, dv) < 0.25).astype(float)
    if pattern == "grid":
        du = np.abs(np.mod(along, 1.0) - 0.5)
        dv = np.abs(np.mod(across, 1.0) - 0.5)
        return (np.maximum(du, dv) > 0.36).astype(float)
    if pattern == "gradient":
        t = (x * np.cos(d) + y * np.sin(d) + 1) / 2
        return np.clip(t, 0, 1) * np.ones_like(along)
    raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def _render_at(attrs: Attributes, nz: _Nuisance, idx: np.ndarray, grid: int, supersample: int) -> np.ndarray:
    """Render images idx on a grid x grid canvas; returns (n, grid, grid, 3) floats."""
    res = grid * supersample
    coords = (np.arange(res) + 0.5) / res * 2 - 1
    y, x = np.meshgrid(coords, coords, indexing="ij")
    x, y = x[None], y[None]
    n = len(idx)
    canvas = np.empty((n, res, res, 3))
    for p, pattern in enumerate(PATTERNS):
        sel = np.flatnonzero(attrs.pattern[idx] == p)
        if len(sel) == 0:
            continue
        w = _background(pattern, x, y, nz, idx[sel])[..., None]
        canvas[sel] = nz.bg1[idx[sel]][:, None, None] * (1 - w) + nz.bg2[idx[sel]][:, None, None] * w
    cx = nz.center[idx][:, 0][:, None, None]
    cy = nz.center[idx][:, 1][:, None, None]
    radius = nz.radius[idx][:, None, None]
    a = nz.angle[idx][:, None, None]
    du, dv = (x - cx) / radius, (y - cy) / radius
    u = du * np.cos(a) + dv * np.sin(a)
    v = -du * np.sin(a) + dv * np.cos(a)
    mask = np.zeros((n, res, res), dtype=bool)
    for s, shape in enumerate(SHAPES):
        sel = np.flatnonzero(attrs.shape[idx] == s)
        if len(sel) == 0:
            continue
        filled = _inside(shape, u[sel], v[sel])
        outline = DOMAINS.index("outline")
        stroke = attrs.domain[idx[sel]] == outline
        if stroke.any():
            # A stroke about 1.5 px wide whatever the object's size.
            shrink = 1.0 - (3.0 / grid) / radius[sel[stroke]]
            inner = _inside(shape, u[sel][stroke] / shrink, v[sel][stroke] / shrink)
            filled[stroke] &= ~inner
        mask[sel] = filled
    canvas = np.where(mask[..., None], nz.fg[idx][:, None, None], canvas)
    if supersample > 1:
        canvas = canvas.reshape(n, grid, supersample, grid, supersample, 3).mean(axis=(2, 4))
    return canvas


def render(attrs: Attributes, image_size: int = 32) -> np.ndarray:
    """Render a batch of images as uint8 (N, image_size, image_size, 3)."""
    nz = _draw_nuisance(attrs)
    n = len(attrs)
    out = np.empty((n, image_size, image_size, 3))
    pixel = DOMAINS.index("pixel")
    chunk = 512
    for start in range(0, n, chunk):
        idx = np.arange(start, min(start + chunk, n))
        smooth = idx[attrs.domain[idx] != pixel]
        blocky = idx[attrs.domain[idx] == pixel]
        if len(smooth):
            out[smooth] = _render_at(attrs, nz, smooth, image_size, supersample=2)
        if len(blocky):
            small = _render_at(attrs, nz, blocky, _PIXEL_GRID, supersample=1)
            pick = np.arange(image_size) * _PIXEL_GRID // image_size
            out[blocky] = small[:, pick][:, :, pick]
    noise = np.stack([np.random.default_rng(int(s) + 7919).normal(0, 1, (image_size, image_size, 3)) for s in attrs.seed])
    out = out + noise * nz.noise_std[:, None, None, None]
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
