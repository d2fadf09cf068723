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
    """Rows = images x layers x poolings: every (dataset, layer, pooling) holds one row per
    image of the dataset, no image twice (`tokens` rows excepted: one per position)."""
    groups = warehouse.fetch_arrow(
        f"""
        WITH expected AS (
            SELECT dataset, count(DISTINCT image_id) AS images FROM images GROUP BY dataset
        )
        SELECT a.dataset, a.layer, a.pooling, count(*) AS rows,
               count(DISTINCT a.image_id) AS distinct_images, any_value(e.images) AS images
        FROM activations AS a LEFT JOIN expected AS e USING (dataset)
        WHERE a.model = ? AND a.{POOLED_ROWS}
        GROUP BY ALL ORDER BY ALL
        """,
        [model],
    ).to_pylist()
    if not groups:
        return Finding(False, f"model {model!r} has no pooled rows in the warehouse")
    bad = [g for g in groups if not g["rows"] == g["distinct_images"] == g["images"]]
    expected = sum(g["images"] or 0 for g in groups)
    stored = sum(g["rows"] for g in groups)
    figures = {"rows": stored, "expected_rows": expected, "layer_poolings": len(groups)}
    if bad:
        details = "; ".join(
            f"{g['layer']} / {g['pooling']} in {g['dataset']}: {g['rows']} rows for "
            f"{g['distinct_images']} distinct of {g['images']} images"
            for g in bad[:5]
        )
        return Finding(False, f"{len(bad)} layer/pooling groups are incomplete or duplicated: "
                       f"{details}", figures)  # fmt: skip
    return Finding(True, f"{stored} rows = images x layers x poolings", figures)


def finite_values(warehouse: Warehouse, model: str) -> Finding:
    """No NaN or Inf (a float16 overflow, say) stored as if it were a sound vector."""
    bad = warehouse.fetch_arrow(
        """
        SELECT layer, pooling, image_id, token_index
        FROM activations
        WHERE model = ? AND list_bool_or(list_transform(vector, x -> isnan(x) OR isinf(x)))
        ORDER BY layer, image_id
        """,
        [model],
    ).to_pylist()
    if bad:
        first = bad[0]
        where = f"layer {first['layer']} ({first['pooling']}), image {first['image_id']}"
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
