"""What a clevr_lite scene holds and what it asks: CLEVR's attribute vocabulary, the objects,
the scene labels and CLEVR-style questions (rendering and layout are in `clevr_lite`).

Every scene is asked one question of each kind, each its own dataset row with its answer and
its answer choices: the colour, shape, material and size of an object (named by the fewest
other attributes that single it out, so the answer is never ambiguous), how many objects there
are, and whether some object is there ("yes" and "no" kept level across the dataset).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from itertools import chain, combinations, product

from lens_assets.data.generators.samples import Question

COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
SHAPES = ("cube", "sphere", "cylinder")
MATERIALS = ("rubber", "metal")
SIZES = ("small", "large")
# CLEVR's word order in descriptions ("large red metal cube"); every value word is distinct.
ATTRIBUTES = ("size", "colour", "material", "shape")
VALUES: dict[str, tuple[str, ...]] = {
    "size": SIZES,
    "colour": tuple(COLOURS),
    "material": MATERIALS,
    "shape": SHAPES,
}
MAX_COUNT = 10  # CLEVR's scenes hold at most ten objects
# Question kinds, in the order a scene asks them; each offers its whole vocabulary as choices.
KINDS = ("colour", "shape", "material", "size", "count", "exists")
CHOICES: dict[str, tuple[str, ...]] = {
    **VALUES,
    "count": tuple(str(n) for n in range(MAX_COUNT + 1)),
    "exists": ("yes", "no"),
}


@dataclass(frozen=True)
class SceneObject:
    """One object: its CLEVR attributes and, once laid out, where it stands on the screen."""

    colour: str
    shape: str
    material: str
    size: str
    x: float = 0.0  # screen position of the centre of its footprint on the floor, in pixels
    y: float = 0.0
    radius: float = 0.0  # CLEVR radius in pixels at this depth
    yaw: float = 0.0  # cube rotation about the vertical, in radians

    def attributes(self) -> dict[str, str]:
        return {key: getattr(self, key) for key in ATTRIBUTES}

    def matches(self, query: dict[str, str]) -> bool:
        return all(getattr(self, key) == value for key, value in query.items())

    def scaled(self, factor: float) -> SceneObject:
        return replace(self, x=self.x * factor, y=self.y * factor, radius=self.radius * factor)


def balanced_singles(rng: random.Random) -> Iterator[SceneObject]:
    """Attribute combinations such that every prefix has each colour, shape, material and size
    equally often (within one), and each run of 96 holds all 8 x 3 x 2 x 2 combinations.

    Colour and shape follow step mod 8 and mod 3 (all 24 pairs in 24 steps); material and size
    alternate, their phase shifting every 24 steps so each pair meets all four of them. The
    value orders are reshuffled every 96 steps."""
    while True:
        colours = rng.sample(tuple(COLOURS), len(COLOURS))
        shapes = rng.sample(SHAPES, len(SHAPES))
        materials = rng.sample(MATERIALS, 2)
        sizes = rng.sample(SIZES, 2)
        for step in range(96):
            block = step // 24
            yield SceneObject(
                colour=colours[step % 8],
                shape=shapes[step % 3],
                material=materials[(step + block) % 2],
                size=sizes[(step + block // 2) % 2],
            )


def random_object(rng: random.Random) -> SceneObject:
    return SceneObject(
        colour=rng.choice(tuple(COLOURS)),
        shape=rng.choice(SHAPES),
        material=rng.choice(MATERIALS),
        size=rng.choice(SIZES),
    )


def describe(query: dict[str, str], plural: bool = False) -> str:
    """CLEVR's noun phrase for some attribute values: "large red metal cube", "rubber objects"."""
    words = [query[key] for key in ATTRIBUTES[:3] if key in query]
    noun = query.get("shape", "object")
    return " ".join([*words, noun + "s" if plural else noun])


