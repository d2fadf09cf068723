"""Interventions: causal tests of what a VLM's modules do, not only what they represent.

Two analyses over a `LoadedModel`, each a forward pass with hooks (from `capture.hooks`) that
change a module's output or input and are removed when the pass ends, whatever happens:

- `patching`: activation patching, a clean run's output at one hook point put into a
  corrupted run, read as recovery = (patched - corrupted) / (clean - corrupted);
- `ablation`: chosen attention heads zeroed or set to their mean before the attention's
  output projection, read as the change in the answer logit and the output distribution;
- `runs`: what both share (one sample's inputs, plain runs, the answer token, effect sizes);
- `studies`: the configured studies (configs/interpretability.yaml) over warehouse datasets.

Plain Python (no Dagster) so notebooks, the CLI and the orchestration layer share it. The rows
returned fit the warehouse tables `patching_effects` and `ablation_effects`
(`PATCHING_EFFECTS`, `ABLATION_EFFECTS`). This package re-exports every public name.
"""

from lens_assets.analyses.answer_tokens import answer_token_id
from lens_assets.analyses.interventions.ablation import (
    ABLATION_EFFECTS,
    ABLATION_MODES,
    ABLATION_ROWS,
    ATTENTION_OUTPUTS,
    AblationMode,
    AttentionHeads,
    ablate_heads,
    ablate_sample,
    attention_heads,
    expand_layers,
    head_ablation,
    head_means,
)
from lens_assets.analyses.interventions.patching import (
    PATCHING_EFFECTS,
    PATCHING_ROWS,
    POSITIONS,
    PatchPair,
    Positions,
    activation_patching,
    cache_outputs,
    image_position_mask,
    patch_outputs,
    prepare_pair,
)
from lens_assets.analyses.interventions.runs import (
    InterventionError,
    Sample,
    answer_logit,
    final_kl,
    forward_logits,
    pick_answer_token,
    prepare_input,
    recovery,
    rows_table,
    run_logits,
)
from lens_assets.analyses.interventions.studies import (
    ablation_effects,
    patch_pairs,
    patching_effects,
)

__all__ = [
    "ABLATION_EFFECTS",
    "ABLATION_MODES",
    "ABLATION_ROWS",
    "ATTENTION_OUTPUTS",
    "PATCHING_EFFECTS",
    "PATCHING_ROWS",
    "POSITIONS",
    "AblationMode",
    "AttentionHeads",
    "InterventionError",
    "PatchPair",
    "Positions",
    "Sample",
    "ablate_heads",
    "ablate_sample",
    "ablation_effects",
    "activation_patching",
    "answer_logit",
    "answer_token_id",  # re-exported from answer_tokens
    "attention_heads",
    "cache_outputs",
    "expand_layers",
    "final_kl",
    "forward_logits",
    "head_ablation",
    "head_means",
    "image_position_mask",
    "patch_outputs",
    "patch_pairs",
    "patching_effects",
    "pick_answer_token",
    "prepare_input",
    "prepare_pair",
    "recovery",
    "rows_table",
    "run_logits",
]
