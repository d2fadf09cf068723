"""Visual correspondence (after BLINK, as used by Fu et al. 2025): which candidate is REF?

Each item is a PAIR of views of one procedural scene (busy colour texture, so every patch is
distinctive), shown as two images, as the study asks it: the first (reference) image marks one
point "REF"; the second (target) image, made by applying a known transform to the scene (shift,
scale, rotation or a lighting change), marks four candidates A-D, exactly one of which is where
REF's scene point landed. Each item is one Sample, "{index:05d}", with `images` [reference,
target] (each `image_size` square) and one question whose choices are A-D.

Geometry is exact: the target view is `Image.transform` of the scene with a known affine, the
correct candidate is REF mapped by the same affine (rounded to the nearest pixel), and the
labels carry that affine. Coordinates are pixel indices (x right, y down) of the image they are
marked in: `ref_x`, `ref_y` of image `ref_image` (0, the first), `a_x` ... `d_y` and `exact_x`,
`exact_y` of image `candidates_image` (1, the second). Pillow samples pixel (i, j) at the
continuous point (i + 0.5, j + 0.5), and the maths below follows that convention. Markers use
pure colours that the texture never contains (see `textures.TEXTURE_MIN`), so they can be
located from pixels alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lens_assets.data.generators.samples import Question, Sample
from lens_assets.data.generators.textures import TEXTURE_MAX, TEXTURE_MIN, font, scene_texture

Transform = Literal["shift", "scale", "rotation", "lighting"]
TRANSFORMS: tuple[Transform, ...] = ("shift", "scale", "rotation", "lighting")
LETTERS = ("A", "B", "C", "D")
# The one concept of a pair is its transform; the rest are coordinates, the item id, the
# answer letter and the exact affine, which are not concepts to probe.
CONCEPTS = ("transform",)
QUESTION = (
    "The first image marks a point REF. Which of the points A, B, C and D marked in the second "
    "image shows the same point of the scene as REF? Answer A, B, C or D."
)
REF_IMAGE, CANDIDATES_IMAGE = 0, 1  # which of a sample's images each marker is drawn in

RING = (255, 0, 0)  # the marker ring; never in a texture, so findable by exact colour
HALO = (250, 250, 250)  # thin rings either side of it, for contrast (not text white)
TEXT = (255, 255, 255)
TEXT_STROKE = (0, 0, 0)
RING_RADIUS = 5  # outer radius of the red ring; the white halo adds one pixel
FONT_SIZE = 11
BILINEAR = Image.Resampling.BILINEAR
SCENE_FACTOR = 2.5  # the scene canvas is this many times the view, enough for every transform
REF_TRIES = 24  # valid REF draws compared, keeping the one that maps nearest a pixel centre
MAX_DRAWS = 10_000  # random draws per point before a layout is declared impossible


class Params(BaseModel):
    """YAML keys of a `correspondence` dataset."""

    model_config = ConfigDict(extra="forbid")

    transforms: list[Transform] = Field(default_factory=lambda: list(TRANSFORMS))
    image_size: int = Field(128, ge=96, le=512)
    # Candidates are at least this far apart (and from the correct one), in pixels.
    min_distance: int = Field(28, ge=16, le=64)
    # Marker centres stay this far from the borders (room for the ring and its label).
    margin: int = Field(14, ge=10, le=48)

    @field_validator("transforms")
    @classmethod
    def _non_empty(cls, value: list[Transform]) -> list[Transform]:
        if not value:
            raise ValueError("transforms must name at least one transform")
        return value

    @model_validator(mode="after")
    def _room_for_four(self) -> Params:
        if self.image_size - 2 * self.margin < 2 * self.min_distance:
            raise ValueError("image_size - 2 * margin must be at least 2 * min_distance")
        return self


@dataclass(frozen=True)
class Lighting:
    """A global illumination change: per-channel gain, a gamma, and a linear light gradient."""

    gains: tuple[float, float, float]
    gamma: float
    gradient: tuple[float, float]  # light falloff along x and y, per image width


@dataclass(frozen=True)
class Item:
    """Everything needed to render one pair, decided before any pixel is drawn."""

    index: int
    transform: Transform
    scene_seed: tuple[int, int]
    # target = matrix @ ref + offset, in pixel-index coordinates (see the module docstring)
    matrix: tuple[tuple[float, float], tuple[float, float]]
    offset: tuple[float, float]
    angle: float  # degrees, counter-clockwise as seen in the image
    scale: float
    lighting: Lighting | None
    ref: tuple[int, int]
    candidates: tuple[tuple[int, int], ...]  # A, B, C, D in the target view
    answer: str


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, keys): item i is the same whatever `size` is."""
    return np.random.default_rng([seed % 2**63, *keys])


