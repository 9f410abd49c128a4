"""The synthetic dice images of the 2024 paper (section 7.3, Table 3), drawn by a vectorised rasteriser.

Six classes of abstract symbols on a 32×32 canvas spanning [−1, 1]²:

    0 "one"    a pip at (x, y)
    1 "two"    pips at (x, y) and (−x, −y)
    2 "three"  a line from (x, y) to (−x, −y)
    3 "four"   the outline of the box with corners (±x, ±y)
    4 "five"   the box of "four" and a pip at the origin
    5 "six"    two parallel lines, the "three" line shifted by ±(x_shift, y_shift)

Every parameter is drawn uniformly from the ranges of Table 3; the line-end
type (round, butt, square) uniformly from the three. The paper drew with R's
``points``/``lines``/``polygon`` and "adjusted the parameters to the image
size" without saying how; we map them to canvas units as

    pip radius       = PIP_RADIUS · P_size       (P_size ∈ [0.1, 1] → 0.02 … 0.2)
    line half-width  = LINE_HALF_WIDTH · L_weight (L_weight ∈ [0.1, 2.5] → 0.003 … 0.075)

(one pixel is 2/32 = 0.0625 wide), pips are filled discs, ink is 1 on a 0
background. Shapes are anti-aliased by their signed distance: a pixel's
value is ``clip(0.5 − d / pixel, 0, 1)`` for the distance d of its centre
outside the shape, and a symbol is the maximum of its parts.
"""

import numpy as np

from .validation import check_integer

SIZE = 32
PIXEL = 2.0 / SIZE
PIP_RADIUS = 0.2
LINE_HALF_WIDTH = 0.03
CLASS_NAMES = ("one", "two", "three", "four", "five", "six")
END_TYPES = ("round", "butt", "square")

# Table 3 of the 2024 paper: (min, max) of each parameter, per class
TABLE_3 = {
    "one": {"x": (-1, 1), "y": (-1, 1), "p_size": (0.1, 1)},
    "two": {"x": (-1, 1), "y": (-1, 1), "p_size": (0.1, 1)},
    "three": {"x": (-1, 1), "y": (-1, 1), "l_weight": (0.1, 2.5)},
    "four": {"x": (-1, 1), "y": (-1, 1), "l_weight": (0.1, 1)},
    "five": {"x": (0.2, 1), "y": (0.2, 1), "p_size": (0.1, 0.7), "l_weight": (0.1, 1)},
    "six": {"x": (-0.9, 0.9), "y": (-0.9, 0.9), "x_shift": (0.1, 0.8), "y_shift": (0.1, 0.8), "l_weight": (0.1, 2.5)},
}

_centres = -1 + PIXEL * (np.arange(SIZE) + 0.5)
GRID_X = _centres[None, :]          # column j ↦ x
GRID_Y = _centres[::-1, None]       # row i ↦ y (row 0 at the top, y = +1)


def coverage(distance):
    """Anti-aliased ink of a pixel whose centre lies ``distance`` outside a shape (negative inside)."""
    return np.clip(0.5 - distance / PIXEL, 0.0, 1.0)


def disc_distance(cx, cy, radius):
    """Signed distance from every pixel centre to discs, for a batch: inputs (b,), output (b, 32, 32)."""
    dx = GRID_X[None] - cx[:, None, None]
    dy = GRID_Y[None] - cy[:, None, None]
    return np.hypot(dx, dy) - radius[:, None, None]


def segment_distance(ax, ay, bx, by, half_width, end_type):
    """Signed distance to thick segments from a to b with round, butt or square ends: (b,) → (b, 32, 32).

    round: a capsule (distance to the segment minus the half-width);
    butt: the rectangle of the segment's length; square: the rectangle
    extended by the half-width beyond each end. Rectangles use the exact
    signed distance of an oriented box.
    """
    dx, dy = bx - ax, by - ay
    length = np.hypot(dx, dy)
    safe = np.maximum(length, 1e-12)
    ux, uy = np.where(length > 1e-12, dx / safe, 1.0), np.where(length > 1e-12, dy / safe, 0.0)
    mx, my = (ax + bx) / 2, (ay + by) / 2
    px = GRID_X[None] - mx[:, None, None]
    py = GRID_Y[None] - my[:, None, None]
    along = px * ux[:, None, None] + py * uy[:, None, None]
    across = -px * uy[:, None, None] + py * ux[:, None, None]
    h = half_width[:, None, None]
    half_length = (length / 2)[:, None, None]
    # round ends: distance to the segment, minus h
    t = np.clip(along, -half_length, half_length)
    capsule = np.hypot(along - t, across) - h
    # butt and square ends: an oriented box of half-size (half_length + extension, h)
    extension = np.where(end_type == 2, half_width, 0.0)[:, None, None]
    qu = np.abs(along) - (half_length + extension)
    qv = np.abs(across) - h
    box = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0)) + np.minimum(np.maximum(qu, qv), 0)
    return np.where((end_type == 0)[:, None, None], capsule, box)


