"""3D odd-one-out (after the multi-view object task in Fu et al. 2025): which view differs?

Each item is four separate images, views A-D in order (each `panel_size` square, its letter in
the top-left corner), asked about together. Three show one procedural 3D object from different
viewpoints under different lights; the fourth shows a different object (another shape class,
same colour unless `odd_colour`). Objects are unions of convex solids (boxes, prisms, pyramids,
cube chains) rendered by a small numpy z-buffer with flat shading and dark crease lines,
supersampled twice, so shape is what tells the views apart.

Labels: `answer` (the odd letter), per view `a_object` ... (shape class), `a_image` ... (the
view's index among the sample's images, 0-3), `a_box` ... (the view's pixel box in that image,
"x0,y0,x1,y1", end-exclusive, as for `Image.crop`: the whole image), `a_yaw`, `a_elevation`
(degrees), plus `common_object` and `odd_object`. `plan` and `render_panel` are public so that
tests and analyses can re-render any view with either object.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from lens_assets.data.generators.samples import Question, Sample
from lens_assets.data.generators.textures import font

LETTERS = ("A", "B", "C", "D")
QUESTION = (
    "The four images are views A, B, C and D, in that order. Which of them shows a different "
    "object from the other three? Answer A, B, C or D."
)
LETTER_COLOUR = (0, 0, 0)
SUPERSAMPLE = 2
OBJECT_RADIUS = 0.4  # of the panel size: the bounding sphere, leaving the corners free
AMBIENT, DIFFUSE = 0.35, 0.65
CREASE = 0.45  # brightness factor of crease and outline pixels
BACKGROUND_DEPTH = -10.0  # behind everything: objects lie inside the unit sphere


class Params(BaseModel):
    """YAML keys of an `odd_one_out` dataset."""

    model_config = ConfigDict(extra="forbid")

    panel_size: int = Field(112, ge=48, le=256)  # each view's image, pixels square
    # Also give the odd object another colour: an easy variant, solvable from colour alone.
    odd_colour: bool = False


# Which objects an item shows are concepts; the item id, the answer letter, image indices,
# boxes and view angles are not.
CONCEPTS = ("common_object", "odd_object", "a_object", "b_object", "c_object", "d_object")


@dataclass(frozen=True)
class Mesh:
    """Triangles of a closed solid (a union of convex pieces), with outward unit normals."""

    triangles: np.ndarray  # (T, 3, 3)
    normals: np.ndarray  # (T, 3)


@dataclass(frozen=True)
class View:
    """How one panel sees its object: a rotation to camera space and a light direction."""

    rotation: np.ndarray  # (3, 3); camera: x right, y up, z towards the viewer
    light: np.ndarray  # unit vector towards the light, camera space
    yaw: float
    elevation: float


@dataclass(frozen=True)
class ItemPlan:
    """Everything about one item, decided before any pixel is drawn."""

    index: int
    answer: str
    common: str
    odd: str
    meshes: dict[str, Mesh]  # shape class -> mesh (this item's proportions)
    views: tuple[View, ...]  # per panel, A-D
    colours: tuple[tuple[int, int, int], ...]  # per panel
    background: int


# --- solids -------------------------------------------------------------------------------

Piece = tuple[np.ndarray, list[tuple[int, ...]]]  # convex solid: vertices, polygon faces


def _box(centre: tuple[float, float, float], size: tuple[float, float, float]) -> Piece:
    c, s = np.asarray(centre, float), np.asarray(size, float) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    faces = [(0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5)]
    return c + corners * s, faces


def _prism(sides: int, radius: float, height: float, twist: float = 0.0) -> Piece:
    """An upright prism on a regular polygon (the y axis is up)."""
    angles = twist + 2 * np.pi * np.arange(sides) / sides
    ring = np.stack([radius * np.cos(angles), np.zeros(sides), radius * np.sin(angles)], 1)
    half = np.array([0.0, height / 2, 0.0])
    vertices = np.concatenate([ring - half, ring + half])
    faces = [(i, (i + 1) % sides, sides + (i + 1) % sides, sides + i) for i in range(sides)]
    faces += [tuple(range(sides)), tuple(range(sides, 2 * sides))]
    return vertices, faces


def _pyramid(sides: int, radius: float, height: float, below: float = 0.0) -> Piece:
    """A pyramid (or, with `below` > 0, a bipyramid) on a regular polygon."""
    angles = 2 * np.pi * np.arange(sides) / sides + np.pi / sides
    ring = np.stack([radius * np.cos(angles), np.zeros(sides), radius * np.sin(angles)], 1)
    apex = [[0.0, height, 0.0]]
    faces: list[tuple[int, ...]] = [(i, (i + 1) % sides, sides) for i in range(sides)]
    if below > 0:
        faces += [(i, (i + 1) % sides, sides + 1) for i in range(sides)]
        return np.concatenate([ring, apex, [[0.0, -below, 0.0]]]), faces
    return np.concatenate([ring, apex]), [*faces, tuple(range(sides))]


def _shapes() -> dict[str, Callable[[np.random.Generator], list[Piece]]]:
    """Shape classes: each draws its own proportions, so instances of a class vary a little."""

    def u(rng: np.random.Generator, low: float, high: float) -> float:
        return float(rng.uniform(low, high))

    def polycube(rng: np.random.Generator) -> list[Piece]:
        # A Shepard-Metzler-like chain: arms of cubes turning at right angles.
        axes = [np.eye(3)[i] * s for i in range(3) for s in (-1, 1)]
        cells, position, previous = [np.zeros(3)], np.zeros(3), None
        for _ in range(4):
            options = [a for a in axes if previous is None or abs(a @ previous) < 0.5]
            direction = options[int(rng.integers(len(options)))]
            for _ in range(int(rng.integers(1, 3))):
                position = position + direction
                cells.append(position)
            previous = direction
        return [_box(tuple(cell), (1.0, 1.0, 1.0)) for cell in cells]

    def house(rng: np.random.Generator) -> list[Piece]:
        # A unit-wide box with a hipped (pyramid) or gabled (prism) roof on top.
        height = u(rng, 0.8, 1.1)
        if rng.random() < 0.5:
            vertices, faces = _pyramid(4, 0.75, u(rng, 0.5, 0.8))
            roof = (vertices + np.array([0.0, height / 2, 0.0]), faces)
        else:
            roof = _roof(height / 2)
        return [_box((0, 0, 0), (1.0, height, 1.0)), roof]

    return {
        "cuboid": lambda r: [_box((0, 0, 0), (1.0, u(r, 0.35, 0.6), u(r, 0.6, 0.8)))],
        "hex-prism": lambda r: [_prism(6, 0.5, u(r, 1.1, 1.6))],
        "tri-prism": lambda r: [_prism(3, 0.6, u(r, 1.0, 1.5))],
        "pyramid": lambda r: [_pyramid(4, 0.7, u(r, 0.9, 1.3))],
        "bipyramid": lambda r: [_pyramid(5, 0.6, u(r, 0.7, 1.0), below=u(r, 0.7, 1.0))],
        "l-block": lambda r: [
            _box((0, 0, 0), (2.0, 0.6, 0.6)),
            _box((-0.7, u(r, 0.7, 0.9), 0), (0.6, u(r, 1.0, 1.4), 0.6)),
        ],
        "t-block": lambda r: [
            _box((0, 0, 0), (2.0, 0.6, 0.6)),
            _box((0, -u(r, 0.8, 1.0), 0), (0.6, u(r, 1.2, 1.6), 0.6)),
        ],
        "stairs": lambda r: [
            _box((0, 0, 0), (1.8, 0.6, 0.8)),
            _box((0.3, 0.6, 0), (1.2, 0.6, 0.8)),
            _box((0.6, 1.2, 0), (0.6, 0.6, 0.8)),
        ],
        "arch": lambda r: [
            _box((0, 0.7, 0), (2.0, 0.5, 0.6)),
            _box((-0.75, 0, 0), (0.5, u(r, 1.0, 1.3), 0.6)),
            _box((0.75, 0, 0), (0.5, u(r, 1.0, 1.3), 0.6)),
        ],
        "house": house,
        "polycube": polycube,
    }


def _roof(base: float) -> Piece:
    """A triangular-prism (gabled) roof lying along x, its eaves at height `base`."""
    vertices, faces = _prism(3, 0.62, 1.0, twist=np.pi / 2)
    # Lay the prism's axis along x (its triangle's base sits 0.31 below its centre) and lift it.
    vertices = vertices[:, [1, 2, 0]] + np.array([0.0, base + 0.31, 0.0])
    return vertices, faces


def _piece_triangles(vertices: np.ndarray, faces: list[tuple[int, ...]]) -> list[np.ndarray]:
    """Fan-triangulate convex faces, each wound counter-clockwise seen from outside."""
    centre = vertices.mean(0)
    triangles = []
    for face in faces:
        polygon = vertices[list(face)]
        normal = np.cross(polygon[1] - polygon[0], polygon[2] - polygon[0])
        if normal @ (polygon.mean(0) - centre) < 0:
            polygon = polygon[::-1]
        triangles += [
            np.stack([polygon[0], polygon[i], polygon[i + 1]]) for i in range(1, len(polygon) - 1)
        ]
    return triangles


def build_mesh(pieces: list[Piece]) -> Mesh:
    """One mesh from convex pieces, centred and scaled into the unit sphere."""
    triangles = np.array([t for v, f in pieces for t in _piece_triangles(v, f)], float)
    points = triangles.reshape(-1, 3)
    triangles = triangles - (points.min(0) + points.max(0)) / 2
    triangles /= np.linalg.norm(triangles.reshape(-1, 3), axis=1).max()
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return Mesh(triangles=triangles, normals=normals)


SHAPES = _shapes()


# --- rendering ----------------------------------------------------------------------------


def _rasterise(mesh: Mesh, rotation: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Z-buffer: per pixel the nearest triangle index (-1 for background) and its depth."""
    scale = OBJECT_RADIUS * size
    triangles = mesh.triangles @ rotation.T
    normals = mesh.normals @ rotation.T
    ids = np.full((size, size), -1, dtype=np.int64)
    depth = np.full((size, size), BACKGROUND_DEPTH)
    for index in np.nonzero(normals[:, 2] > 1e-9)[0]:  # back faces of closed solids are hidden
        corners = triangles[index]
        xs = size / 2 + scale * corners[:, 0]
        ys = size / 2 - scale * corners[:, 1]
        x0, x1 = max(math.floor(xs.min()), 0), min(math.ceil(xs.max()), size - 1)
        y0, y1 = max(math.floor(ys.min()), 0), min(math.ceil(ys.max()), size - 1)
        if x1 < x0 or y1 < y0:
            continue
        px, py = np.meshgrid(np.arange(x0, x1 + 1) + 0.5, np.arange(y0, y1 + 1) + 0.5)
        area = (xs[1] - xs[0]) * (ys[2] - ys[0]) - (xs[2] - xs[0]) * (ys[1] - ys[0])
        if abs(area) < 1e-9:
            continue
        weights = [
            ((xs[(k + 2) % 3] - xs[(k + 1) % 3]) * (py - ys[(k + 1) % 3])
             - (ys[(k + 2) % 3] - ys[(k + 1) % 3]) * (px - xs[(k + 1) % 3])) / area
            for k in range(3)
        ]  # fmt: skip
        inside = (weights[0] >= 0) & (weights[1] >= 0) & (weights[2] >= 0)
        z = sum(w * corners[k, 2] for k, w in enumerate(weights))
        region = depth[y0 : y1 + 1, x0 : x1 + 1]
        closer = inside & (z > region)
        region[closer] = z[closer]
        ids[y0 : y1 + 1, x0 : x1 + 1][closer] = index
    return ids, depth


