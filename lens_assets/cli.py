"""The `lens` command line: thin verbs over the domain code and the warehouse."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lens_assets.config import MAX_BATCH_SIZE, ConfigError, load_model_config, model_name
from lens_assets.tables import format_table

if TYPE_CHECKING:
    from lens_assets.capture.extraction import Skipped
    from lens_assets.config import ModelConfig
    from lens_assets.data.rows import RowInput

WAREHOUSE_OPTION = click.option(
    "--warehouse",
    "warehouse_root",
    type=click.Path(file_okay=False),
    default=None,
    help="Warehouse root (default: $LENS_WAREHOUSE, else ./warehouse).",
)


BATCH_SIZE = click.IntRange(min=1, max=MAX_BATCH_SIZE)


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lensflow", prog_name="lens")
def main() -> None:
    """LensFlow: hooked activation extraction from vision-language models into DuckLake."""
    import os

    # Our own progress bar counts batches; transformers' per-file bars only add noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option(
    "--match", "patterns", multiple=True, help="Pattern(s) to mark; default: the config's modules."
)
@click.option(
    "--syntax",
    type=click.Choice(["glob", "regex"]),
    default=None,
    help="Read the patterns as globs or regular expressions (default: the config's "
    "module_syntax; regex for a config in VLM-Lens's format).",
)
@click.option(
    "--yaml", "as_yaml", is_flag=True, help="Print the selection as a `modules:` list to paste."
)
@WAREHOUSE_OPTION
def modules(
    config_path: str,
    patterns: Sequence[str],
    syntax: str | None,
    as_yaml: bool,
    warehouse_root: str | None,
) -> None:
    """List every named module of the model with its class, marking those selected.

    The config needs no `modules` (this is how one finds them). Marks: `*` hooked, `-` matched
    but never runs (a container such as a ModuleList), so nothing is stored for it."""
    from lens_assets.capture.loading import skeleton
    from lens_assets.capture.modules import ModuleSelectionError, resolve_modules
    from lens_assets.resources.warehouse import WarehouseLocation

    config = _config(config_path, require_modules=False)
    syntax = syntax or config.pattern_syntax
    chosen = list(patterns) or config.modules
    click.echo(f"modules read as {_syntax_said(syntax, config, bool(patterns))}", err=True)
    for note in config.vlm_lens_notes:
        click.echo(f"note: {note}", err=True)
    location = WarehouseLocation.resolve(warehouse_root)
    model = _run(lambda: skeleton(config, location.models_dir))
    named = [(name, type(module).__name__) for name, module in model.named_modules() if name]
    names = [name for name, _ in named]
    hooked: set[str] = set()
    never_run: set[str] = set()
    if chosen:
        try:
            selection = resolve_modules(names, chosen, model, syntax)
        except ModuleSelectionError as error:
            _fail(str(error))
        hooked, never_run = set(selection.hooked), set(selection.never_run)
    if as_yaml:
        if not chosen:
            _fail(
                "nothing is selected to print: pass --match PATTERN (or give the config `modules`)"
            )
        click.echo("modules:")
        for name in names:
            if name in hooked:
                click.echo(f"  - {_literal(name, names, syntax)}")
    else:
        width = max(len(name) for name in names)
        for name, class_name in named:
            mark = "*" if name in hooked else "-" if name in never_run else " "
            click.echo(f"{mark} {name.ljust(width)}  {class_name}")
    dropped = f", {len(never_run)} matched that never run (marked -)" if never_run else ""
    click.echo(f"\n{len(hooked)} of {len(names)} modules selected (marked *){dropped}", err=True)


def _syntax_said(syntax: str, config: ModelConfig, from_option: bool) -> str:
    """Which syntax the patterns are read in, and why, for `lens modules`."""
    if syntax == "glob":
        what = "globs (`*` within one dotted part, `**` across parts)"
    else:
        what = "regular expressions that must match a whole name, as VLM-Lens reads them"
    if config.module_syntax is not None:
        why = f"module_syntax: {config.module_syntax}"
    elif config.vlm_lens_format:
        why = "a config in VLM-Lens's format"
    else:
        why = "the default"
    return f"{what} ({why})" if not from_option or syntax == config.pattern_syntax else what


def _literal(name: str, names: Sequence[str], syntax: str) -> str:
    """`name` as a pattern that selects it alone: itself, unless read as a regex its dots
    would match another name too (then escaped)."""
    import re

    if syntax == "regex" and sum(bool(re.fullmatch(name, other)) for other in names) > 1:
        return re.escape(name)
    return name


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--input-dir", type=click.Path(file_okay=False), help="Images (default: input_dir).")
@click.option("--dataset", help="Dataset name (default: the image folder's name).")
@click.option("--name", "model", help="Model name in the tables (default: the config's stem).")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace rows another config file wrote under the same model name.",
)
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N images.")
@click.option("--batch-size", type=BATCH_SIZE, help="Images per forward pass.")
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (default: auto).")
@click.option("--dtype", default=None, help="auto, float32, float16 or bfloat16.")
@click.option(
    "--memory-budget",
    default=None,
    help="Cap on the activations held per batch, e.g. 4GiB (env LENS_MEMORY_BUDGET).",
)
@WAREHOUSE_OPTION
def extract(
    config_path: str,
    input_dir: str | None,
    dataset: str | None,
    model: str | None,
    replace: bool,
    limit: int | None,
    batch_size: int | None,
    device: str | None,
    dtype: str | None,
    memory_budget: str | None,
    warehouse_root: str | None,
) -> None:
    """Extract one model config over a folder of images into the warehouse.

    Unreadable or refused images are printed and recorded in `image_errors`; a model name that
    already holds another config file's rows is refused (see --name and --replace)."""
    from lens_assets.capture.extraction import extract_to_warehouse
    from lens_assets.data.datasets import checked_dataset_name
    from lens_assets.resources.runtime import parse_bytes
    from lens_assets.resources.warehouse import Warehouse

    config = _config(config_path)
    warehouse = Warehouse.at(warehouse_root)
    name = _run(lambda: checked_dataset_name(model or model_name(config_path)))
    dataset_name, rows, refused = _run(
        lambda: _extract_images(config, config_path, input_dir, dataset, warehouse)
    )
    rows = rows[:limit] if limit else rows
    _freeze_imported()
    result = _run(
        lambda: extract_to_warehouse(
            config,
            name,
            warehouse,
            {dataset_name: rows},
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            memory_budget=parse_bytes(memory_budget or os.environ.get("LENS_MEMORY_BUDGET")),
            config_source=str(Path(config_path).resolve()),
            claim_name=replace,
            image_errors={dataset_name: refused},
        )
    )
    click.echo(
        f"{result.model}: {result.n_images} rows x {len(result.modules)} modules -> "
        f"{result.written} rows written to {dataset_name}; the model now holds {result.rows} "
        f"rows in {warehouse.root} ({result.seconds:.2f} s, "
        f"{result.seconds / max(result.n_images, 1) * 1000:.1f} ms/row, "
        f"peak {result.peak_memory_bytes / 2**20:.0f} MiB)"
    )
    for skip in result.skipped:
        click.echo(f"skipped: {skip.reason}", err=True)
    _record_in_dagster(warehouse.root, name, dataset_name, result.written, config_path)


