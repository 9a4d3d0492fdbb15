"""``vostool models``: the registry, backbones and shipped checkpoints with their cards."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from vostool.cli.common import console


def models(
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
) -> None:
    """List the models, their papers and backbones, and the shipped checkpoints."""
    from vostool.models import default_weights, list_backbones, list_models

    rows = []
    for spec in list_models():
        path = default_weights(spec.name)
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        rows.append({
            "model": spec.name, "title": spec.title, "paper": spec.paper, "published": spec.published,
            "default_backbone": spec.default_backbone, "backbones": list(list_backbones()),
            "weights": str(path) if path.is_file() else None,
            "weights_mb": round(path.stat().st_size / 2**20, 1) if path.is_file() else None,
            "card": card,
        })
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    table = Table(title="vostool models")
    for col in ("model", "paper", "published (authors)", "backbones", "shipped weights", "dev J&F"):
        table.add_column(col, overflow="fold")
    for r in rows:
        card = r["card"]
        dev = (card.get("dev_split") or {}).get("JF")
        weights = (f"{r['weights_mb']} MiB, {card.get('backbone', r['default_backbone'])}"
                   if r["weights"] else "none")
        table.add_row(r["model"], f"{r['title']}\n{r['paper']}", r["published"],
                      ", ".join(b + ("*" if b == r["default_backbone"] else "") for b in r["backbones"]),
                      weights, f"{dev:.3f}" if isinstance(dev, (int, float)) else "-")
    console.print(table)
    console.print("* default backbone. Weights are in "
                  f"{default_weights('x').parent}; cards (*.json) beside them say how they were trained.")
