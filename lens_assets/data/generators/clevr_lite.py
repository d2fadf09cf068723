"""CLEVR-style scenes: shaded cubes, spheres and cylinders on CLEVR's grey floor.

The real CLEVR cannot be downloaded here, so this renders its attribute space faithfully with a
tiny numpy renderer: CLEVR's eight colours (RGB values from its properties.json), three shapes,
rubber or metal, small or large (CLEVR's radii 0.35 and 0.7), seen from 30 degrees above (an
orthographic view, with objects a little smaller further back), lit by one key light from the
upper left (Lambertian shading, a specular highlight on metal, soft shadows on the floor).
Objects never overlap.

One-object scenes (split "single") cycle through the attribute combinations, so every colour,
shape, material and size is equally common there (for probing classes); the others are split
"multi". Every scene is labelled with its count and which colours and shapes it holds, and is
asked one CLEVR-style question of each kind (colour, shape, material, size, count, exists; see
`clevr_scene`), each its own dataset row. Images are rendered at twice their size and averaged
down (antialiasing), with numpy arithmetic and square roots only, so a seed gives the same bytes.
"""

from __future__ import annotations

import functools
import math
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lens_assets.data.generators.clevr_scene import (
    ATTRIBUTES,
    CHOICES,
    COLOURS,
    KINDS,
    MATERIALS,
    MAX_COUNT,
    SHAPES,
    SIZES,
    VALUES,
    SceneObject,
    askable,
    balanced_singles,
    describe,
    random_object,
    scene_labels,
    write_questions,
)
from lens_assets.data.generators.samples import Question, Sample

__all__ = [
    "ATTRIBUTES",
    "CHOICES",
    "COLOURS",
    "KINDS",
    "MATERIALS",
    "SHAPES",
    "SIZES",
    "VALUES",
    "Params",
    "Scene",
    "SceneObject",
    "describe",
    "empty_floor",
    "generate",
    "layout_scene",
    "render_scene",
    "scene_labels",
    "scenes",
]

RADII = {"small": 0.35, "large": 0.7}  # CLEVR's object radii, in world units
SUPERSAMPLE = 2
UNIT = 0.24  # one world unit, in image heights, at the front edge of the floor
ELEVATION = math.radians(30)
SIN_E, COS_E = math.sin(ELEVATION), math.cos(ELEVATION)


def _unit(vector: Sequence[float]) -> np.ndarray:
    array = np.asarray(vector, dtype=np.float64)
    return array / np.sqrt(array @ array)


# World axes: x right, y away from the camera, z up. Screen axes in world terms:
RIGHT = np.array([1.0, 0.0, 0.0])
UP = np.array([0.0, SIN_E, COS_E])
TOWARD = np.array([0.0, -COS_E, SIN_E])  # towards the camera
LIGHT = _unit((-0.4, -0.45, 0.8))  # towards the key light: left, in front, above
HALF = _unit(LIGHT + TOWARD)  # Blinn's half vector: where highlights sit
HALF_FLAT = _unit((HALF[0], HALF[1]))  # its horizontal part, for the cylinder's stripe
# Metal highlights are white inside 12 degrees of the mirror direction, fading out by 28, so
# even a small sphere shows a few white pixels; a cylinder's runs its whole height, so narrower.
HIGHLIGHT_COS = (math.cos(math.radians(28)), math.cos(math.radians(12)))
STRIPE_COS = (math.cos(math.radians(16)), math.cos(math.radians(5)))  # cylinders: narrower
LIGHTING = {"rubber": (0.35, 0.7), "metal": (0.2, 0.85)}  # ambient, diffuse gain
# The floor is lighter (138..164) than any unlit object pixel of CLEVR's gray (at most 92), and
# shadows darken it by at most 15%, so objects of every colour stand out from the floor.
FLOOR_TOP, FLOOR_FALL, FLOOR_SIDES = 164.0, 18.0, 8.0
SHADOW = 0.15
GAP = 3.0  # pixels kept free between objects' bounding boxes, and at the image border
YAW = (math.radians(20), math.radians(70))  # cube turns that show three faces
PLACEMENT_TRIES, LAYOUT_RESTARTS = 100, 10
ZOOMS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)
# Every label is a concept: the count, what is present, and a one-object scene's attributes.
CONCEPTS = (
    "count",
    *ATTRIBUTES,
    *(f"has_{value}" for key in ("colour", "shape") for value in VALUES[key]),
)


