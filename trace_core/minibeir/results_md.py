"""RESULTS.md of the TRACE-mini report (`report.py`): the markdown tables, from the numbers it computed."""

from __future__ import annotations

from ..metrics import headline_metric
from . import evidence as E


def _f(x: float | None, scale: float = 100, digits: int = 1) -> str:
    return "–" if x is None else f"{scale * x:.{digits}f}"


def _p(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _r(m: dict | None) -> str:
    """R@1 / R@5 / R@10 in % of a metrics dict."""
    if not m or "recall@1" not in m:
        return "–"
    return " / ".join(_f(m[f"recall@{k}"]) for k in E.KS)


def runs_table(runs: dict[str, dict]) -> str:
    """The headline metric of every run, per pair and on average."""
    pairs = sorted(next(iter(runs.values()))["pairs"])
    head = "| pair | metric | " + " | ".join(runs) + " |"
    lines = [head, "|" + "---|" * (len(runs) + 2)]
    for p in pairs:
        metric = headline_metric(p)
        cells = [f"{100 * r['pairs'][p][metric]:.1f}" for r in runs.values()]
        lines.append(f"| {p} | {metric.replace('recall@', 'R@')} | " + " | ".join(cells) + " |")
    cells = [f"{100 * r['average']['headline']:.1f}" for r in runs.values()]
    lines.append("| **average** | headline | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_detail(name: str, r: dict) -> str:
    """One run's R@1/5/10, reason rate, CoT length and speed per pair."""
    lines = [f"#### {name}", "", "| pair | R@1 | R@5 | R@10 | reason rate | mean CoT tokens | queries/s | n |",
             "|---|---|---|---|---|---|---|---|"]
    for p, m in sorted(r["pairs"].items()):
        lines.append(
            f"| {p} | {100 * m['recall@1']:.1f} | {100 * m['recall@5']:.1f} | {100 * m['recall@10']:.1f} | "
            f"{m['reason_rate']:.2f} | {m['mean_cot_tokens']:.1f} | {m['queries_per_s']:.2f} | {m['n_queries']} |"
        )
    return "\n".join(lines)


def evidence_markdown(ev: dict, baseline_name: str | None) -> list[str]:
    """The evidence sections of RESULTS.md, from `results.json`'s \"evidence\"."""
    md = ["## Evidence by difficulty label", "",
          "Each cell is R@1 / R@5 / R@10 in %; 'direct' = simple, 'reason' = complex (the corpus's per-query "
          "label). The reason rate is the auto run's share of queries that wrote a CoT.", ""]
    modes = ["auto", "never", "always"] + (["baseline"] if baseline_name else [])
    md += ["| pair | label | n | " + " | ".join(modes) + " | reason rate |", "|" + "---|" * (len(modes) + 4)]
    rates = ev["reason_rates"]
    for pair, by_label in ev["recall_by_label"].items():
        for label, entry in by_label.items():
            rate = (rates["pairs"][pair][f"reason_rate_{label}"] if pair in rates["pairs"]
                    else rates["pooled_all"][f"reason_rate_{label}"])
            name = f"**{pair}**" if pair == E.POOLED else pair
            md.append(f"| {name} | {label} | {entry['n']} | " + " | ".join(_r(entry.get(m)) for m in modes)
                      + f" | {_p(rate)} |")
    md += ["", "Reason rate of the auto run (%), simple vs complex queries:", "",
           "| scope | simple (n) | complex (n) |", "|---|---|---|"]
    scopes = [(p, r) for p, r in rates["pairs"].items() if r["mixed"]]
    scopes += [("**mixed pairs, pooled**", rates["pooled_mixed"])] if rates["pooled_mixed"] else []
    scopes += [("**all pairs, pooled**", rates["pooled_all"])]
    for name, r in scopes:
        md.append(f"| {name} | {_f(r['reason_rate_direct'])} ({r['n_direct']}) | "
                  f"{_f(r['reason_rate_reason'])} ({r['n_reason']}) |")
    if not rates["mixed_pairs"]:
        md.append("\nNo pair mixes simple and complex queries in this corpus.")

    md += ["", "## Chains of thought of the auto run", "",
           "On complex queries that reasoned: share of CoTs naming the target's canonical name (case-insensitive, "
           "whole words), naming the reference (composed edits with a `ref_name`), both ('correct'), hitting the "
           "token cap, and the mean CoT length. Last columns: over every CoT the auto run wrote. The always pass "
           "stores no CoT text, so its CoTs cannot be judged here.", "",
           "| pair | n | names target | names reference (n) | correct | at cap | mean tokens | "
           "all CoTs: n | at cap | mean tokens |", "|---|---|---|---|---|---|---|---|---|---|"]
    for pair, s in ev["cot_stats"].items():
        name = f"**{pair}**" if pair == E.POOLED else pair
        md.append(f"| {name} | {s['n_complex_reasoned']} | {_p(s['names_target'])} | "
                  f"{_p(s['names_reference'])} ({s['n_with_reference']}) | {_p(s['correct'])} | "
                  f"{_p(s['capped'])} | {_f(s['mean_cot_tokens'], 1)} | {s['n_all_cots']} | "
                  f"{_p(s['capped_all_cots'])} | {_f(s['mean_cot_tokens_all_cots'], 1)} |")

    g = ev["auto_minus_never"]
    md += ["", "## Does reasoning help complex queries? Auto minus never, R@5", "",
           f"Paired bootstrap over queries ({g[E.POOLED]['n_resamples'] if E.POOLED in g else 0} resamples, seed "
           f"{g[E.POOLED]['seed'] if E.POOLED in g else 0}; pooled: resampled within each pair), in points.", "",
           "| pair | n | auto R@5 | never R@5 | auto - never | 95% interval |", "|---|---|---|---|---|---|"]
    for pair, r in g.items():
        name = f"**{pair}**" if pair == E.POOLED else pair
        interval = "–" if r["lo"] is None else f"[{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
        diff = "–" if r["diff"] is None else f"{100 * r['diff']:+.1f}"
        md.append(f"| {name} | {r['n']} | {_f(r['auto_recall@5'])} | {_f(r['never_recall@5'])} | {diff} | "
                  f"{interval} |")
    at = ev.get("auto_minus_never_at") or {}
    if at:
        md += ["", "The pooled gain at each cut-off (complex queries, same bootstrap):", "",
               "| cut-off | auto | never | auto - never | 95% interval |", "|---|---|---|---|---|"]
        for k, r in at.items():
            interval = "–" if r["lo"] is None else f"[{100 * r['lo']:+.1f}, {100 * r['hi']:+.1f}]"
            diff = "–" if r["diff"] is None else f"{100 * r['diff']:+.1f}"
            md.append(f"| R@{k} | {_f(r[f'auto_recall@{k}'])} | {_f(r[f'never_recall@{k}'])} | {diff} | {interval} |")
    h = ev["headline_means"]
    md += ["", "Headline mean over pairs (%): " + ", ".join(f"{k} {_f(v)}" for k, v in h.items()) + "."]

    if ev.get("oracle"):
        rows = ["auto", "never", "always", *E.ORACLE_ROWS]
        md += ["", "## Oracle CoTs on complex queries: does the content of the CoT matter?", "",
               "Each complex test query embedded with a given CoT instead of its own (R@1 / R@5 / R@10 in %): "
               "the teacher CoT from the corpus; the name-only sentence "
               f"\"{ev['oracle_params']['sentence']}\"; the same sentence with another query's target (seeded "
               "derangement within the pair); a blank CoT (the hidden state right after the assistant prompt: by "
               "construction the never embedding); another query's teacher CoT. Ranked over the evaluation's "
               "cached pool index.", "",
               "| pair | n | " + " | ".join(rows) + " |", "|" + "---|" * (len(rows) + 2)]
        for pair, entry in ev["oracle"].items():
            name = f"**{pair}**" if pair == E.POOLED else pair
            md.append(f"| {name} | {entry['n']} | " + " | ".join(_r(entry.get(r)) for r in rows) + " |")

    md += ["", "## Image pairs vs frozen features", "",
           "Headline metric in %. EfficientNet-Lite0: cosine between the frozen pooled features of the query image "
           "and of each candidate image (query text ignored), for pairs with images on both sides. "
           "minilm-bridge: the baseline run (`--baseline minilm-bridge`), built on the same frozen features, for "
           "every image pair. A pair passes when the model is at least as good as every frozen-feature baseline "
           "available for it; without any, it is n/a.", "",
           "| pair | metric | TRACE-mini auto | EfficientNet-Lite0 cosine | minilm-bridge | pass |",
           "|---|---|---|---|---|---|"]
    for pair, r in ev["image_pairs"].items():
        md.append(f"| {pair} | {headline_metric(pair).replace('recall@', 'R@')} | {_f(r['model'])} | "
                  f"{_f(r['frozen_features'])} | {_f(r['bridge'])} | {E.mark(r['passed'])} |")

    if ev.get("probe"):
        md += ["", "## Routing probe: M-BEIR's own instructions", "",
               "Queries the model never saw: M-BEIR's CIRR and MSCOCO instructions on images of the corpus that are "
               f"not emoji ({', '.join(ev['probe_images'])}).", "",
               "| queries | instruction | n | reason rate | mean P(<\\|emb\\|> first) |", "|---|---|---|---|---|"]
        for name, r in ev["probe"].items():
            md.append(f"| {name} | {r['instruction']} | {r['n']} | {_p(r['reason_rate'])} | "
                      f"{r['mean_p_emb']:.2f} |")

    md += ["", "## Done when", "", "| criterion | target | measured | result |", "|---|---|---|---|"]
    for row in ev["checklist"]:
        md.append(f"| {row['criterion']} | {row['target']} | {row['shown']} | {E.mark(row['passed'])} |")
    return md