def _geometry(
    rng: np.random.Generator, transform: Transform, size: int
) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Affine (matrix, offset) taking reference pixel coords to target pixel coords.

    Scale and rotation act about the image centre with a small extra shift, so that the centre
    itself is not a give-away; shifts are whole pixels, so a shifted view is an exact crop.
    """
    angle, scale = 0.0, 1.0
    shift = np.zeros(2)
    if transform == "shift":
        while np.hypot(*shift) < size * 0.12:
            shift = rng.integers(-size // 4, size // 4 + 1, size=2).astype(float)
    elif transform == "scale":
        scale = float(rng.uniform(1.3, 1.6) if rng.random() < 0.5 else rng.uniform(0.7, 0.8))
        shift = np.round(rng.uniform(-0.08, 0.08, size=2) * size)
    elif transform == "rotation":
        angle = float(rng.uniform(20.0, 60.0) * rng.choice([-1.0, 1.0]))
        shift = np.round(rng.uniform(-0.08, 0.08, size=2) * size)
    theta = math.radians(angle)
    # Counter-clockwise on screen means clockwise in y-down coordinates.
    matrix = scale * np.array(
        [[math.cos(theta), math.sin(theta)], [-math.sin(theta), math.cos(theta)]]
    )
    centre = np.full(2, size / 2.0)
    # In continuous coords: q = M (p - c) + c + shift; pixel index i sits at i + 0.5.
    offset = (centre + shift - matrix @ centre) + (matrix @ np.full(2, 0.5) - 0.5)
    return matrix, offset, angle, scale


def _lighting(rng: np.random.Generator) -> Lighting:
    """A clearly visible but structure-preserving illumination change.

    Brightening comes from the gamma, not from gains above one, and the gradient only darkens:
    little saturates, so local structure survives (as under real light, not overexposure).
    """
    gains = tuple(float(g) for g in rng.uniform(0.65, 1.15, size=3))
    gamma = float(rng.uniform(0.55, 0.75) if rng.random() < 0.5 else rng.uniform(1.3, 1.6))
    direction = rng.uniform(0, 2 * math.pi)
    strength = float(rng.uniform(0.25, 0.5))
    gradient = (strength * math.cos(direction), strength * math.sin(direction))
    return Lighting(gains=gains, gamma=gamma, gradient=gradient)  # type: ignore[arg-type]


def _inside(point: np.ndarray, size: int, margin: int) -> bool:
    return bool(np.all(point >= margin) and np.all(point <= size - 1 - margin))


Box = tuple[int, int, int, int]


def marker_boxes(centre: tuple[int, int], text: str, size: int) -> tuple[Box, Box, tuple[int, int]]:
    """Ring box, text box (both inclusive x0, y0, x1, y1) and text origin of one marker.

    The label goes right of the ring, or left where it would leave the image; planning uses
    the same boxes as drawing, so markers can be kept from overlapping.
    """
    left, top, right, bottom = font(FONT_SIZE).getbbox(text, stroke_width=1)
    width, height = right - left, bottom - top
    gap = RING_RADIUS + 3
    x0 = centre[0] + gap
    # The side depends on the widest candidate letter too, so planning (which does not know
    # the letters yet) and drawing always agree.
    if x0 + max(width, _LETTER_WIDTH) > size - 1:
        x0 = centre[0] - gap - width
    y0 = min(max(centre[1] - height // 2, 0), size - 1 - height)
    radius = RING_RADIUS + 1
    ring = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
    return ring, (x0, y0, x0 + width, y0 + height), (x0 - left, y0 - top)


def _text_width(text: str) -> int:
    left, _, right, _ = font(FONT_SIZE).getbbox(text, stroke_width=1)
    return int(right - left)


_LETTER_WIDTH = max(_text_width(letter) for letter in LETTERS)


def _union(boxes: list[Box]) -> Box:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _candidate_boxes(point: tuple[int, int], size: int) -> tuple[Box, Box]:
    """Ring box and the union of the label boxes any letter A-D would take at `point`."""
    boxes = [marker_boxes(point, letter, size) for letter in LETTERS]
    return boxes[0][0], _union([b[1] for b in boxes])


def _overlap(first: Box, second: Box, pad: int = 2) -> bool:
    return not (
        first[2] + pad < second[0]
        or second[2] + pad < first[0]
        or first[3] + pad < second[1]
        or second[3] + pad < first[1]
    )


def _clear(point: tuple[int, int], others: list[tuple[int, int]], params: Params) -> bool:
    """Far enough from every other candidate, and no ring or label touching theirs."""
    size = params.image_size
    mine = _candidate_boxes(point, size)
    for other in others:
        if math.dist(point, other) < params.min_distance:
            return False
        theirs = _candidate_boxes(other, size)
        if any(_overlap(a, b) for a in mine for b in theirs):
            return False
    return True


def _points(
    rng: np.random.Generator, matrix: np.ndarray, offset: np.ndarray, params: Params
) -> tuple[tuple[int, int], tuple[int, int], list[tuple[int, int]]]:
    """REF, its exact correspondent (rounded) and three distractors, all inside the margins."""
    size, margin = params.image_size, params.margin
    ref, mapped, error, tries = None, None, np.inf, 0
    # Of a few valid REF draws keep the one whose image lands nearest a pixel centre, so that
    # the rounded correct candidate is within a fraction of a pixel of the exact correspondent.
    for _ in range(MAX_DRAWS):
        if error <= 0.1 or tries >= REF_TRIES:
            break
        point = rng.integers(margin, size - margin, size=2)
        exact = matrix @ point + offset
        if not _inside(np.rint(exact), size, margin):
            continue
        tries += 1
        if np.abs(exact - np.rint(exact)).max() < error:
            ref, mapped, error = point, np.rint(exact), np.abs(exact - np.rint(exact)).max()
    if ref is None or mapped is None:
        raise ValueError("no REF point maps inside the target: margin too large")
    correct = (int(mapped[0]), int(mapped[1]))
    chosen = [correct]
    for _ in range(MAX_DRAWS):
        if len(chosen) == len(LETTERS):
            break
        x, y = rng.integers(margin, size - margin, size=2)
        if _clear((int(x), int(y)), chosen, params):
            chosen.append((int(x), int(y)))
    else:
        raise ValueError("cannot place four separated candidates: lower min_distance or margin")
    return (int(ref[0]), int(ref[1])), correct, chosen[1:]


def _answers(params: Params, size: int, seed: int) -> list[str]:
    """Correct letters, balanced per transform: each run of 4 items of a transform is A-D."""
    count = len(params.transforms)
    answers = []
    for index in range(size):
        slot, occurrence = index % count, index // count
        block = _rng(seed, 1, slot, occurrence // len(LETTERS)).permutation(len(LETTERS))
        answers.append(LETTERS[int(block[occurrence % len(LETTERS)])])
    return answers


def plan(params: Params, size: int, seed: int) -> list[Item]:
    """Decide every item (transform, geometry, points, answer) without rendering."""
    items = []
    for index, answer in enumerate(_answers(params, size, seed)):
        transform = params.transforms[index % len(params.transforms)]
        rng = _rng(seed, 0, index)
        matrix, offset, angle, scale = _geometry(rng, transform, params.image_size)
        lighting = _lighting(rng) if transform == "lighting" else None
        ref, correct, distractors = _points(rng, matrix, offset, params)
        slot = LETTERS.index(answer)
        candidates = [*distractors[:slot], correct, *distractors[slot:]]
        items.append(
            Item(
                index=index,
                transform=transform,
                scene_seed=(seed % 2**63, index),
                matrix=(tuple(matrix[0]), tuple(matrix[1])),  # type: ignore[arg-type]
                offset=(float(offset[0]), float(offset[1])),
                angle=angle,
                scale=scale,
                lighting=lighting,
                ref=ref,
                candidates=tuple(candidates),
                answer=answer,
            )
        )
    return items


def _view(scene: Image.Image, size: int, matrix: np.ndarray, offset: np.ndarray) -> Image.Image:
    """The view of `scene` related to the reference view by target = matrix @ ref + offset.

    The reference view is the centred crop (identity, zero offset). Pillow's AFFINE data maps
    each output point to the scene point it shows, in continuous coordinates, so we invert the
    target-from-reference map there and add the crop's corner.
    """
    corner = (scene.width - size) / 2.0
    inverse = np.linalg.inv(matrix)
    # continuous: q_c = M p_c + b_c with b_c = offset + 0.5 - M 0.5; scene = p_c + corner
    b_cont = offset + 0.5 - matrix @ np.full(2, 0.5)
    translation = corner - inverse @ b_cont
    data = (*inverse[0], translation[0], *inverse[1], translation[1])
    for x, y in ((0, 0), (size, 0), (0, size), (size, size)):
        sx, sy = inverse @ np.array([x, y]) + translation
        if not (0 <= sx <= scene.width and 0 <= sy <= scene.height):
            raise RuntimeError("the scene canvas is too small for this view")
    if abs(np.linalg.det(matrix)) >= 1.0 - 1e-9:
        return scene.transform((size, size), Image.Transform.AFFINE, data, BILINEAR)
    # Zooming out: sample twice as densely and box-average, so fine texture does not alias.
    data = (*(inverse[0] / 2), translation[0], *(inverse[1] / 2), translation[1])
    dense = scene.transform((2 * size, 2 * size), Image.Transform.AFFINE, data, BILINEAR)
    return dense.reduce(2)


def _relight(image: Image.Image, lighting: Lighting) -> Image.Image:
    """Apply gamma, per-channel gains and a light gradient; geometry is untouched."""
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width]
    # A shadow across the image: full light on one side, 1 - |gradient| on the other.
    along = lighting.gradient[0] * (xs / width - 0.5) + lighting.gradient[1] * (ys / height - 0.5)
    ramp = 1.0 + along - math.hypot(*lighting.gradient) / 2
    lit = pixels**lighting.gamma * np.asarray(lighting.gains) * ramp[..., None]
    # Into the texture range by rescaling, not clipping, so shadows keep their detail.
    scaled = TEXTURE_MIN + np.clip(lit, 0.0, 1.0) * (TEXTURE_MAX - TEXTURE_MIN)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def draw_marker(image: Image.Image, centre: tuple[int, int], text: str) -> None:
    """A red ring (white halo in and out, hollow centre) at `centre`, with its label beside."""
    draw = ImageDraw.Draw(image)
    x, y = centre

    def ring(radius: int, colour: tuple[int, int, int], width: int) -> None:
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), outline=colour, width=width)

    ring(RING_RADIUS + 1, HALO, 1)
    ring(RING_RADIUS, RING, 2)
    ring(RING_RADIUS - 2, HALO, 1)
    origin = marker_boxes(centre, text, image.width)[2]
    draw.text(
        origin, text, font=font(FONT_SIZE), fill=TEXT, stroke_width=1, stroke_fill=TEXT_STROKE
    )


def render_pair(item: Item, params: Params, marked: bool = True) -> tuple[Image.Image, Image.Image]:
    """The reference and target images of `item`; `marked=False` leaves out all markers.

    Unmarked pairs let tests (and analyses) compare the scene texture itself around points.
    """
    size = params.image_size
    # Same parity as the view, so the reference is a whole-pixel crop (no resampling blur).
    scene_size = size + 2 * math.ceil(size * (SCENE_FACTOR - 1) / 2)
    scene = scene_texture(np.random.default_rng(item.scene_seed), scene_size)
    identity = np.eye(2)
    reference = _view(scene, size, identity, np.zeros(2))
    target = _view(scene, size, np.array(item.matrix), np.array(item.offset))
    if item.lighting is not None:
        target = _relight(target, item.lighting)
    if marked:
        draw_marker(reference, item.ref, "REF")
        for letter, point in zip(LETTERS, item.candidates, strict=True):
            draw_marker(target, point, letter)
    return reference, target


def labels(item: Item) -> dict[str, str]:
    """The item's labels: REF in the first image's pixels, the candidates (and REF's exact
    correspondent) in the second image's, both images `image_size` square."""
    (a, b), (d, e) = item.matrix
    exact = np.array(item.matrix) @ np.array(item.ref) + np.array(item.offset)
    affine = ",".join(f"{v + 0.0:.6f}" for v in (a, b, item.offset[0], d, e, item.offset[1]))
    result = {
        "item": str(item.index),
        "transform": item.transform,
        "answer": item.answer,
        "ref_image": str(REF_IMAGE),  # the image `ref_x`, `ref_y` are pixels of
        "candidates_image": str(CANDIDATES_IMAGE),  # the image of `a_x` ... `d_y`, `exact_*`
        "ref_x": str(item.ref[0]),
        "ref_y": str(item.ref[1]),
        # where REF's scene point lands exactly; the correct candidate is this, rounded
        "exact_x": f"{exact[0]:.2f}",
        "exact_y": f"{exact[1]:.2f}",
        "affine": affine,  # target_x = a*x + b*y + c, target_y = d*x + e*y + f (pixel indices)
        "angle": f"{item.angle:.3f}",
        "scale": f"{item.scale:.4f}",
    }
    for letter, (x, y) in zip(LETTERS, item.candidates, strict=True):
        result[f"{letter.lower()}_x"] = str(x)
        result[f"{letter.lower()}_y"] = str(y)
    return result


def generate(params: Params, size: int, seed: int) -> Iterator[Sample]:
    """One Sample per item: the reference image, then the target image, and the question."""
    for item in plan(params, size, seed):
        reference, target = render_pair(item, params)
        yield Sample(
            name=f"{item.index:05d}",
            images=[reference, target],
            labels=labels(item),
            questions=[
                Question(QUESTION, item.answer, "correspondence", "answer", choices=LETTERS)
            ],
            split=item.transform,
        )
