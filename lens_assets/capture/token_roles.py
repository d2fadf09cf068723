"""Token roles and pooling names: the vocabulary that configs, pooling, the adapters and the
warehouse's queries share, in one place that imports no torch (config validation reads it).

Every position of a captured sequence has a role: `image` (an expanded image placeholder in
the language model, a patch in the vision tower), `text`, `cls` (a vision tower's class
token) or `pad` (batching filler).
"""

from __future__ import annotations

from enum import IntEnum


class TokenRole(IntEnum):
    PAD = 0
    TEXT = 1
    IMAGE = 2
    CLS = 3


ROLE_NAMES: dict[int, str] = {role.value: role.name.lower() for role in TokenRole}

# A mean over the positions of some roles, or one position per sample.
MEAN_POOLINGS: tuple[str, ...] = ("mean_image", "mean_text", "mean")
POSITION_POOLINGS: tuple[str, ...] = ("last", "cls")
UNPOOLED = "tokens"  # no pooling: every non-pad position is its own row
# The mean over each image's positions: one row per image of the row, with its `image_index`
# (beside `mean_image`, the mean over all of the row's image positions).
PER_IMAGE = "mean_per_image"
# The elementwise max over every non-pad position (VLM-Lens's `pooling_method: max`).
MAX = "max"
POOLINGS: tuple[str, ...] = (
    "mean_image", "mean_text", "last", "cls", "mean", MAX, PER_IMAGE, UNPOOLED,
)  # fmt: skip
DEFAULT_POOLINGS: tuple[str, ...] = ("mean_image", "mean_text", "last")

# The rows that hold one vector per (row, layer, pooling): what probes and CKA read.
POOLED_ROWS = f"pooling NOT IN ('{UNPOOLED}', '{PER_IMAGE}')"