def _creases(ids: np.ndarray, depth: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Pixels on an outline, a fold (normals differ) or a depth step: where lines are drawn.

    Coplanar faces of different pieces share a normal id, so unions show no seams.
    """
    _, normal_ids = np.unique(np.round(normals, 3), axis=0, return_inverse=True)
    planes = np.append(normal_ids.reshape(-1), -1)[ids]  # background (-1) -> -1
    lines = np.zeros(ids.shape, dtype=bool)
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        edge = (planes[tuple(a)] != planes[tuple(b)]) | (
            np.abs(depth[tuple(a)] - depth[tuple(b)]) > 0.08
        )
        lines[tuple(a)] |= edge
        lines[tuple(b)] |= edge
    return lines & (ids >= 0)


def render_panel(
    mesh: Mesh, view: View, colour: tuple[int, int, int], background: int, size: int
) -> Image.Image:
    """One flat-shaded view of `mesh` on a plain background, `size` pixels square, no letter."""
    big = size * SUPERSAMPLE
    ids, depth = _rasterise(mesh, view.rotation, big)
    normals = mesh.normals @ view.rotation.T
    shade = AMBIENT + DIFFUSE * np.clip(normals @ view.light, 0.0, None)
    face_colours = np.clip(np.outer(shade, colour), 0, 255)
    pixels = np.full((big, big, 3), float(background))
    pixels[ids >= 0] = face_colours[ids[ids >= 0]]
    pixels[_creases(ids, depth, normals)] *= CREASE
    image = Image.fromarray(np.rint(pixels).astype(np.uint8))
    return image.reduce(SUPERSAMPLE)


# --- planning -----------------------------------------------------------------------------


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, keys): item i is the same whatever `size` is."""
    return np.random.default_rng([seed % 2**63, *keys])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform on SO(3), from a random unit quaternion."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _turntable(pose: np.ndarray, yaw: float, elevation: float) -> np.ndarray:
    """Turn the posed object about the vertical axis, then tilt the camera down on it."""
    a, e = math.radians(yaw), math.radians(elevation)
    spin = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    tilt = np.array([[1, 0, 0], [0, math.cos(e), -math.sin(e)], [0, math.sin(e), math.cos(e)]])
    return tilt @ spin @ pose


def _light(rng: np.random.Generator) -> np.ndarray:
    """From the upper left and in front, jittered per panel."""
    azimuth = math.radians(135 + rng.uniform(-35, 35))
    height = math.radians(rng.uniform(25, 60))
    direction = np.array([math.cos(height) * math.cos(azimuth), math.sin(height), 0.0]) + np.array(
        [0.0, 0.0, rng.uniform(0.6, 1.0)]
    )
    return direction / np.linalg.norm(direction)


def _colour(hue: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, 0.6, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def _answers(size: int, seed: int) -> list[str]:
    """Odd letters, balanced: every run of four items uses each letter once."""
    answers = []
    for block in range(0, size, len(LETTERS)):
        order = _rng(seed, 1, block).permutation(len(LETTERS))
        answers += [LETTERS[int(i)] for i in order]
    return answers[:size]


def _plan_item(params: Params, index: int, answer: str, seed: int) -> ItemPlan:
    rng = _rng(seed, 0, index)
    names = list(SHAPES)
    common, odd = (names[int(i)] for i in rng.choice(len(names), size=2, replace=False))
    meshes = {name: build_mesh(SHAPES[name](rng)) for name in (common, odd)}
    poses = {common: _random_rotation(rng), odd: _random_rotation(rng)}
    # The three views of the common object are spread around the turntable.
    yaws = iter(rng.uniform(0, 360) + 120 * np.arange(3) + rng.uniform(-20, 20, size=3))
    hue = rng.uniform()
    views, colours = [], []
    for letter in LETTERS:
        name = odd if letter == answer else common
        yaw = float(rng.uniform(0, 360) if name == odd else next(yaws)) % 360
        elevation = float(rng.uniform(10, 40))
        views.append(View(_turntable(poses[name], yaw, elevation), _light(rng), yaw, elevation))
        shift = rng.uniform(0.3, 0.7) if params.odd_colour and name == odd else 0.0
        colours.append(_colour(hue + shift))
    return ItemPlan(
        index=index,
        answer=answer,
        common=common,
        odd=odd,
        meshes=meshes,
        views=tuple(views),
        colours=tuple(colours),
        background=int(rng.integers(175, 221)),
    )


def plan(params: Params, size: int, seed: int) -> list[ItemPlan]:
    """Decide every item (objects, views, lights, colours, answer) without rendering."""
    return [
        _plan_item(params, index, answer, seed) for index, answer in enumerate(_answers(size, seed))
    ]


def panel_object(item: ItemPlan, letter: str) -> str:
    return item.odd if letter == item.answer else item.common


def render_views(item: ItemPlan, params: Params) -> list[Image.Image]:
    """The four views A-D, one image each, with its letter in the top-left corner."""
    letter_font = font(max(10, params.panel_size // 8))
    views = []
    for letter, view, colour in zip(LETTERS, item.views, item.colours, strict=True):
        mesh = item.meshes[panel_object(item, letter)]
        panel = render_panel(mesh, view, colour, item.background, params.panel_size)
        ImageDraw.Draw(panel).text((3, 1), letter, font=letter_font, fill=LETTER_COLOUR)
        views.append(panel)
    return views


def labels(item: ItemPlan, params: Params) -> dict[str, str]:
    result = {
        "item": str(item.index),
        "answer": item.answer,
        "common_object": item.common,
        "odd_object": item.odd,
    }
    box = f"0,0,{params.panel_size},{params.panel_size}"  # a view fills its image
    for index, (letter, view) in enumerate(zip(LETTERS, item.views, strict=True)):
        key = letter.lower()
        result[f"{key}_object"] = panel_object(item, letter)
        result[f"{key}_image"] = str(index)
        result[f"{key}_box"] = box
        result[f"{key}_yaw"] = f"{view.yaw:.1f}"
        result[f"{key}_elevation"] = f"{view.elevation:.1f}"
    return result


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    """One Sample per item: the four views as four images, its answer and its question."""
    for item in plan(params, size, seed):
        yield Sample(
            name=f"{item.index:05d}",
            images=render_views(item, params),
            labels=labels(item, params),
            questions=[Question(QUESTION, item.answer, "odd_one_out", "answer", choices=LETTERS)],
        )
