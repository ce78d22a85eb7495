"""HTML pieces of the report: cells, tables, embedded PNGs, the page."""

from __future__ import annotations

import base64
import html


def fmt(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return html.escape(str(v))


def table(head: list[str], rows: list[list], caption: str) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{h}</tr>{body}</table>"


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def page(parts: list[str]) -> str:
    """The self-contained page (inline CSS, images as data URLs)."""
    return ("<!doctype html><html><head><meta charset='utf-8'><title>longtail report</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;"
            "margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}caption{"
            "text-align:left;font-weight:bold;padding:4px}img{max-width:100%;margin:4px}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>")