def _record_in_dagster(
    root: Path, model: str, dataset: str, written: int, config_path: str
) -> None:
    """An extract is a materialization of the model's activations partition: say so to the
    Dagster instance of this warehouse, where there is one (Dagster is imported only then)."""
    from lens_assets.resources.location import dagster_home_of

    if not dagster_home_of(root)[0].is_dir():
        return
    from lens_assets.orchestration.materialize import record_outside_run

    metadata = {"dataset": dataset, "rows written": written, "config": str(config_path)}
    folder = record_outside_run(root, model, metadata)
    if folder is not None:
        click.echo(f"recorded in the Dagster instance at {folder} as activations [{model}]")


def _extract_images(config, config_path: str, input_dir: str | None, dataset: str | None,
                    warehouse) -> tuple[str, list[RowInput], list[Skipped]]:  # fmt: skip
    """The rows `lens extract` runs on: --input-dir, else `input_dir` (one image per row, the
    config's prompt), else VLM-Lens's `dataset:` block (a Hugging Face dataset, each row with
    its own prompt and label, its images written under the warehouse); with the dataset's name
    and the files refused on the way. The rows are recorded in `dataset_rows` and
    `row_labels`, so the `tensors` view and the probes read their prompts and labels."""
    from lens_assets.capture.extraction import Skipped
    from lens_assets.data.collected import DatasetImages
    from lens_assets.data.datasets import checked_dataset_name, collect_images, vlm_lens_dataset
    from lens_assets.data.files import join
    from lens_assets.data.images import (
        ImageReadError,
        content_id,
        duplicate_of,
        folder_images_within,
        read_image_file,
    )
    from lens_assets.data.rows import RowInput
    from lens_assets.resources import schemas

    folder = input_dir or config.input_dir
    if folder is not None:
        name = checked_dataset_name(dataset or Path(folder).resolve().name)
        paths, refused = folder_images_within(folder)
        skipped = [Skipped(str(path), reason) for path, reason in refused]
        if not paths:
            raise FileNotFoundError(f"no image files in {folder}")
        collected = DatasetImages(name)
        files: dict[str, str] = {}
        for path in paths:
            try:
                image_id = content_id(read_image_file(path))
            except ImageReadError as error:
                skipped.append(Skipped(str(path), str(error)))
                continue
            if image_id in files:  # a copy: its bytes are run once, under the first file
                skipped.append(
                    Skipped(str(path), f"{path}: {duplicate_of(files[image_id], image_id)}")
                )
                continue
            files[image_id] = str(path)
            collected.add_row([image_id])
        rows = [RowInput(r.row_key, r.image_ids, (files[r.image_ids[0]],)) for r in collected.items]
    elif config.dataset:
        name = checked_dataset_name(dataset or f"{model_name(config_path)}-dataset")
        collected = collect_images(
            name, vlm_lens_dataset(config.dataset), join(warehouse.location.files_root, "datasets")
        )
        skipped = [Skipped(error["path"], error["error"]) for error in collected.errors]
        rows = [
            RowInput(r.row_key, r.image_ids,
                     tuple(str(collected.path_of(i)) for i in r.image_ids), r.prompt)
            for r in collected.items
        ]  # fmt: skip
    else:
        raise ConfigError(
            f"{config_path} names no images: add `input_dir: FOLDER` (or a VLM-Lens `dataset:` "
            "block) or pass --input-dir"
        )
    for skip in skipped:
        click.echo(f"skipped: {skip.reason}", err=True)
    warehouse.replace_rows("dataset = ?", [name], {
        "dataset_rows": schemas.rows_table(schemas.DATASET_ROWS, collected.row_records),
        "row_labels": schemas.rows_table(schemas.ROW_LABELS, collected.row_label_records),
    })  # fmt: skip
    return name, rows, skipped


