"""A figure's downloads: the image as PNG or SVG, and the table it is drawn from as CSV.

The images are drawn by plotly.js in the browser (`Plotly.downloadImage`), from the figure on the page: the
server needs no image exporter (kaleido and a headless browser are not installed). Gradio's plotly component
puts plotly.js on `window.Plotly`; the PNG and SVG buttons sit in the plot's toolbar (gr.Plot `buttons`).
The CSV is the DataFrame the figure is built from (the pure builders of `analysis.figures` and the
walkthrough), written atomically to a fresh scratch folder (app.scratch) under the figure's name.
"""

from __future__ import annotations

import json
import re

import gradio as gr
import pandas as pd

from app import scratch
from trace_core.atomic import atomic_file

CSV_LABEL = "Data (CSV)"


def csv_file(frame: pd.DataFrame, name: str) -> str:
    """`frame` as `<fresh scratch folder>/<name>.csv`, written atomically; its path. A folder of its own per
    call, so that two visitors' downloads never share a file and the file keeps the figure's name."""
    path = scratch.fresh("figure") / f"{slug(name)}.csv"
    atomic_file(path, lambda tmp: frame.to_csv(tmp, index=False))
    return str(path)


def slug(name: str) -> str:
    """A file name from a title: lower case, words joined by "-"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "figure"


def image_js(elem_id: str, fmt: str, name: str) -> str:
    """The browser code of a PNG / SVG button: plotly.js draws the plot in `#elem_id` to a file and downloads it
    (nothing happens while the plot is empty)."""
    return (f"() => {{ const gd = document.querySelector({json.dumps('#' + elem_id + ' .js-plotly-plot')}); "
            f"if (gd && window.Plotly) window.Plotly.downloadImage(gd, {{format: {json.dumps(fmt)}, "
            f"filename: {json.dumps(slug(name))}}}); }}")


def image_buttons(elem_id: str, name: str) -> list[gr.Button]:
    """The PNG and SVG buttons of a plot's toolbar, wired to plotly.js (no server call)."""
    buttons = []
    for fmt in ("png", "svg"):
        b = gr.Button(fmt.upper(), size="sm", variant="secondary")
        b.click(None, None, None, js=image_js(elem_id, fmt, name), queue=False, api_visibility="private")
        buttons.append(b)
    return buttons


def figure(fig, frame: pd.DataFrame | None, name: str, elem_id: str, **plot_kwargs) -> tuple[gr.Plot,
                                                                                              gr.DownloadButton]:
    """A plot with PNG and SVG buttons in its toolbar and, below it, a CSV download of `frame` (hidden while
    there is no frame: a figure drawn later by an event gets its CSV then, see `csv_update`)."""
    plot = gr.Plot(fig, elem_id=elem_id, buttons=image_buttons(elem_id, name), **plot_kwargs)
    data = gr.DownloadButton(CSV_LABEL, value=csv_file(frame, name) if frame is not None else None,
                             visible=frame is not None, size="sm", elem_id=f"{elem_id}-csv",
                             elem_classes="figure-csv")
    return plot, data


def csv_update(frame: pd.DataFrame | None, name: str) -> gr.DownloadButton:
    """The CSV button of a figure an event has just drawn (hidden when there is no figure)."""
    if frame is None:
        return gr.DownloadButton(value=None, visible=False)
    return gr.DownloadButton(value=csv_file(frame, name), visible=True)


def table(frame: pd.DataFrame, name: str, **table_kwargs) -> tuple[gr.Dataframe, gr.DownloadButton]:
    """A read-only table with a CSV download of what it shows (the Benchmark tab's numbers, for a paper)."""
    shown = gr.Dataframe(frame, interactive=False, wrap=True, elem_classes="fit-table", **table_kwargs)
    return shown, gr.DownloadButton(CSV_LABEL, value=csv_file(frame, name), size="sm", elem_id=f"{slug(name)}-csv",
                                    elem_classes="figure-csv")
