"""Which families LensFlow covers and how each is tested: the table `lens models` prints and the
README shows. It reads both the family rows and the tiny builders, which is why it is neither."""

from __future__ import annotations

from lens_assets.capture.adapters import get_architecture
from lens_assets.capture.families import FAMILIES, Family
from lens_assets.capture.tiny import tiny_architectures


def images_per_prompt(family: Family) -> str:
    """How many images one row may hold for this family's adapter, and whether it runs rows
    without one (text only)."""
    adapter = get_architecture(family.name).adapter
    most = "any" if adapter.max_images is None else str(adapter.max_images)
    if family.encoder:
        return most
    return f"{most}; text-only rows" if adapter.text_only else f"{most}; needs an image"


def coverage_rows() -> list[dict[str, str]]:
    """The coverage table `lens models` prints and the README shows."""
    built = set(tiny_architectures())
    rows = []
    for family in FAMILIES:
        names = ", ".join((family.name, *family.aliases))
        rows.append(
            {
                "family": family.title,
                "architecture": names,
                "model class": family.model_class,
                "images per row": images_per_prompt(family),
                "tiny checkpoint": "yes" if family.name in built else "no",
                "tested offline": "yes"
                if family.name in built
                else "no (remote code)"
                if family.remote_code
                else "no",
                "extra": f".[{family.extra}]" if family.extra else "",
                "example": family.hub_example,
            }
        )
    return rows


def coverage_markdown() -> str:
    rows = coverage_rows()
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"
