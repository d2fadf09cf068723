"""A writer process for the concurrency tests: imports no torch, so it starts fast."""

from __future__ import annotations

import pyarrow as pa
from lens_assets.resources.staging import ActivationStage
from lens_assets.resources.warehouse import Warehouse


def write_partitions(root: str, model: str, repeats: int, offset: float = 0.0) -> None:
    warehouse = Warehouse.at(root)
    for repeat in range(repeats):
        with ActivationStage(warehouse.location.staging_dir) as stage:
            stage.add_activations(
                pa.table(
                    {
                        "image_id": [f"img{i}" for i in range(50)],
                        "prompt": ["p"] * 50,
                        "layer": ["layer"] * 50,
                        "pooling": ["last"] * 50,
                        "token_index": pa.array([None] * 50, pa.int32()),
                        "token_role": pa.array([None] * 50, pa.string()),
                        "dim": pa.array([2] * 50, pa.int32()),
                        "vector": pa.array([[offset + repeat, 1.0]] * 50, pa.list_(pa.float32())),
                        "dataset": ["d"] * 50,
                    }
                )
            )
            stage.close()
            run = dict.fromkeys(("device", "dtype", "started_at"))
            run |= {
                "model": model,
                "dataset": "d",
                "batch_size": 1,
                "n_images": 50,
                "seconds": 1.0,
                "per_image_seconds": 0.02,
                "peak_memory_bytes": 1,
            }
            warehouse.replace_partition(stage.path, model, "test", ["d"], [run])
