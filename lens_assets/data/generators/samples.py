"""What every generator yields: one item of ground truth, its images and its questions.

A sample with questions becomes one dataset row per question (the question's images, in order,
its answer and choices, the sample's labels); a sample without questions becomes one row with
no prompt of its own (the model config's prompt is asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass(frozen=True)
class Question:
    """A question with its correct answer, for scoring behaviour."""

    question: str
    answer: str
    kind: str  # e.g. attribute, exists, count, correspondence
    concept: str | None = None  # the label concept the answer is a value of, where there is one
    choices: tuple[str, ...] | None = None  # the answers it offers (lettered candidates...)
    images: tuple[int, ...] | None = None  # which of the sample's images it shows; None = all


@dataclass
class Sample:
    """One generated item and its ground truth: one image (`image`) or several (`images`, in
    the order a question shows them)."""

    name: str  # file stem, unique within the dataset
    image: Image.Image | None = None
    labels: dict[str, str] = field(default_factory=dict)
    questions: list[Question] = field(default_factory=list)
    split: str | None = None
    images: list[Image.Image] = field(default_factory=list)

    def pictures(self) -> list[Image.Image]:
        return self.images if self.images else ([self.image] if self.image is not None else [])