class Params(BaseModel):
    """`single_fraction` of the images hold one object (when `min_objects` allows); the rest
    hold between max(2, min_objects) and max_objects. `image_size` is (width, height)."""

    model_config = ConfigDict(extra="forbid")
    min_objects: int = Field(default=1, ge=1)
    max_objects: int = Field(default=3, ge=1, le=MAX_COUNT)
    single_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    image_size: tuple[int, int] = (192, 128)  # CLEVR's 3:2 (480x320), small

    @model_validator(mode="after")
    def _check(self) -> Params:
        if self.min_objects > self.max_objects:
            raise ValueError("min_objects must not exceed max_objects")
        if min(self.image_size) < 32:
            raise ValueError("image_size must be at least 32x32")
        return self


@dataclass(frozen=True)
class Scene:
    """What one image shows and asks, before rendering."""

    objects: list[SceneObject]
    questions: list[Question]
    split: str


# ---------------------------------------------------------------- geometry and layout


def _project(obj: SceneObject, x: float, y: float, z: float) -> tuple[float, float]:
    """Screen position of a world offset from the object's footprint centre (pixels)."""
    return obj.x + x, obj.y - (y * SIN_E + z * COS_E)


def _cube_corners(obj: SceneObject) -> list[tuple[float, float]]:
    """The base square's corners, counter-clockwise; CLEVR shrinks cubes to r / sqrt(2)."""
    half = obj.radius / math.sqrt(2)
    cos, sin = math.cos(obj.yaw), math.sin(obj.yaw)
    square = ((half, half), (-half, half), (-half, -half), (half, -half))
    return [(cos * a - sin * b, sin * a + cos * b) for a, b in square]


def bounding_box(obj: SceneObject) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the object's silhouette, in pixels."""
    r = obj.radius
    if obj.shape == "sphere":
        cy = obj.y - r * COS_E
        return obj.x - r, cy - r, obj.x + r, cy + r
    if obj.shape == "cylinder":
        return obj.x - r, obj.y - 2 * r * COS_E - r * SIN_E, obj.x + r, obj.y + r * SIN_E
    height = 2 * r / math.sqrt(2)
    points = [_project(obj, a, b, z) for a, b in _cube_corners(obj) for z in (0.0, height)]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _fits(box: tuple[float, ...], others: list[tuple[float, ...]], width: int, height: int) -> bool:
    left, top, right, bottom = box
    if left < GAP or top < GAP or right > width - GAP or bottom > height - GAP:
        return False
    return all(
        left > o[2] + GAP or right < o[0] - GAP or top > o[3] + GAP or bottom < o[1] - GAP
        for o in others
    )


def _place(
    rng: random.Random,
    spec: SceneObject,
    placed: list[SceneObject],
    size: tuple[int, int],
    zoom: float,
) -> SceneObject | None:
    """Rejection-sample a spot where the object is inside the image and clear of the others."""
    width, height = size
    boxes = [bounding_box(other) for other in placed]
    for _ in range(PLACEMENT_TRIES):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        depth = 0.75 + 0.25 * y / height  # farther objects look smaller, as in CLEVR's camera
        radius = RADII[spec.size] * UNIT * height * depth * zoom
        candidate = replace(spec, x=x, y=y, radius=radius, yaw=rng.uniform(*YAW))
        if _fits(bounding_box(candidate), boxes, width, height):
            return candidate
    return None


def layout_scene(
    rng: random.Random, specs: list[SceneObject], size: tuple[int, int]
) -> list[SceneObject]:
    """Place the objects without overlaps (large ones first, they are the hardest to fit);
    returns them back to front, the order they are drawn in. A crowded scene that will not fit
    is retried with the camera pulled back (everything 10% smaller), as often as needed."""
    ordered = sorted(specs, key=lambda spec: spec.size != "large")
    for zoom in ZOOMS:
        for _ in range(LAYOUT_RESTARTS):
            placed: list[SceneObject] = []
            for spec in ordered:
                obj = _place(rng, spec, placed, size, zoom)
                if obj is None:
                    break
                placed.append(obj)
            else:
                return sorted(placed, key=lambda obj: obj.y)
    raise ValueError(f"cannot fit {len(specs)} objects into {size[0]}x{size[1]}; use larger images")


# ---------------------------------------------------------------- rendering


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _region(
    canvas: np.ndarray, box: tuple[float, float, float, float]
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The canvas pixels under a box, with their centres' coordinates."""
    height, width = canvas.shape[:2]
    x0, y0 = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
    x1, y1 = min(int(box[2]) + 2, width), min(int(box[3]) + 2, height)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64) + 0.5
    return (slice(y0, y1), slice(x0, x1)), xx, yy


