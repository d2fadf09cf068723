"""Train the tutor (`configs/tuning/tutor.yaml`) and measure it: held-out accuracy through the
real answering path, on rows never trained on, beside chance; the steps and the time.

    python -m lens_assets.tuning.tutor [--config PATH] [--models-dir DIR] [--eval-every N]

Not a unit test: it trains the `small` tiny LLaVA for minutes. The checkpoint is saved under
`<models-dir>/tuned/<config stem>` and reloaded through `load_model` before it is measured.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lens_assets.capture.loading import load_model
from lens_assets.config import configs_dir
from lens_assets.tuning import (
    evaluate,
    load_base,
    load_rows,
    load_tuning_config,
    merged,
    resolve_base,
    save_checkpoint,
    train_model,
    tuned_dir,
    tuned_model_config,
    tuning_metadata,
    tuning_name,
    without_overlap,
)
from lens_assets.tuning.checkpoint import read_metadata


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=configs_dir() / "tuning" / "tutor.yaml")
    parser.add_argument("--models-dir", type=Path, default=Path("warehouse") / "models")
    parser.add_argument("--eval-every", type=int, default=0, help="also measure every N steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)

    config = load_tuning_config(args.config)
    name = tuning_name(args.config)
    if config.held_out is None:
        raise SystemExit(f"{args.config} has no held_out rows to measure on")
    _, base_config = resolve_base(config.base)
    started = time.perf_counter()
    rows = load_rows(config.train, base_config.prompt)
    held = without_overlap(load_rows(config.held_out, base_config.prompt), rows)
    print(
        f"{len(rows)} training rows, {len(held)} held-out rows "
        f"({time.perf_counter() - started:.0f} s to render)",
        flush=True,
    )
    base = load_base(config, args.models_dir, args.device, args.dtype)
    print(f"threads: {torch.get_num_threads()}, device {base.loaded.device}", flush=True)
    clock = time.perf_counter()

    def progress(step: int, steps: int, loss: float) -> None:
        if step % 10 == 0 or step == steps:
            print(
                f"step {step}/{steps} loss {loss:.3f} ({time.perf_counter() - clock:.0f} s)",
                flush=True,
            )
        if args.eval_every and step % args.eval_every == 0 and step < steps:
            base.loaded.model.eval()
            interim = evaluate(base.loaded, held)
            base.loaded.model.train()
            print(f"  held-out at step {step}: {interim.accuracy:.3f}", flush=True)

    tunable, losses = train_model(config, base, rows, progress)
    seconds = time.perf_counter() - clock
    model = merged(tunable.model)
    metadata = {
        **tuning_metadata(config, name, base, tunable, losses, len(rows)),
        "train_seconds": seconds,
    }
    folder = save_checkpoint(
        model, base.loaded.processor, tuned_dir(args.models_dir, name), metadata
    )
    loaded = load_model(tuned_model_config(base.config, folder), name, args.models_dir, args.device)
    result = evaluate(loaded, held)
    print(f"trained {config.steps} steps of {config.batch_size} rows in {seconds:.0f} s")
    print(f"checkpoint {folder}, metadata {read_metadata(folder) is not None}")
    for kind, score in result.by_kind.items():
        print(
            f"held-out {kind}: accuracy {score.accuracy:.3f} on {score.n} rows "
            f"(chance {score.chance:.3f})"
        )


if __name__ == "__main__":
    main()
