"""What every generator yields: an image with its labels and the questions asked about it."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Question:
    """A question about one image with its correct answer, for scoring behaviour."""

    question: str
    answer: str
    kind: str  # e.g. attribute, exists, count, correspondence
    concept: str | None = None  # the label concept the answer is a value of, where there is one


@dataclass
class Sample:
    """One generated image and its ground truth."""

    name: str  # file stem, unique within the dataset
    image: Image.Image
    labels: dict[str, str]
    questions: list[Question] = field(default_factory=list)
    split: str | None = None