def _shade(obj: SceneObject, normals: np.ndarray) -> np.ndarray:
    """Lambertian shading of the object's colour; metal gets more contrast than rubber."""
    ambient, gain = LIGHTING[obj.material]
    diffuse = np.clip(normals @ LIGHT, 0.0, None)
    return np.asarray(COLOURS[obj.colour], dtype=np.float64) * (ambient + gain * diffuse)[..., None]


def _highlight(rgb: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """Blend towards white: a specular highlight."""
    return rgb + (255.0 - rgb) * strength[..., None]


def _glint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A soft spot of reflected light on a flat metal face (face coordinates -1..1), kept off
    the face's edges so the object's outline never runs through a highlight."""
    return _smoothstep(0.65, 0.3, np.sqrt(a * a + b * b))


def _paint(
    canvas: np.ndarray, where: tuple[slice, slice], mask: np.ndarray, rgb: np.ndarray
) -> None:
    canvas[where][mask] = rgb[mask]


def draw_sphere(canvas: np.ndarray, obj: SceneObject) -> None:
    """Per-pixel normals of the visible hemisphere; metal adds a Blinn highlight."""
    r, cy = obj.radius, obj.y - obj.radius * COS_E
    where, xx, yy = _region(canvas, bounding_box(obj))
    u, v = (xx - obj.x) / r, (cy - yy) / r
    inside = u * u + v * v < 1.0
    w = np.sqrt(np.clip(1.0 - u * u - v * v, 0.0, None))
    normals = u[..., None] * RIGHT + v[..., None] * UP + w[..., None] * TOWARD
    rgb = _shade(obj, normals)
    if obj.material == "metal":
        rgb = _highlight(rgb, _smoothstep(*HIGHLIGHT_COS, normals @ HALF))
    _paint(canvas, where, inside, rgb)


def draw_cylinder(canvas: np.ndarray, obj: SceneObject) -> None:
    """A side shaded across its width and a flat elliptical top; metal adds a vertical
    highlight stripe on the side and a spot on the top."""
    r, flat = obj.radius, obj.radius * SIN_E
    top_y = obj.y - 2 * r * COS_E
    where, xx, yy = _region(canvas, bounding_box(obj))
    u = (xx - obj.x) / r
    top_v = (yy - top_y) / flat
    top = u * u + top_v * top_v < 1.0
    base = u * u + ((yy - obj.y) / flat) ** 2 < 1.0
    side = ((np.abs(u) < 1.0) & (yy >= top_y) & (yy <= obj.y) | base) & ~top
    depth = -np.sqrt(np.clip(1.0 - u * u, 0.0, None))
    side_rgb = _shade(obj, np.stack([u, depth, np.zeros_like(u)], axis=-1))
    top_rgb = _shade(obj, np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*u.shape, 3)))
    if obj.material == "metal":
        facing = u * HALF_FLAT[0] + depth * HALF_FLAT[1]
        # The stripe fades out before the bottom rim, staying inside the outline.
        fade = _smoothstep(obj.y + 0.2 * flat, obj.y - 0.6 * r, yy)
        side_rgb = _highlight(side_rgb, _smoothstep(*STRIPE_COS, facing) * fade)
        top_rgb = _highlight(top_rgb, _glint(u, top_v))
    _paint(canvas, where, side, side_rgb)
    _paint(canvas, where, top, top_rgb)


def draw_cube(canvas: np.ndarray, obj: SceneObject) -> None:
    """The top and the sides facing the camera (two, at the yaws used), each a flat-shaded
    parallelogram; metal adds a spot of reflected light on the top and brightens the sides
    upwards, as a shiny cube reflects the bright back of the scene."""
    corners = _cube_corners(obj)
    height = 2 * obj.radius / math.sqrt(2)
    where, xx, yy = _region(canvas, bounding_box(obj))
    faces = []  # (origin, edge a, edge b, normal)
    for (ax, ay), (bx, by) in zip(corners, corners[1:] + corners[:1], strict=True):
        normal = np.array([*_unit(((ax + bx) / 2, (ay + by) / 2)), 0.0])
        if normal @ TOWARD > 1e-6:
            origin, end = _project(obj, ax, ay, 0.0), _project(obj, bx, by, 0.0)
            faces.append(
                (origin, (end[0] - origin[0], end[1] - origin[1]), (0.0, -height * COS_E), normal)
            )
    top = [_project(obj, a, b, height) for a, b in corners]
    edge_a = (top[1][0] - top[0][0], top[1][1] - top[0][1])
    edge_b = (top[3][0] - top[0][0], top[3][1] - top[0][1])
    faces.append((top[0], edge_a, edge_b, np.array([0.0, 0.0, 1.0])))
    for origin, (ax, ay), (bx, by), normal in faces:
        det = ax * by - bx * ay
        dx, dy = xx - origin[0], yy - origin[1]
        a, b = (by * dx - bx * dy) / det, (ax * dy - ay * dx) / det
        inside = (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1)
        rgb = _shade(obj, np.broadcast_to(normal, (*a.shape, 3)))
        if obj.material == "metal" and normal[2] > 0:
            rgb = _highlight(rgb, _glint(2 * a - 1, 2 * b - 1))
        elif obj.material == "metal":
            rgb = rgb * (0.8 + 0.35 * np.clip(b, 0.0, 1.0))[..., None]
        _paint(canvas, where, inside, rgb)


DRAWERS = {"cube": draw_cube, "sphere": draw_sphere, "cylinder": draw_cylinder}


@functools.lru_cache(maxsize=4)
def _floor(width: int, height: int) -> np.ndarray:
    """CLEVR's floor: neutral grey, lighter at the back and in the middle."""
    ty = (np.arange(height) + 0.5) / height
    tx = (np.arange(width) + 0.5) / width
    value = FLOOR_TOP - FLOOR_FALL * ty[:, None] - FLOOR_SIDES * (2 * tx[None, :] - 1) ** 2
    floor = np.repeat(value[..., None], 3, axis=2)
    floor.flags.writeable = False
    return floor


def _shadows(canvas: np.ndarray, objects: list[SceneObject]) -> None:
    """Soft shadows cast back and to the right; overlapping shadows do not darken twice."""
    height, width = canvas.shape[:2]
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    shadow = np.zeros((height, width))
    for obj in objects:
        r = obj.radius
        length = 1.7 if obj.shape == "cylinder" else 1.3
        cx, cy = obj.x + 0.45 * r, obj.y - 0.2 * r
        distance = np.sqrt(((xx - cx) / (length * r)) ** 2 + ((yy - cy) / (0.6 * r)) ** 2)
        shadow = np.maximum(shadow, _smoothstep(1.0, 0.3, distance))
    canvas *= (1.0 - SHADOW * shadow)[..., None]


def render_scene(objects: list[SceneObject], size: tuple[int, int]) -> Image.Image:
    """Draw shadows, then objects back to front, at SUPERSAMPLE times the size; average down."""
    width, height = size
    canvas = _floor(width * SUPERSAMPLE, height * SUPERSAMPLE).copy()
    big = [obj.scaled(SUPERSAMPLE) for obj in sorted(objects, key=lambda obj: obj.y)]
    _shadows(canvas, big)
    for obj in big:
        DRAWERS[obj.shape](canvas, obj)
    small = canvas.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(np.rint(small), 0, 255).astype(np.uint8), "RGB")