@main.command()
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=lambda: float(os.environ.get("LENS_SQL_TIMEOUT") or 300),
    show_default="300 s, or $LENS_SQL_TIMEOUT",
    help="Stop the query after this many seconds.",
)
@click.option(
    "--memory-limit",
    default=lambda: os.environ.get("LENS_SQL_MEMORY_LIMIT") or "4GiB",
    show_default="4GiB, or $LENS_SQL_MEMORY_LIMIT",
    help="The most memory the query may use, e.g. 4GiB or 512MB.",
)
@WAREHOUSE_OPTION
def sql(
    query: str, fmt: str, timeout: float, memory_limit: str, warehouse_root: str | None
) -> None:
    """Run one read-only SQL statement on the warehouse's tables and views."""
    from lens_assets.resources.warehouse import Warehouse

    table = _run(
        lambda: Warehouse.at(warehouse_root).fetch_arrow(
            query, timeout=timeout, memory_limit=memory_limit
        )
    )
    click.echo(format_table(table.column_names, table.to_pylist(), fmt), nl=False)


@main.command()
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]), default="table"
)
def models(fmt: str) -> None:
    """Print the coverage table: every family, its class, tiny checkpoint, tests, extras."""
    from lens_assets.capture.coverage import coverage_markdown, coverage_rows

    if fmt == "markdown":
        click.echo(coverage_markdown(), nl=False)
        return
    rows = coverage_rows()
    click.echo(format_table(list(rows[0]), rows, fmt), nl=False)


@main.command()
@click.argument("architecture")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option(
    "--preset", type=click.Choice(["tiny", "small", "base"]), default="tiny", show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True)
def tiny(architecture: str, out_dir: str, preset: str, seed: int) -> None:
    """Write a random checkpoint of a real architecture, built offline."""
    from lens_assets.capture.tiny import build_tiny

    path = _run(lambda: build_tiny(architecture, out_dir, preset=preset, seed=seed))
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    click.echo(f"wrote {architecture} ({preset}) to {path}: {size / 1024:.0f} KiB")


@main.command()
@click.option(
    "--older-than-hours",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Keep snapshots younger than this.",
)
@click.option(
    "--orphans-older-than-hours",
    type=click.FloatRange(min=0),
    default=24.0,
    show_default=True,
    help="Delete files no snapshot names (a commit that never landed) once this old.",
)
@WAREHOUSE_OPTION
def maintain(
    older_than_hours: float, orphans_older_than_hours: float, warehouse_root: str | None
) -> None:
    """Expire old snapshots and delete the data files only they used.

    Waits for running writers of this warehouse and holds new ones back while it works, so it
    never deletes a file a live writer is about to commit."""
    from lens_assets.resources.warehouse import Warehouse

    stats = _run(
        lambda: Warehouse.at(warehouse_root).maintain(older_than_hours, orphans_older_than_hours)
    )
    click.echo(
        f"expired {stats['snapshots_expired']} snapshots, removed {stats['files_removed']} files"
    )