def draw_parameters(class_name, count, rng):
    """Uniform draws of Table 3's parameters for ``count`` images of one class, plus the end type.

    One row of uniforms per image, so image j's parameters do not depend on count.
    """
    ranges = TABLE_3[class_name]
    u = rng.random((count, len(ranges) + 1))
    params = {name: low + (high - low) * u[:, j] for j, (name, (low, high)) in enumerate(ranges.items())}
    params["end_type"] = np.minimum((3 * u[:, -1]).astype(int), 2)   # round, butt or square, equally likely
    return params


def render(class_name, p):
    """Images (count, 32, 32) of one class from its parameters."""
    x, y = p["x"], p["y"]
    zero = np.zeros_like(x)
    if class_name == "one":
        parts = [disc_distance(x, y, PIP_RADIUS * p["p_size"])]
    elif class_name == "two":
        r = PIP_RADIUS * p["p_size"]
        parts = [disc_distance(x, y, r), disc_distance(-x, -y, r)]
    elif class_name == "three":
        parts = [segment_distance(x, y, -x, -y, LINE_HALF_WIDTH * p["l_weight"], p["end_type"])]
    elif class_name in ("four", "five"):
        h = LINE_HALF_WIDTH * p["l_weight"]
        corners = [(x, y), (-x, y), (-x, -y), (x, -y)]
        parts = [segment_distance(*corners[j], *corners[(j + 1) % 4], h, p["end_type"]) for j in range(4)]
        if class_name == "five":
            parts.append(disc_distance(zero, zero, PIP_RADIUS * p["p_size"]))
    elif class_name == "six":
        h, xs, ys = LINE_HALF_WIDTH * p["l_weight"], p["x_shift"], p["y_shift"]
        parts = [segment_distance(x - xs, y - ys, -x - xs, -y - ys, h, p["end_type"]),
                 segment_distance(x + xs, y + ys, -x + xs, -y + ys, h, p["end_type"])]
    else:
        raise ValueError(f"unknown dice class {class_name!r}; expected one of {CLASS_NAMES}")
    return np.max([coverage(d) for d in parts], axis=0)


SPLITS = {"train": 0, "test": 1}
PER_CLASS = 10_000


def dice(split="train", n=None, seed=0, batch=4096):
    """The dice dataset: X (n, 1024) float64 in [0, 1] (flattened 32×32), y (n,) labels 0..5.

    ``split`` 'train' or 'test', 60,000 images each (10,000 per class). Labels
    cycle 0, 1, …, 5, so every prefix is balanced, and ``n`` (at most 60,000)
    takes the first n: image i of a split is the same whatever n is. Each
    (seed, split, class) has its own random stream, so the train and test
    splits are drawn independently and never share a parameter draw.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
    total = 6 * PER_CLASS
    n = total if n is None else n
    n = check_integer(n, "n", 1, total)
    X = np.empty((n, SIZE * SIZE))
    y = np.arange(n) % 6
    for c, name in enumerate(CLASS_NAMES):
        count = len(range(c, n, 6))
        if count == 0:
            continue
        rng = np.random.default_rng([seed, SPLITS[split], c])
        params = draw_parameters(name, count, rng)
        rows = np.arange(c, n, 6)
        for start in range(0, count, batch):
            chunk = {key: value[start:start + batch] for key, value in params.items()}
            X[rows[start:start + batch]] = render(name, chunk).reshape(-1, SIZE * SIZE)
    return X, y
