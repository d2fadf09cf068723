"""`lens demo`: the asset graph on the embedded default (tiny offline checkpoints and
synthetic datasets; models that say `demo: false` are left to `lens materialize`), then what
the warehouse holds and how to look at it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

EXAMPLE_QUERIES = (
    (
        "Rows stored per model, layer and pooling",
        "SELECT model, layer, pooling, count(*) AS n, any_value(dim) AS dim "
        "FROM activations GROUP BY ALL ORDER BY ALL",
    ),
    (
        "Images most like the first red square under the same question (itself left out), by "
        "cosine similarity of tiny-llava's final layer",
        "WITH q AS (SELECT a.image_id, a.prompt, a.vector FROM activations a "
        "JOIN image_labels l USING (image_id, dataset) "
        "WHERE a.model = 'tiny-llava' AND a.layer = 'model.language_model.norm' "
        "AND a.pooling = 'last' AND l.concept = 'colour' AND l.value = 'red' "
        "ORDER BY a.image_id, a.prompt LIMIT 1) "
        "SELECT i.path, a.prompt, round(list_cosine_similarity(a.vector, q.vector), 4) AS cosine "
        "FROM activations a CROSS JOIN q "
        "JOIN images i ON i.image_id = a.image_id AND i.dataset = a.dataset "
        "WHERE a.model = 'tiny-llava' AND a.layer = 'model.language_model.norm' "
        "AND a.pooling = 'last' AND a.image_id <> q.image_id AND a.prompt = q.prompt "
        "ORDER BY cosine DESC, i.path LIMIT 3",
    ),
    (
        "What the tutor learnt, beside its random twin tiny-llava, on one-object scenes it never "
        "saw (clevr-single): answers with the real image and with a white one (the blind test)",
        "SELECT concept, model, n_real AS questions, round(accuracy_real, 2) AS real_image, "
        "round(accuracy_blank, 2) AS white_image, round(tv_real_blank, 2) AS tv_real_vs_white "
        "FROM blind_test WHERE dataset = 'clevr-single' AND model IN ('tutor', 'tiny-llava') "
        "ORDER BY concept, model DESC",
    ),
    (
        "Which layers encode colour in clevr-single (linear probe, 5-fold CV, best pooling), "
        "the tutor beside its random twin",
        "SELECT layer, round(max(accuracy) FILTER (WHERE model = 'tutor'), 2) AS tutor, "
        "round(max(accuracy) FILTER (WHERE model = 'tiny-llava'), 2) AS tiny_llava "
        "FROM probe_results WHERE dataset = 'clevr-single' AND concept = 'colour' "
        "AND probe = 'linear' AND model IN ('tutor', 'tiny-llava') GROUP BY layer ORDER BY layer",
    ),
    (
        "The answers against what the layers encode (clevr-single): where the layers know more "
        "than the model says",
        "SELECT concept, model, round(answer_accuracy, 2) AS answers, "
        "round(probe_accuracy, 2) AS best_probe, peak_layer, "
        "round(competence_gap, 2) AS gap FROM behaviour_vs_competence "
        "WHERE dataset = 'clevr-single' AND model IN ('tutor', 'tiny-llava') "
        "AND probe_concept = concept ORDER BY concept, model DESC",
    ),
    (
        "The efficiency table",
        "SELECT model, dataset, n_images AS rows, batch_size, round(seconds, 3) AS seconds, "
        "round(per_image_seconds * 1000, 2) AS ms_per_row, "
        "peak_memory_bytes // 1048576 AS peak_mib FROM runs ORDER BY started_at, model, dataset",
    ),
)


def run_demo(warehouse_root: str | Path | None = None, echo: Callable[[str], None] = print) -> None:
    from lens_assets.catalog import demo_models, model_configs
    from lens_assets.orchestration.materialize import materialize_missing, ui_command
    from lens_assets.resources.warehouse import Warehouse
    from lens_assets.tables import format_table

    warehouse = Warehouse.at(warehouse_root)
    shown = demo_models()
    left_out = sorted(set(model_configs()) - set(shown))
    echo(f"materializing the asset graph into {warehouse.root} ...")
    if left_out:
        echo(
            f"  left out of the demo (`demo: false`; `lens materialize` makes them): "
            f"{', '.join(left_out)}"
        )
    todo, results = materialize_missing(warehouse.root, models=set(shown), progress=echo)
    if todo.empty:
        echo("everything is already up to date")
    for name, result in results:
        echo(f"  {name}: {'materialized' if result.success else 'FAILED'}")
    failed = [name for name, result in results if not result.success]
    if failed:
        raise RuntimeError(f"demo partitions failed: {', '.join(failed)}")
    for title, query in EXAMPLE_QUERIES:
        table = warehouse.fetch_arrow(query)
        echo(f'\n-- {title}\nlens sql "{query}"\n')
        echo(format_table(table.column_names, table.to_pylist(), "table").rstrip())
    echo(
        f"\nBrowse the assets, runs and checks in the Dagster UI:\n  {ui_command(warehouse.root)}\n"
    )