# Attribute sets an existence question may name (shape-less ones say "object").
EXISTS_KEYS = (
    ("colour", "shape"),
    ("shape",),
    ("colour",),
    ("size", "shape"),
    ("material", "shape"),
    ("size", "colour", "shape"),
    ("colour", "material", "shape"),
    ("size", "colour", "material", "shape"),
)
ASK = {
    "colour": "What color is the {}?",
    "shape": "What shape is the {}?",
    "material": "What material is the {}?",
    "size": "What size is the {}?",
}


def _matching(objects: list[SceneObject], query: dict[str, str]) -> int:
    return sum(obj.matches(query) for obj in objects)


def unique_names(
    objects: list[SceneObject], target: SceneObject, asked: str
) -> list[dict[str, str]]:
    """The shortest descriptions of `target` that leave out `asked` and match it alone (none
    when another object shares every other attribute with it); the empty description ("the
    object") where it is alone in its scene."""
    others = [key for key in ATTRIBUTES if key != asked]
    for n in range(len(others) + 1):
        names = ({key: getattr(target, key) for key in keys} for keys in combinations(others, n))
        unique = [query for query in names if _matching(objects, query) == 1]
        if unique:
            return unique
    return []


def askable(objects: list[SceneObject]) -> bool:
    """Whether every attribute can be asked of some object that a description singles out."""
    return all(any(unique_names(objects, obj, key) for obj in objects) for key in ATTRIBUTES)


def _attribute_question(objects: list[SceneObject], asked: str, rng: random.Random) -> Question:
    """Ask `asked` of an object named by the fewest other attributes that single it out."""
    for target in rng.sample(objects, len(objects)):
        if names := unique_names(objects, target, asked):
            return Question(
                ASK[asked].format(describe(rng.choice(names))),
                getattr(target, asked),
                asked,
                concept=asked,
                choices=CHOICES[asked],
            )
    raise ValueError(f"no object can be singled out to ask its {asked}; see `askable`")


def _exists_question(objects: list[SceneObject], rng: random.Random, yes: bool) -> Question:
    """Ask about an object that is there (yes) or a description nothing matches (no)."""
    if yes:
        target = rng.choice(objects)
        query = {key: getattr(target, key) for key in rng.choice(EXISTS_KEYS)}
    else:
        guesses = (
            {key: rng.choice(VALUES[key]) for key in rng.choice(EXISTS_KEYS)} for _ in range(20)
        )
        # With at most 10 objects some colour-shape pair is always missing.
        pairs = product(rng.sample(tuple(COLOURS), 8), rng.sample(SHAPES, 3))
        fallback = ({"colour": colour, "shape": shape} for colour, shape in pairs)
        query = next(q for q in chain(guesses, fallback) if _matching(objects, q) == 0)
    phrase = describe(query)
    article = "an" if phrase[0] in "aeiou" else "a"
    return Question(
        f"Is there {article} {phrase}?", "yes" if yes else "no", "exists", choices=CHOICES["exists"]
    )


def write_questions(
    objects: list[SceneObject], rng: random.Random, answers: Counter[str]
) -> list[Question]:
    """One question of each kind in `KINDS`: an attribute of a uniquely named object for each
    of colour, shape, material and size, the object count, and an existence question (yes and
    no kept level across the dataset through `answers`). `objects` must be `askable`."""
    questions = [_attribute_question(objects, key, rng) for key in KINDS[:4]]
    count = str(len(objects))
    questions.append(
        Question("How many objects are there?", count, "count", "count", CHOICES["count"])
    )
    yes = answers["yes"] < answers["no"] or (answers["yes"] == answers["no"] and rng.random() < 0.5)
    answers["yes" if yes else "no"] += 1
    return [*questions, _exists_question(objects, rng, yes)]


def scene_labels(objects: list[SceneObject]) -> dict[str, str]:
    """The count and what is present; one-object scenes also name the object's attributes."""
    labels = {"count": str(len(objects))}
    for key in ("colour", "shape"):
        present = {getattr(obj, key) for obj in objects}
        labels.update(
            {f"has_{value}": "yes" if value in present else "no" for value in VALUES[key]}
        )
    if len(objects) == 1:
        labels.update(objects[0].attributes())
    return labels