def empty_floor(size: tuple[int, int]) -> np.ndarray:
    """The floor with no objects, as uint8 pixels: what tests subtract to find objects."""
    return np.asarray(render_scene([], size))


# ---------------------------------------------------------------- the scenes


def scenes(params: Params, size: int, seed: int) -> Iterator[Scene]:
    """The scenes `generate` renders, each with its questions (one of each kind). Each image
    lays itself out from its own seeded stream, so a change to one scene's layout or questions
    does not ripple into the next ones."""
    singles = balanced_singles(random.Random(f"{seed}/singles"))
    if params.min_objects > 1:
        n_single = 0
    elif params.max_objects == 1:
        n_single = size
    else:
        n_single = round(size * params.single_fraction)
    single = set(random.Random(f"{seed}/splits").sample(range(size), n_single))
    answers: Counter[str] = Counter()
    for index in range(size):
        rng = random.Random(f"{seed}/scene/{index}")
        if index in single:
            specs = [next(singles)]
        else:
            count = rng.randint(max(2, params.min_objects), params.max_objects)
            specs = [random_object(rng) for _ in range(count)]
            while not askable(specs):  # (rare) each attribute needs an object to ask it of
                specs = [random_object(rng) for _ in range(count)]
        objects = layout_scene(rng, specs, params.image_size)
        questions = write_questions(objects, random.Random(f"{seed}/questions/{index}"), answers)
        yield Scene(objects, questions, "single" if len(objects) == 1 else "multi")


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    for index, scene in enumerate(scenes(params, size, seed)):
        yield Sample(
            name=f"{index:05d}",
            image=render_scene(scene.objects, params.image_size),
            labels=scene_labels(scene.objects),
            questions=scene.questions,
            split=scene.split,
        )
