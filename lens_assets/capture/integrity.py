"""Soundness of a stored activation partition, read back from the warehouse.

Each check returns a Finding: passed or not, a message that says what is wrong (layer, image,
count), and figures for the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lens_assets.capture.token_roles import POOLED_ROWS
from lens_assets.resources.warehouse import Warehouse


@dataclass
class Finding:
    passed: bool
    message: str
    figures: dict[str, Any] = field(default_factory=dict)


def row_counts(warehouse: Warehouse, model: str) -> Finding:
    """Rows = dataset rows x layers x poolings: every (dataset, layer, pooling) holds one row
    per dataset row the model ran, no row twice (`tokens` and `mean_per_image` rows excepted:
    one per position or image). A group that holds only rows with images (a vision layer,
    `mean_image`) is complete when it has every row the model ran with an image."""
    groups = warehouse.fetch_arrow(
        f"""
        WITH ran AS (
            SELECT dataset, count(DISTINCT row_key) AS rows,
                   count(DISTINCT row_key) FILTER (WHERE len(image_ids) > 0) AS with_images
            FROM activations WHERE model = ? GROUP BY dataset
        ), known AS (
            SELECT dataset, count(DISTINCT row_key) AS dataset_rows
            FROM dataset_rows GROUP BY dataset
        )
        SELECT a.dataset, a.layer, a.pooling, count(*) AS rows,
               count(DISTINCT a.row_key) AS distinct_rows,
               bool_and(len(a.image_ids) > 0) AS only_image_rows,
               any_value(r.rows) AS ran, any_value(r.with_images) AS ran_with_images,
               any_value(k.dataset_rows) AS dataset_rows
        FROM activations AS a JOIN ran AS r USING (dataset)
        LEFT JOIN known AS k USING (dataset)
        WHERE a.model = ? AND a.{POOLED_ROWS}
        GROUP BY ALL ORDER BY ALL
        """,
        [model, model],
    ).to_pylist()
    if not groups:
        return Finding(False, f"model {model!r} has no pooled rows in the warehouse")
    for g in groups:
        g["expected"] = g["ran_with_images"] if g["only_image_rows"] else g["ran"]
    bad = [
        g for g in groups
        if not g["rows"] == g["distinct_rows"] == g["expected"]
        or (g["dataset_rows"] is not None and g["ran"] > g["dataset_rows"])
    ]  # fmt: skip
    expected = sum(g["expected"] or 0 for g in groups)
    stored = sum(g["rows"] for g in groups)
    figures = {"rows": stored, "expected_rows": expected, "layer_poolings": len(groups)}
    if bad:
        details = "; ".join(
            f"{g['layer']} / {g['pooling']} in {g['dataset']}: {g['rows']} rows for "
            f"{g['distinct_rows']} distinct of {g['expected']} dataset rows run"
            f" ({g['dataset_rows']} in the dataset)"
            for g in bad[:5]
        )
        return Finding(False, f"{len(bad)} layer/pooling groups are incomplete or duplicated: "
                       f"{details}", figures)  # fmt: skip
    return Finding(True, f"{stored} rows = dataset rows x layers x poolings", figures)


def finite_values(warehouse: Warehouse, model: str) -> Finding:
    """No NaN or Inf (a float16 overflow, say) stored as if it were a sound vector."""
    bad = warehouse.fetch_arrow(
        """
        SELECT layer, pooling, image_id, row_key, token_index
        FROM activations
        WHERE model = ? AND list_bool_or(list_transform(vector, x -> isnan(x) OR isinf(x)))
        ORDER BY layer, image_id
        """,
        [model],
    ).to_pylist()
    if bad:
        first = bad[0]
        where = (
            f"layer {first['layer']} ({first['pooling']}), row {first['row_key']} (image "
            f"{first['image_id']})"
        )
        return Finding(
            False, f"{len(bad)} vectors hold NaN or Inf; the first: {where}", {"bad": len(bad)}
        )
    return Finding(True, "every value is finite", {"bad": 0})


def one_dimension_per_layer(warehouse: Warehouse, model: str) -> Finding:
    """A layer has one width; two widths mean rows from different models or code got mixed."""
    mixed = warehouse.fetch_arrow(
        """
        SELECT layer, list(DISTINCT dim ORDER BY dim) AS dims FROM activations
        WHERE model = ? GROUP BY layer HAVING count(DISTINCT dim) > 1 ORDER BY layer
        """,
        [model],
    ).to_pylist()
    if mixed:
        details = "; ".join(f"{m['layer']}: {m['dims']}" for m in mixed)
        return Finding(False, f"layers with more than one dimension: {details}")
    return Finding(True, "one dimension per layer")