@main.command(name="copy-warehouse")
@click.option("--to-catalog", required=True, help="e.g. postgres:dbname=lens host=db user=lens")
@click.option("--to-data-path", required=True, help="e.g. s3://bucket/lensflow/data/")
@WAREHOUSE_OPTION
def copy_warehouse(to_catalog: str, to_data_path: str, warehouse_root: str | None) -> None:
    """Copy this warehouse (tables and rendered images) into another catalog and data path,
    e.g. an embedded one into PostgreSQL + S3. Credentials come from the environment."""
    from lens_assets.resources.warehouse import Warehouse, WarehouseLocation

    source = Warehouse.at(warehouse_root)
    if not source.exists():
        _fail(f"no warehouse at {source.root} to copy")
    target = Warehouse(WarehouseLocation(source.root, to_catalog, to_data_path))
    counts = _run(lambda: source.copy_into(target))
    for table, rows in counts.items():
        click.echo(f"{table}: {rows} rows")
    click.echo(f"copied into {to_catalog} / {to_data_path}")


@main.command()
@click.option(
    "--select", "selected", default=None,
    help="Comma-separated assets to bring up to date, any asset key of the Dagster Definitions "
    "(default: every asset).",
)  # fmt: skip
@click.option("--model", "models", multiple=True, help="Only these model partitions.")
@click.option("--device", default=None, help="auto, cpu or cuda[:N] (default: auto).")
@click.option("--batch-size", type=BATCH_SIZE, help="Images per forward pass.")
@WAREHOUSE_OPTION
def materialize(
    selected: str | None,
    models: Sequence[str],
    device: str | None,
    batch_size: int | None,
    warehouse_root: str | None,
) -> None:
    """Materialize, in-process, whatever is missing or stale for the current configs."""
    # The selectable assets and the default set come from the Definitions, imported here and
    # not at startup (other verbs never load Dagster); an unknown name fails listing them all.
    from lens_assets.orchestration.materialize import materialize_missing

    _freeze_imported()
    assets = {a.strip() for a in (selected or "").split(",") if a.strip()} or None
    todo, results = _run(
        lambda: materialize_missing(
            warehouse_root, assets, set(models) or None, device, batch_size, progress=click.echo
        )
    )
    if todo.empty:
        click.echo("everything is up to date")
    failed = [name for name, result in results if not result.success]
    for name, result in results:
        click.echo(f"{name}: {'materialized' if result.success else 'FAILED'}")
    if failed:
        _fail(f"{len(failed)} partitions failed: {', '.join(failed)}")


@main.command()
@WAREHOUSE_OPTION
def demo(warehouse_root: str | None) -> None:
    """Materialize the graph on tiny models and synthetic images (every model partition but
    those whose config says `demo: false`), then show the data."""
    import lens_assets.orchestration.materialize  # noqa: F401 (imported before the freeze)
    from lens_assets.demo import run_demo

    _freeze_imported()
    _run(lambda: run_demo(warehouse_root, echo=click.echo))


def _freeze_imported() -> None:
    """Leave what the imports made (torch and transformers; with Dagster's definitions and
    matplotlib ~650k objects) out of every later garbage collection. A run releases each model
    it loads with a full collection (the model's reference cycles must go before the next one
    loads), and each would otherwise walk all of them: 0.3-0.5 s a release, ~9 s of the demo.
    For the commands that load models only: a process that lives on (a notebook, the UI's code
    server) keeps its collector as it is."""
    import gc

    gc.collect()
    gc.freeze()


def _config(path: str, require_modules: bool = True):
    try:
        return load_model_config(path, require_modules=require_modules)
    except ConfigError as error:
        _fail(str(error))


def _run(work):
    """Turn the domain's own errors (each names its cause) into a clean CLI failure.

    The domain's errors (config, module selection, architecture, runtime) are ValueErrors,
    so naming them here would only import torch into `lens sql`."""
    from lens_assets.resources.warehouse import WarehouseError

    expected = (WarehouseError, FileNotFoundError, ValueError)
    try:
        return work()
    except expected as error:
        _fail(str(error))
    except Exception as error:  # duckdb errors: show the message, not a traceback
        if type(error).__module__.startswith(("duckdb", "_duckdb")):
            _fail(f"{type(error).__name__}: {error}")
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
