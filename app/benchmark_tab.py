"""Benchmark tab: the loaded model's evaluation per pair, beside the paper's reported M-BEIR numbers; every table
downloads as CSV."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from trace_core.evaluate import table_rows
from trace_core.metrics import headline_metric

from . import downloads
from .first_visit import about_model
from .services import Services

# Reported on M-BEIR's local pools (mean of 16 pairs), TRACE paper (arXiv 2603.02929), Table 1 and Sec. 4.
PAPER_MBEIR = pd.DataFrame(
    [
        ("TRACE (Qwen2.5-VL-7B)", 58.8),
        ("LamRA-Ret (Qwen2.5-VL-7B)", 56.6),
        ("UniIR CLIP_SF", 50.6),
        ("UniIR BLIP_FF", 46.8),
        ("CLIP-L zero-shot", 32.5),
    ],
    columns=["model (reported on M-BEIR, not on this data)", "M-BEIR local, mean of 16 pairs"],
)
PAPER_ROUTING = (
    "Reported routing in the paper: MSCOCO queries take the direct path 96% of the time; CIRR queries "
    "reason 62% of the time. Reported speed (queries/s, one H20): MSCOCO direct 15.68, always-CoT 4.45, "
    "TRACE 8.25."
)


def run_table(results: dict) -> pd.DataFrame:
    """One row per pair of a results.json run, by pair name, then the average (`evaluate.table_rows`, the
    table the evaluation CLI prints), rounded for the page."""
    rows = table_rows(results)
    table = pd.DataFrame(sorted(rows[:-1], key=lambda r: r["pair"]) + rows[-1:])
    table["metric"] = table["metric"].str.replace("recall@", "R@")
    return table.round({"score": 1, "R@1": 1, "R@5": 1, "R@10": 1, "reason rate": 2, "mean CoT tokens": 1,
                        "queries/s": 2})


def comparison_table(report: dict) -> pd.DataFrame:
    """Headline score per pair for every run of a TRACE-mini report (auto, never, always, baselines)."""
    runs = report["runs"]
    pairs = sorted(next(iter(runs.values()))["pairs"])
    data = {name: [round(100 * r["pairs"][p][headline_metric(p)], 1) for p in pairs]
            + [round(100 * r["average"]["headline"], 1)] for name, r in runs.items()}
    return pd.DataFrame({"pair": [*pairs, "average"], **data})


def _run_modes(report: dict) -> dict[str, tuple[str, float]]:
    """The loaded model's own runs by reasoning mode ("auto" / "always" / "never") -> (run name, average).

    The report's first run is the loaded model's; a run of another model (an ablation, a baseline) is not one
    of its modes. A run without its own record (the auto run's always-reason counterfactual) is named by mode.
    """
    runs = report["runs"]

    def identity(run: dict) -> str | None:  # the weights' fingerprint; a folder name only for older reports
        model = run.get("model") or {}
        return model.get("revision") or model.get("model_id")

    own = identity(next(iter(runs.values())))
    out: dict[str, tuple[str, float]] = {}
    for name, run in runs.items():
        if identity(run) not in (None, own):
            continue
        mode = (run.get("config") or {}).get("reasoning")
        mode = mode or next((m for m in ("always", "never", "auto") if m in name.lower()), None)
        if mode and mode not in out:
            out[mode] = (name, 100 * run["average"]["headline"])
    return out


def _complex_reading(report: dict) -> list[str]:
    """On the complex queries (the report's evidence, when there is one): what reasoning does at each cut-off."""
    at = ((report.get("evidence") or {}).get("auto_minus_never_at")) or {}
    parts = []
    for k, r in at.items():
        if r.get("diff") is None:
            continue
        a, n = 100 * r[f"auto_recall@{k}"], 100 * r[f"never_recall@{k}"]
        sure = "" if r.get("lo") is None else (" (95% interval above 0)" if r["lo"] > 0 else
                                                " (95% interval below 0)" if r["hi"] < 0 else " (interval spans 0)")
        parts.append(f"R@{k} {n:.1f} → {a:.1f}{sure}")
    if not parts:
        return []
    return ["On the complex queries alone, reasoning moves recall from never to auto: " + "; ".join(parts) + "."]


def benchmark_reading(report: dict, demo: bool = True) -> str:
    """One paragraph that reads the comparison table: the best run, and whether reasoning helps the loaded
    model on average (auto vs never vs always), computed from the numbers the table shows."""
    runs = report["runs"]
    table = comparison_table(report)
    avg = table.iloc[-1]
    best = max(runs, key=lambda n: avg[n])
    lines = [f"**Reading the table.** Best on average: *{best}* ({avg[best]:.1f})."]
    modes = {m: (n, round(v, 1)) for m, (n, v) in _run_modes(report).items()}
    who = "this demo model" if demo else "this model"
    if "auto" in modes and "never" in modes:
        (auto_n, auto), (never_n, never) = modes["auto"], modes["never"]
        always = modes.get("always")
        if auto > never:
            verdict = (f"Letting the model choose when to reason (*{auto_n}*, {auto:.1f}) beats never reasoning "
                       f"(*{never_n}*, {never:.1f}): for {who}, reasoning helps on average.")
        else:
            tie = "scores the same as" if auto == never else "scores higher than"
            verdict = (f"Never reasoning (*{never_n}*, {never:.1f}) {tie} letting the model choose when to reason "
                       f"(*{auto_n}*, {auto:.1f})")
            if always is not None:
                low = " and is the lowest of the three" if always[1] < min(auto, never) else ""
                verdict += f"; reasoning on every query (*{always[0]}*) scores {always[1]:.1f}{low}"
            verdict += f": for {who}, reasoning does not yet help retrieval on average."
        lines.append(verdict)
        rows = table.iloc[:-1]
        up = list(rows.loc[rows[auto_n] > rows[never_n], "pair"])
        down = list(rows.loc[rows[auto_n] < rows[never_n], "pair"])
        same = len(rows) - len(up) - len(down)

        def listed(pairs: list[str]) -> str:
            return f" ({', '.join(pairs)})" if pairs else ""

        lines.append(f"Per pair, auto is above never on {len(up)} of {len(rows)}{listed(up)}, level on {same} and "
                     f"below on {len(down)}{listed(down)}.")
    lines += _complex_reading(report)
    return " ".join(lines)


def served_precision_note(report: dict | None, fingerprint: dict) -> str | None:
    """When the app serves the report's model at another precision (its fingerprint is the report's with a
    `-int8` suffix: `trace_core.records.precision_revision`), a sentence that says so; else None."""
    runs = (report or {}).get("runs") or {}
    reported = ((next(iter(runs.values()), None) or {}).get("model") or {}).get("revision")
    served = str(fingerprint.get("revision", ""))
    if not reported or not served.startswith(f"{reported}-"):
        return None
    precision = served[len(reported) + 1 :]
    return (f"The app serves this model in {precision} (fingerprint `{served}`); this report is of its float32 "
            f"weights, the reference. The analysis tabs read the {precision} evaluation beside the model when it "
            f"has one (`precision-{precision}/`), so their chains of thought and ranks are the ones a search here "
            f"gives.")


def build_benchmark_tab(services: Services) -> None:
    fp = services.fingerprint
    gr.Markdown(f"### Loaded model: `{fp['model_id']}` ({fp['style']} style, dim {fp['dim']})")
    report = services.benchmark
    note = served_precision_note(report, fp)
    if note:
        gr.Markdown(note)
    if report is None:
        gr.Markdown("No evaluation of this model is loaded. Run `python -m trace_core.evaluate ...` and start the "
                    "app with `--benchmark OUT/results.json`.")
    elif "runs" in report:
        gr.Markdown("Headline metric per pair on the held-out test split (%), for each mode and baseline:")
        downloads.table(comparison_table(report), "benchmark per pair and mode")
        gr.Markdown(benchmark_reading(report, about_model(services).demo), elem_classes="benchmark-reading")
        first = next(iter(report["runs"].values()))
        gr.Markdown("Full metrics of the default (auto) run:")
        downloads.table(run_table(first), "benchmark full metrics of the auto run")
    else:
        downloads.table(run_table(report), "benchmark full metrics")
    gr.Markdown("### Reference numbers, as reported on M-BEIR (a different benchmark from the demo data)")
    downloads.table(PAPER_MBEIR, "reported numbers on M-BEIR")
    gr.Markdown(PAPER_ROUTING)
