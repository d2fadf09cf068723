"""Which families LensFlow covers and how each is tested: the table `lens models` prints and the
README shows. It reads both the family rows and the tiny builders, which is why it is neither."""

from __future__ import annotations

from lens_assets.capture.families import FAMILIES
from lens_assets.capture.tiny import tiny_architectures


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
