"""Adapters for families that exist only as remote code: CogVLM, MiniCPM-V 2.x / MiniCPM-o,
Molmo (v1), InternLM-XComposer and GLaMM.

Their modeling files come with the checkpoint, so each builds its prompt and calls its model
its own way, as its model card and public modeling code do; loading any of them needs
`trust_remote_code: true` in the model config (checked before any of their code is imported).
Only the CogVLM adapter runs in the offline tests (on a tiny model with CogVLM's interface);
the others follow the public code as far as it could be read offline and are untested against
the real checkpoints.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoProcessor, AutoTokenizer, BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    Sequences,
    join_tiles,
    token_roles,
)
from lens_assets.capture.token_roles import TokenRole

# -- shared pieces -----------------------------------------------------------------------------


@dataclass
class RemoteProcessor:
    """What a family without a transformers processor reads its inputs with: its tokenizer,
    its image processor where it has one, and the model, for families whose prompt builder is a
    model method. The model is held weakly, so releasing it still frees its memory."""

    tokenizer: Any
    image_processor: Any = None
    model_ref: Callable[[], Any] | None = None

    @property
    def model(self) -> Any:
        model = self.model_ref() if self.model_ref is not None else None
        if model is None:
            raise RuntimeError("the model this processor builds inputs with has been released")
        return model


def pad_stack(rows: Sequence[torch.Tensor], value: float, side: str = "right") -> torch.Tensor:
    """Stack tensors of unequal sizes, padding every axis to the largest with `value` (1-D
    rows may be padded on the left, as generation needs)."""
    shape = [max(int(row.shape[axis]) for row in rows) for axis in range(rows[0].dim())]
    out = rows[0].new_full((len(rows), *shape), value)
    for index, row in enumerate(rows):
        if side == "left" and row.dim() == 1:
            out[index, shape[0] - len(row) :] = row
        else:
            out[index][tuple(slice(0, size) for size in row.shape)] = row
    return out


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def present(model: nn.Module, names: Sequence[str]) -> tuple[str, ...]:
    """The module names among `names` that this model has."""
    modules = dict(model.named_modules())
    return tuple(name for name in names if name in modules)


def _under(name: str, prefix: str) -> bool:
    return any(part == prefix for part in name.split("."))


def _load_tokenizer(path: str, trust_remote_code: bool, hint: str = "") -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise OSError(f"no tokenizer could be loaded from {path}: {error}{hint}") from error
    tokenizer.padding_side = "right"
    return tokenizer


def _load_model(auto_class: str, path: str, kwargs: dict[str, Any], trust: bool) -> nn.Module:
    import transformers

    auto = getattr(transformers, auto_class)
    return auto.from_pretrained(path, trust_remote_code=trust, **kwargs).eval()


# -- CogVLM ----------------------------------------------------------------------------------

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1


@dataclass
class CogVLMAdapter(Adapter):
    """CogVLM / CogVLM2 (THUDM), following the public modeling code and model card.

    The prompt comes from the model's own `build_conversation_input_ids(tokenizer, query=,
    history=[], images=[image])` (its default template), one image per sample; samples are
    padded to a batch (token type 0 for padding) and the images go in as a list of one-image
    lists. An image occupies the positions of token type 1 (its patches plus the `boi` and
    `eoi` embeddings), which is where the image role goes; CogVLM fills them with pad tokens, so
    `input_ids` cannot tell them apart. Tested offline on a tiny model with this interface,
    untested against the real checkpoints. cogvlm-chat-hf ships without a tokenizer: copy
    lmsys/vicuna-7b-v1.5's tokenizer files into its folder, as its model card's loader implies.
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vision"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = _load_model(self.model_class, path, kwargs, trust_remote_code)
        hint = (
            "; cogvlm-chat-hf ships without one: copy lmsys/vicuna-7b-v1.5's tokenizer files "
            "into the checkpoint folder"
        )
        tokenizer = _load_tokenizer(path, trust_remote_code, hint)
        return model, RemoteProcessor(tokenizer, model_ref=weakref.ref(model))

    def layout(self, model: nn.Module) -> ModelLayout:
        # The EVA tower puts a class token in front; `linear_proj` already drops it.
        towers = present(model, ("model.vision.patch_embedding", "model.vision.transformer"))
        return ModelLayout(cls_towers=towers)

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        tokenizer = processor.tokenizer
        built = [
            processor.model.build_conversation_input_ids(
                tokenizer, query=prompt, history=[], images=[image]
            )
            for image, prompt in zip(images, prompts, strict=True)
        ]
        side = getattr(tokenizer, "padding_side", "right")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return BatchFeature(
            data={
                "input_ids": pad_stack([b["input_ids"] for b in built], pad_id, side),
                "token_type_ids": pad_stack(
                    [b["token_type_ids"] for b in built], LANGUAGE_TOKEN_TYPE, side
                ),
                "attention_mask": pad_stack([b["attention_mask"] for b in built], 0, side),
                "images": [list(b["images"]) for b in built],
            }
        )

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        dtype = model_dtype(model)
        images = [[image.to(dtype) for image in sample] for sample in inputs["images"]]
        return model(**{**inputs, "images": images}, **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        return token_roles(
            inputs.get("attention_mask"), inputs["token_type_ids"] == VISION_TOKEN_TYPE
        )


# -- MiniCPM-V 2.x / MiniCPM-o ---------------------------------------------------------------


@dataclass
class MiniCPMAdapter(Adapter):
    """MiniCPM-V 2.6 and MiniCPM-o 2.6 (openbmb), following the public modeling and processing
    code and the model cards' `chat`; untested offline.

    As `chat` does: the user turn is "(<image>./</image>)\\n" + prompt through the tokenizer's
    chat template, and the processor takes a list of texts and a list of image lists. Each
    sample is processed alone and the batch is padded on the right here, so `image_bound` (the
    spans the image slices' query tokens fill, where the image role goes) stays valid. The
    model is called as `model(data=..., attention_mask=...)`, `data` holding input_ids,
    position_ids, pixel_values (per sample, per slice), tgt_sizes and image_bound. The vision
    tower (`vpm`) and the resampler see every slice of every image on their batch axis; slices
    are joined per image with a tile column, and the padding patches of smaller slices are
    marked pad. MiniCPM-V 2.0 and 2.5 predate this processor interface and are not covered.
    """

    model_class: str = "AutoModel"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vpm", "resampler"})
    image_placeholder: str = "(<image>./</image>)"

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = _load_model(self.model_class, path, kwargs, trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor.tokenizer.padding_side = "right"
        return model, processor

    def prompt_text(self, processor: Any, prompt: str) -> str:
        messages = [{"role": "user", "content": f"{self.image_placeholder}\n{prompt}"}]
        return processor.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = [
            processor([self.prompt_text(processor, prompt)], [[image]], return_tensors="pt")
            for image, prompt in zip(images, prompts, strict=True)
        ]
        ids = [row["input_ids"][0].long() for row in rows]
        pad_id = processor.tokenizer.pad_token_id
        input_ids = pad_stack(ids, pad_id if pad_id is not None else 0)
        mask = pad_stack([torch.ones_like(row) for row in ids], 0)
        return BatchFeature(
            data={
                "input_ids": input_ids,
                "attention_mask": mask,
                "position_ids": torch.clamp(mask.cumsum(dim=1) - 1, min=0),
                "pixel_values": [list(row["pixel_values"][0]) for row in rows],
                "tgt_sizes": [row["tgt_sizes"][0] for row in rows],
                "image_bound": [row["image_bound"][0] for row in rows],
            }
        )

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        dtype = model_dtype(model)
        data = {
            "input_ids": inputs["input_ids"],
            "position_ids": inputs["position_ids"],
            "pixel_values": [[p.to(dtype) for p in sample] for sample in inputs["pixel_values"]],
            "tgt_sizes": inputs["tgt_sizes"],
            "image_bound": inputs["image_bound"],
        }
        return model(data=data, attention_mask=inputs["attention_mask"], **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        image = torch.zeros_like(ids, dtype=torch.bool)
        for sample, bounds in enumerate(inputs["image_bound"]):
            for start, end in torch.as_tensor(bounds).reshape(-1, 2).tolist():
                image[sample, start:end] = True
        return token_roles(inputs.get("attention_mask"), image)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        counts = [len(sample) for sample in inputs["pixel_values"]]
        if output.dim() != 3 or output.shape[0] != sum(counts):
            raise ActivationShapeError(
                f"vision module {name!r} produced shape {tuple(output.shape)}, not one row per "
                f"image slice ({sum(counts)} slices for {batch_size} images)"
            )
        sequences = join_tiles(output, counts, has_cls=False)
        sizes = torch.cat([torch.as_tensor(t).reshape(-1, 2) for t in inputs["tgt_sizes"]])
        patches = (sizes[:, 0] * sizes[:, 1]).to(output.device)
        per_tile, roles = output.shape[1], sequences.roles
        if roles is not None and _under(name, "vpm") and per_tile == int(patches.max()):
            # Slices are padded to the largest slice's patch count on the vision batch axis.
            real = torch.arange(per_tile, device=output.device)[None, :] < patches[:, None]
            start = 0
            for sample, count in enumerate(counts):
                keep = real[start : start + count].reshape(-1)
                roles[sample, : count * per_tile][~keep] = TokenRole.PAD
                start += count
        return sequences


# -- Molmo (v1) ------------------------------------------------------------------------------


@dataclass
class MolmoAdapter(Adapter):
    """Molmo v1 (allenai Molmo-7B-D/O, 72B, MolmoE), following the public modeling and
    preprocessing code and the model card; untested offline.

    As the card does, `processor.process(images=[image], text=prompt)` builds one sample
    (the processor writes the "User: ... Assistant:" turn itself); samples are padded with -1,
    Molmo's own padding value (its forward maps -1 ids to 0 and counts positions from the
    mask), crops included. The image role goes on the positions `image_input_idx` names. The
    ViT (`vision_backbone.image_vit`, class token first) sees every crop of every image on its
    batch axis and the projector outputs (batch, crops, tokens, dim); both are joined per image
    with a tile column, padding crops left out.
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vision_backbone"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = _load_model(self.model_class, path, kwargs, trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model, processor

    def layout(self, model: nn.Module) -> ModelLayout:
        return ModelLayout(cls_towers=present(model, ("model.vision_backbone.image_vit",)))

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = [
            processor.process(images=[image], text=prompt)
            for image, prompt in zip(images, prompts, strict=True)
        ]
        input_ids = pad_stack([torch.as_tensor(row["input_ids"]) for row in rows], -1)
        data = {"input_ids": input_ids, "attention_mask": (input_ids != -1).long()}
        for key in ("images", "image_input_idx", "image_masks"):
            if all(row.get(key) is not None for row in rows):
                data[key] = pad_stack([torch.as_tensor(row[key]) for row in rows], -1)
        return BatchFeature(data=data)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        image = torch.zeros_like(ids, dtype=torch.bool)
        index = inputs["image_input_idx"].reshape(len(ids), -1).long()
        valid = index >= 0
        rows = torch.arange(len(ids), device=ids.device)[:, None].expand_as(index)
        image[rows[valid], index[valid]] = True
        return token_roles(inputs.get("attention_mask"), image)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        images = inputs["images"]
        real = ~(images == -1).flatten(2).all(dim=2)  # (batch, crops): padding crops are all -1
        crops = real.shape[1]
        if output.dim() == 4 and tuple(output.shape[:2]) == (batch_size, crops):
            output = output.flatten(0, 1)
        if output.dim() != 3 or output.shape[0] != batch_size * crops:
            raise ActivationShapeError(
                f"vision module {name!r} produced shape {tuple(output.shape)}, not one row per "
                f"crop ({batch_size} images x {crops} crops)"
            )
        has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        kept = output[real.reshape(-1).to(output.device)]
        return join_tiles(kept, real.sum(dim=1).tolist(), has_cls)


# -- InternLM-XComposer ----------------------------------------------------------------------


@dataclass
class XComposerAdapter(Adapter):
    """InternLM-XComposer2-VL and InternLM-XComposer-2.5 (internlm), following the public
    modeling code and model cards' `chat`; untested offline.

    The model builds its own input embeddings: each image goes through the model's
    `vis_processor` (2.5 first applies its module's `Image_transform` HD tiling with `hd_num`),
    then `interleav_wrap_chat` (2.5: `(query, [image], history, meta_instruction, hd_num=)`,
    which encodes the image itself; 2-VL: `(tokenizer, "<ImageHere>" + query, encoded image,
    history, meta_instruction)`) gives the embeddings and `im_mask`, the image positions
    (where the image role goes, and where the Partial-LoRA weights apply). Samples are padded
    on the right and the model runs on `inputs_embeds` with `im_mask`. That all happens in the
    forward pass, under the hooks, one image at a time, so a vision module's hook keeps only
    the last image of a batch: vision modules need `batch_size: 1` (an error says so). The
    4KHD variant's HD preprocessing is not reproduced.
    """

    model_class: str = "AutoModel"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vit", "vision_proj"})
    hd_num: int = 24  # 2.5's `chat` default

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = _load_model(self.model_class, path, kwargs, trust_remote_code)
        tokenizer = _load_tokenizer(path, trust_remote_code)
        model.tokenizer = tokenizer  # as the model cards do; `interleav_wrap_chat` reads it
        return model, RemoteProcessor(tokenizer, model_ref=weakref.ref(model))

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        return BatchFeature(data={"images": list(images), "prompts": list(prompts)})

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        remote: Any = model  # the checkpoint's own class: its methods are not nn.Module's
        code = sys.modules[type(model).__module__]
        meta = getattr(code, "meta_instruction", "")
        tiling = getattr(code, "Image_transform", None)
        wrap = remote.interleav_wrap_chat
        takes_query_first = next(iter(inspect.signature(wrap).parameters)) == "query"
        device, dtype = next(model.parameters()).device, model_dtype(model)
        embeds, image_masks = [], []
        for image, prompt in zip(inputs["images"], inputs["prompts"], strict=True):
            picture = image.convert("RGB")
            if tiling is not None:
                picture = tiling(picture, hd_num=self.hd_num)
            pixels = remote.vis_processor(picture).unsqueeze(0).to(device, dtype)
            if takes_query_first:  # 2.5: the image is encoded inside
                wrapped = wrap(
                    prompt, [pixels], history=[], meta_instruction=meta, hd_num=self.hd_num
                )
            else:  # 2-VL: the image goes in encoded
                encoded = remote.encode_img(pixels)
                wrapped = wrap(remote.tokenizer, f"<ImageHere>{prompt}", encoded, [], meta)
            embeds.append(wrapped[0]["inputs_embeds"][0])
            image_masks.append(wrapped[1][0].bool())
        # Kept on the inputs: the roles of the LLM's positions are read from them afterwards.
        inputs["im_mask"] = pad_stack(image_masks, False)
        inputs["attention_mask"] = pad_stack(
            [torch.ones_like(mask, dtype=torch.long) for mask in image_masks], 0
        )
        return model(
            inputs_embeds=pad_stack(embeds, 0.0),
            attention_mask=inputs["attention_mask"],
            im_mask=inputs["im_mask"],
            **extra,
        )

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        return token_roles(inputs["attention_mask"], inputs["im_mask"])

    def sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if self.is_vision(name) and batch_size > 1:
            raise ActivationShapeError(
                f"InternLM-XComposer encodes one image per call, so vision module {name!r} "
                f"kept only the last of {batch_size} images; extract vision modules with "
                "batch_size: 1"
            )
        return super().sequences(name, output, inputs, layout, batch_size)

    def tile_counts(
        self, name: str, rows: int, inputs: BatchFeature, layout: ModelLayout, batch_size: int
    ) -> list[int]:
        return [rows]  # one image: every row is one of its HD tiles


# -- GLaMM -----------------------------------------------------------------------------------

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id, replaced by the image features
GLAMM_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass
class SplicedLayout(ModelLayout):
    """A layout for LLaVA-1-style models, whose one placeholder id becomes many positions."""

    image_positions: int = 0  # LLM positions the placeholder of one image expands into


@dataclass
class GLaMMAdapter(Adapter):
    """GLaMM (mbzuai-oryx), following the public groundingLMM code (model/GLaMM.py, its
    LLaVA-1 base and eval scripts); untested offline.

    GLaMM checkpoints carry no modeling files and their config says model_type "llava" (the
    LLaVA-1 format), so the code comes from the groundingLMM repository, which must be on the
    Python path (`model.GLaMM`); it is third-party code all the same, so this adapter too needs
    `trust_remote_code: true`. As the eval scripts do: the llava_v1 conversation with "The
    <im_start><image><im_end> provides an overview of the picture.\\n" before the prompt, the
    `<image>` turned into id -200, CLIP pixel values from the checkpoint's `vision_tower`, and
    the LLaVA forward (`past_key_values=None` keeps GLaMM off its segmentation path). The LLM
    sees the image's features where the -200 was, so text roles expand that position. `lens
    modules` does not work for GLaMM (its classes are not transformers auto classes).
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"mm_projector"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        if not trust_remote_code:
            from lens_assets.resources.runtime import RemoteCodeError

            raise RemoteCodeError(
                "GLaMM runs the groundingLMM repository's model code; LensFlow runs it only when "
                "the model config says `trust_remote_code: true`"
            )
        try:
            from model.GLaMM import GLaMMForCausalLM  # type: ignore[import-not-found]
        except ImportError as error:
            raise ImportError(
                "GLaMM's model code is not importable: clone "
                "https://github.com/mbzuai-oryx/groundingLMM, install its requirements and put "
                "it on PYTHONPATH (`model.GLaMM`)"
            ) from error
        from transformers import CLIPImageProcessor

        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=False, padding_side="right", trust_remote_code=trust_remote_code
        )
        tokenizer.pad_token = tokenizer.unk_token
        seg_token = tokenizer("[SEG]", add_special_tokens=False).input_ids[0]
        model = GLaMMForCausalLM.from_pretrained(path, seg_token_idx=seg_token, **kwargs)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.bos_token_id = tokenizer.bos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        base = model.get_model()
        base.initialize_vision_modules(base.config)
        if kwargs.get("dtype") is not None:
            model.to(kwargs["dtype"])
        images = CLIPImageProcessor.from_pretrained(model.config.vision_tower)
        return model.eval(), RemoteProcessor(tokenizer, image_processor=images)

    def layout(self, model: nn.Module) -> ModelLayout:
        base = super().layout(model)
        remote: Any = model
        tower = remote.get_model().get_vision_tower()
        positions = getattr(tower, "num_patches", None)
        if positions is None:
            config = tower.config
            positions = (config.image_size // config.patch_size) ** 2
        return SplicedLayout(cls_towers=base.cls_towers, image_positions=int(positions))

    def prompt_text(self, processor: Any, prompt: str) -> str:
        image = "The <im_start><image><im_end> provides an overview of the picture.\n"
        return f"{GLAMM_SYSTEM} USER: {image}{prompt} ASSISTANT:"

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        tokenizer = processor.tokenizer
        ids = []
        for prompt in prompts:
            before, after = self.prompt_text(processor, prompt).split("<image>")
            head = tokenizer(before).input_ids  # with BOS, as LLaVA's tokenizer_image_token
            tail = tokenizer(after, add_special_tokens=False).input_ids
            ids.append(torch.tensor([*head, IMAGE_TOKEN_INDEX, *tail]))
        input_ids = pad_stack(ids, tokenizer.pad_token_id)
        pixels = processor.image_processor(
            [image.convert("RGB") for image in images], return_tensors="pt"
        )["pixel_values"]
        return BatchFeature(
            data={
                "input_ids": input_ids,
                "attention_mask": pad_stack([torch.ones_like(row) for row in ids], 0),
                "images": pixels,
            }
        )

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        return model(**inputs, past_key_values=None, **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        short = token_roles(inputs.get("attention_mask"), torch.zeros_like(ids, dtype=torch.bool))
        count = layout.image_positions if isinstance(layout, SplicedLayout) else 0
        rows = []
        for sample in range(len(ids)):
            where = (ids[sample] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) != 1:
                raise ActivationShapeError(
                    f"sample {sample} has {len(where)} image placeholders, GLaMM's prompt one"
                )
            at = where[0]
            image = short.new_full((count,), TokenRole.IMAGE)
            rows.append(torch.cat([short[sample, :at], image, short[sample, at + 1 :]]))
        return torch.stack(rows)


COGVLM = CogVLMAdapter()
MINICPM = MiniCPMAdapter()
MOLMO = MolmoAdapter()
XCOMPOSER = XComposerAdapter()
GLAMM = GLaMMAdapter()
