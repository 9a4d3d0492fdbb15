"""``vostool models``: the registry, backbones and shipped checkpoints with their cards."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
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
            "inference_size": _inference_size(card, path),
            "search_window": spec.cls.search_window,
            "window_connected": bool(spec.cls.search_window) and spec.cls.window_connected,
            "card": card,
        })
    if as_json:
        print(json.dumps({"models": rows}, indent=2))
        return
    # short cells only, so the table fits 80 columns without breaking a word; the long texts
    # (paper, published results) follow as soft-wrapped lines (the terminal wraps them)
    table = Table(title="vostool models")
    for col in ("model", "shipped weights", "backbone", "size", "window", "dev J&F"):
        table.add_column(col, overflow="ellipsis", no_wrap=True)
    for r in rows:
        card = r["card"]
        # what `vostool eval` gives for the file with every default, where the card records it
        dev = (card.get("dev_split_by_eval") or card.get("dev_split") or {}).get("JF")
        size = r["inference_size"]
        table.add_row(r["model"], f"{r['weights_mb']} MiB" if r["weights"] else "none",
                      str(card.get("backbone", r["default_backbone"])) if r["weights"] else "-",
                      str(size) if size else "-",
                      (f"{r['search_window']:g}" + (" +c" if r["window_connected"] else "")) if r["search_window"] else "off",
                      f"{dev:.3f}" if isinstance(dev, (int, float)) else "-")
    console.print(table)
    console.print("size: the inference size (shorter side) the weights were trained and scored at, used "
                  "unless --size says otherwise; window: the default --window (search window margin; +c: objects "
                  "kept connected to their previous mask); dev J&F: with every default, on "
                  "the held-out dev split at that size.",
                  highlight=False, soft_wrap=True)
    for r in rows:
        console.print(f"[bold]{r['model']}[/]: {escape(r['title'])}. {escape(r['paper'])}. Published: "
                      f"{escape(r['published'])}.", highlight=False, soft_wrap=True)
    backbones = ", ".join(b + (" (default)" if b == rows[0]["default_backbone"] else "")
                          for b in rows[0]["backbones"]) if rows else ""
    console.print(f"Backbones: {backbones}. Weights are in {default_weights('x').parent}; cards (*.json) "
                  "beside them say how they were trained.", highlight=False, soft_wrap=True)


def _inference_size(card: dict, path: Path) -> int | None:
    """The shipped weights' inference size: the card's, else the checkpoint's metadata."""
    size = card.get("inference_size") or (card.get("dev_split") or {}).get("size")
    if size is None and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                size = (f.metadata() or {}).get("size")
        except Exception:  # unreadable weights: reported when used
            size = None
    try:
        return int(size) if size is not None else None
    except (TypeError, ValueError):
        return None
