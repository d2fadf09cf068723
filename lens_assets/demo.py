"""`lens demo`: the backbone end to end on tiny offline checkpoints and synthetic images."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lens_assets.config import configs_dir, load_model_config, model_name
from lens_assets.extraction import ExtractionResult, extract_to_warehouse
from lens_assets.synthetic import render_shapes
from resources.warehouse import Warehouse

DEMO_MODELS = ("llava/tiny-llava.yaml", "qwen2-vl/tiny-qwen2-vl.yaml", "clip/tiny-clip.yaml")
DEMO_DATASET = "demo-shapes"

EXAMPLE_QUERIES = (
    (
        "Rows stored per model, layer and pooling",
        "SELECT model, layer, pooling, count(*) AS n, any_value(dim) AS dim "
        "FROM activations GROUP BY ALL ORDER BY ALL",
    ),
    (
        "Nearest images to the first one, by cosine similarity of a final-layer `last` vector",
        "WITH q AS (SELECT vector FROM activations WHERE model = 'tiny-llava' "
        "AND layer = 'model.language_model.norm' AND pooling = 'last' "
        "ORDER BY image_id LIMIT 1) "
        "SELECT i.path, round(list_cosine_similarity(a.vector, q.vector), 4) AS cosine "
        "FROM activations a CROSS JOIN q "
        "JOIN images i ON i.image_id = a.image_id AND i.dataset = a.dataset "
        "WHERE a.model = 'tiny-llava' AND a.layer = 'model.language_model.norm' "
        "AND a.pooling = 'last' ORDER BY cosine DESC LIMIT 3",
    ),
    (
        "The efficiency table",
        "SELECT model, n_images, batch_size, round(seconds, 3) AS seconds, "
        "round(per_image_seconds * 1000, 2) AS ms_per_image, "
        "peak_memory_bytes // 1048576 AS peak_mib FROM runs ORDER BY started_at",
    ),
)


def run_demo(
    warehouse_root: str | Path | None = None,
    n_images: int = 12,
    echo: Callable[[str], None] = print,
) -> list[ExtractionResult]:
    from lens_assets.cli import format_table

    warehouse = Warehouse.at(warehouse_root)
    images = render_shapes(warehouse.root / "demo" / "images", count=n_images)
    echo(f"rendered {len(images)} synthetic images into {images[0].parent}")
    results = []
    for relative in DEMO_MODELS:
        path = configs_dir() / "models" / relative
        config = load_model_config(path)
        result = extract_to_warehouse(
            config, model_name(path), warehouse, {DEMO_DATASET: images}, progress=False
        )
        echo(
            f"{result.model}: {result.n_images} images, {len(result.modules)} modules "
            f"-> {result.rows} rows ({result.seconds:.2f} s)"
        )
        results.append(result)
    echo(f"\nwarehouse: {warehouse.root}")
    for title, query in EXAMPLE_QUERIES:
        table = warehouse.fetch_arrow(query)
        echo(f'\n-- {title}\nlens sql "{query}"\n')
        echo(format_table(table.column_names, table.to_pylist(), "table").rstrip())
    return results
