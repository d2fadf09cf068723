"""Settings of VLM-Lens's probe protocol (`protocol: vlm-lens` in configs/probing.yaml).

The keys and defaults are those of VLM-Lens's `src/probe/main.py` (`ProbeConfig`): its `model`
mapping (activation, hidden_size, num_layers), its `training` mapping (batch_size, num_epochs,
learning_rate, optimizer, loss, and sklearn_C / sklearn_solver / sklearn_max_iter for its
linear probe), where a list is a grid searched by cross-validation, plus what its script fixes
in code (a 0.2 held-out split and its seed 42, 5 folds). A module of its own, without torch, so
that reading a config costs nothing and `probe_maths` can nest it without an import cycle.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# torch.nn activations VLM-Lens can name (`getattr(nn, activation)()`), those built without
# arguments.
Activation = Literal[
    "ReLU", "GELU", "Tanh", "Sigmoid", "SiLU", "LeakyReLU", "ELU", "Softplus", "Mish", "Identity"
]
Optimizer = Literal["AdamW", "Adam", "SGD", "RMSprop", "Adagrad"]
# The hyper-parameters a list turns into a grid, per probe kind.
GRID_KEYS = {
    "mlp": ("batch_size", "num_epochs", "learning_rate", "optimizer"),
    "linear": ("sklearn_C", "sklearn_max_iter"),
}


class VlmLensSettings(BaseModel):
    """VLM-Lens's probe: a held-out split, a grid chosen by k-fold CV on the training split
    only, a shuffled-label control with the chosen grid point, a two-sided z-test."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    test_size: float = Field(
        0.2, gt=0, lt=1, description="share of the rows (of the pictures, where rows share one) "
        "held out for the test; VLM-Lens's train_test_split(test_size=0.2)",
    )  # fmt: skip
    seed: int = Field(
        42, description="VLM-Lens's random_state=42: the split, the folds, the label shuffle, "
        "the weight initialisation and the batch order",
    )  # fmt: skip
    folds: int = Field(5, ge=2, description="k of the k-fold CV that chooses the grid point")
    # the `model` mapping: the MLP probe (kind `mlp`; kind `linear` is VLM-Lens's num_layers 1)
    num_layers: int = Field(
        2, ge=2, description="Linear layers of the MLP: 2 is one hidden layer (VLM-Lens's default)"
    )
    hidden_size: int = Field(256, ge=1, description="width of every hidden layer")
    activation: Activation = "ReLU"
    # the `training` mapping; a list of values is a grid
    batch_size: list[int] = Field(default_factory=lambda: [32])
    num_epochs: list[int] = Field(default_factory=lambda: [10])
    learning_rate: list[float] = Field(default_factory=lambda: [1e-3])
    optimizer: list[Optimizer] = Field(default_factory=lambda: ["AdamW"])
    loss: Literal["CrossEntropyLoss"] = "CrossEntropyLoss"
    sklearn_C: list[float] = Field(default_factory=lambda: [1.0])
    sklearn_solver: Literal["lbfgs", "newton-cg", "sag", "saga"] = "lbfgs"
    sklearn_max_iter: list[int] = Field(default_factory=lambda: [1000])
    standardise: bool = Field(
        False,
        description="standardise features on the training rows first; VLM-Lens does not (the "
        "saved probe holds mean 0 and scale 1 then)",
    )
    device: str = Field("cpu", description="where the MLP trains: cpu or cuda[:N]")

    @field_validator(
        "batch_size", "num_epochs", "learning_rate", "optimizer", "sklearn_C", "sklearn_max_iter",
        mode="before",
    )  # fmt: skip
    @classmethod
    def _one_value_or_a_grid(cls, value: Any) -> list[Any]:
        """VLM-Lens writes `num_epochs: 10` or `num_epochs: [50, 100, 200]`: both are a grid."""
        values = list(value) if isinstance(value, list | tuple) else [value]
        if not values:
            raise ValueError("an empty list leaves no hyper-parameter to try; give one value")
        return values

    @field_validator("batch_size", "num_epochs", "sklearn_max_iter")
    @classmethod
    def _positive(cls, values: list[int]) -> list[int]:
        if any(v < 1 for v in values):
            raise ValueError(f"{values}: every value must be at least 1")
        return values

    @field_validator("learning_rate", "sklearn_C")
    @classmethod
    def _above_zero(cls, values: list[float]) -> list[float]:
        if any(v <= 0 for v in values):
            raise ValueError(f"{values}: every value must be above 0")
        return values

    def grid(self, kind: str) -> list[dict[str, Any]]:
        """Every combination of the kind's listed hyper-parameters, in VLM-Lens's order
        (itertools.product over the keys as listed)."""
        keys = GRID_KEYS[kind]
        combos: list[dict[str, Any]] = [{}]
        for key in keys:
            combos = [{**combo, key: value} for combo in combos for value in getattr(self, key)]
        return combos
