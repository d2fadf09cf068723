"""Module names written for transformers 4.x (VLM-Lens's configs), renamed to today's names.

transformers 5 moved sub-models around: LLaVA's `language_model.model.layers.N` is now
`model.language_model.layers.N` and its `vision_tower.vision_model.encoder...` is
`model.vision_tower.encoder...`; Qwen2-VL's `visual.blocks.N` and `model.layers.N` are
`model.visual.blocks.N` and `model.language_model.layers.N`. Old checkpoints still load
because each model class carries a checkpoint-conversion mapping
(`transformers.conversion_mapping.get_model_conversion_mapping`) whose renamings loading
applies to every checkpoint key, each scoped to the sub-model it belongs to (a CLIP or SigLIP
tower inside LLaVA drops its `vision_model.` level under its own prefix only).

A module name is the prefix of its parameters' keys, so the renamings loading applies to those
keys, applied the same way, give the module's name today. No per-family table: the mapping is
the one transformers itself loads old checkpoints with, so it follows the installed version.

The other way, `legacy_names` gives each module the name transformers 4.x gave it, by the same
mapping reversed (as transformers reverses it to save a checkpoint in its original format): a
VLM-Lens regular expression is matched against those names, as VLM-Lens matched them, and the
`tensors` view reports a layer under the name its config wrote.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

# A stand-in for "any parameter below the module": a key needs something after the module's
# own name (prefix renamings such as `^vision_model\.(.+)` require it), and a leaf no pattern
# names keeps renamings that concern particular parameters (`LayerNorm.gamma`) from firing.
LEAF = "<parameter>"


def key_renamings(model: nn.Module) -> list[Any]:
    """The key renamings loading applies to a checkpoint of `model`, in the order it applies
    them; empty for a model transformers has no mapping for (or that is not a transformers
    model).

    Weight converters are left out: they merge or split parameter tensors (expert weights into
    one, fused projections), so what they rename is a parameter, never a module.
    """
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # a transformers without conversion mappings renames nothing
        return []
    if not isinstance(model, PreTrainedModel):
        return []
    return [t for t in get_model_conversion_mapping(model) if isinstance(t, WeightRenaming)]


def rename(name: str, renamings: list[Any]) -> str:
    """`name` (a module name or glob) renamed as loading renames a key below that module:
    every renaming in turn, each seeing the previous one's result. Unchanged when a renaming
    consumed the stand-in leaf (it was about a parameter, not the module)."""
    key = f"{name}.{LEAF}"
    for renaming in renamings:
        key, _ = renaming.rename_source_key(key)
    suffix = f".{LEAF}"
    return key.removesuffix(suffix) if key.endswith(suffix) else name


def reverse_renamings(model: nn.Module) -> list[Any]:
    """The renamings that take today's key back to the original checkpoint's, in the order to
    apply them: the loading mapping reversed, as transformers reverses it to save. Renamings of
    legacy parameter names (`LayerNorm.gamma`) never rename a module and are left out. So are
    prefix changes, which depend on the file loaded (a sub-model's own checkpoint or the whole
    model's), except one that removed a level a sub-model had inside another name: LLaVA's CLIP
    tower was `vision_tower.vision_model`, while CLIP's own `vision_model` never nested one."""
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import PrefixChange, WeightRenaming
    except ImportError:  # a transformers without conversion mappings renames nothing
        return []
    if not isinstance(model, PreTrainedModel):
        return []
    mapping = get_model_conversion_mapping(model, add_legacy=False)[::-1]
    return [
        t.reverse_transform()
        for t in mapping
        if isinstance(t, WeightRenaming) and (not isinstance(t, PrefixChange) or _nested_level(t))
    ]


def _nested_level(change: Any) -> bool:
    """A prefix change that removed a sub-model's own level below a differently named scope."""
    scope = getattr(change, "scope_prefix", None) or ""
    removed = getattr(change, "prefix_to_remove", None)
    return bool(scope and removed and scope.rsplit(".", 1)[-1] != removed)


def legacy_names(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """Each module name as transformers 4.x named it, for the names the reversed mapping
    changes (the others were the same then)."""
    reverse = reverse_renamings(model)
    if not reverse:
        return {}
    found = {}
    for name in names:
        old = rename(name, reverse)
        if old != name:
            found[name] = old
    return found


def current_names(name: str, model: nn.Module, renamings: list[Any] | None = None) -> list[str]:
    """Today's candidates for a transformers 4.x module name or glob, most likely first; empty
    when the model's conversion mapping does not rename it.

    Like loading, which adds or strips the base model's prefix (`model.`) when the renamed key
    is not in the model as it stands, the prefixed or stripped name follows the renamed one.
    """
    renamings = key_renamings(model) if renamings is None else renamings
    renamed = rename(name, renamings)
    prefix = getattr(model, "base_model_prefix", "") or ""
    candidates = [renamed]
    if prefix and renamed.startswith(f"{prefix}."):
        candidates.append(renamed.removeprefix(f"{prefix}."))
    elif prefix:
        candidates.append(f"{prefix}.{renamed}")
    return [c for c in dict.fromkeys(candidates) if c != name]


__all__ = [
    "LEAF",
    "current_names",
    "key_renamings",
    "legacy_names",
    "rename",
    "reverse_renamings",
]
