"""Image-only encoders (DINOv2): the whole model is the vision tower, and there is no text.

Their module names carry no vision-tower segment (`embeddings`, `encoder.layer.N`,
`layernorm`), so every module counts as vision. The processor is an image processor; prompts
are ignored. A sequence is the class token (position 0) and the patches in raster order, which
the positions of `pixel_values` lay out: the patch grid is read from the processed frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, BatchFeature

from lens_assets.capture.adapters.base import (
    CLS_PARAMETERS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
    raster_cells,
)
from lens_assets.capture.token_roles import TokenRole

WHOLE_MODEL = ""  # the tower name of a model that is nothing but a vision tower


@dataclass
class VisionEncoderLayout(ModelLayout):
    """The generic layout plus the patch side, which turns a frame's size into its grid."""

    patch_size: int = 0


@dataclass
class VisionEncoderAdapter(Adapter):
    model_class: str = "AutoModel"

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        import transformers

        auto = getattr(transformers, self.model_class)
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
        processor = AutoImageProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model.eval(), processor

    def layout(self, model: nn.Module) -> VisionEncoderLayout:
        has_cls = any(name.endswith(CLS_PARAMETERS) for name, _ in model.named_parameters())
        patch = getattr(getattr(model, "config", None), "patch_size", 0)
        if isinstance(patch, list | tuple):
            patch = patch[0]
        return VisionEncoderLayout(
            cls_towers=(WHOLE_MODEL,) if has_cls else (), patch_size=int(patch or 0)
        )

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        return processor(images=list(images), return_tensors="pt")

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        return model(pixel_values=inputs["pixel_values"], **extra)

    def is_vision(self, module_name: str) -> bool:
        return True

    def grid(self, inputs: BatchFeature, layout: ModelLayout) -> tuple[int, int] | None:
        """(rows, cols) of patches in the processed frame, when the layout knows the patch."""
        patch = getattr(layout, "patch_size", 0)
        pixels = inputs.get("pixel_values")
        if not patch or pixels is None:
            return None
        height, width = pixels.shape[-2:]
        return height // patch, width // patch

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        """Patches are `image`; a sequence one longer than the grid starts with the class
        token (the patch embedding itself comes before the class token is prepended)."""
        if output.dim() != 3 or output.shape[0] != batch_size:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        grid = self.grid(inputs, layout)
        positions = output.shape[1]
        patches = grid[0] * grid[1] if grid else positions - bool(layout.cls_towers)
        if positions not in (patches, patches + 1):
            raise ActivationShapeError(
                f"module {name!r} produced {positions} positions for a frame of {patches} "
                "patches; expected the patches, or a class token and the patches"
            )
        roles = torch.full(output.shape[:2], TokenRole.IMAGE, device=output.device)
        if positions == patches + 1 and WHOLE_MODEL in layout.cls_towers:
            roles[:, 0] = TokenRole.CLS
        return Sequences(output, roles)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Raster order on the frame's grid. The processor centre-crops a square, but DINOv2
        interpolates its position embeddings to any frame, so the grid is read, not assumed."""
        grid = self.grid(inputs, layout)
        if grid is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        rows, cols = grid
        if rows * cols != count:
            raise PatchGridError(
                f"module {name!r} has {count} image positions for sample {sample}, not the "
                f"{rows}x{cols} patches of its frame"
            )
        return raster_cells(rows, cols)


VISION_ENCODER = VisionEncoderAdapter(max_images=1, text_only=False)
