"""The TRACE-mini evidence: evaluate the model in every mode, the baselines, and write one results file.

    python -m trace_core.minibeir.report --model assets/trace-mini --data assets/minibeir \
        [--ablation runs/trace-mini-nogen/model] [--baseline minilm-bridge] --out assets/trace-mini \
        [--reuse] [--no-oracle] [--no-probe]

Runs `trace_core.evaluate` on the held-out test split for: TRACE-mini in auto mode, forced never to reason,
forced always to reason; the λ_gen = 0 ablation (when given); the dual-encoder baseline (when given). Then,
from the per-query tables and the corpus's labels (`trace_core.minibeir.evidence` holds the arithmetic):

- R@1/5/10 of auto / never / always (and the baseline) per pair and per difficulty label, the reason rate on
  simple and complex queries (pairs mixing both labels, and overall);
- the auto run's CoTs on complex queries: share naming the target (and the reference image of an edit),
  share hitting the token cap, mean length;
- auto minus never R@5 on complex queries, per pair and pooled, with a paired bootstrap 95% interval;
- oracle rows (`--oracle`, default on): complex queries embedded with a given CoT (teacher, name only, wrong
  name, blank, another query's CoT) through `TraceEncoder.encode_with_cot`, ranked over the same cached pool
  index the evaluation built;
- frozen-feature baselines of the image pairs: EfficientNet-Lite0 pooled features (cosine) where query and
  candidates both hold images, the minilm-bridge run (built on the same frozen features) for every image pair;
- a routing probe (`--probe`, default on) with M-BEIR's own MSCOCO / CIRR instructions on non-emoji images;
- a "done when" checklist computed from those numbers.

Writes OUT/results.json (every run's per-pair metrics, the routing agreement with the labels, and all of the
above under "evidence"), OUT/RESULTS.md (the tables, for the model card), and for the app's analysis tabs the
auto run's per-query table OUT/queries.parquet and query embeddings OUT/embeddings/<pair>.npz.
With --reuse, finished evaluation runs in --work are read back instead of run again, and so are the oracle,
frozen-feature and probe results (WORK/*.json) when they were computed with the same settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..atomic import atomic_directory, atomic_file
from ..embed_pool import pool_index
from ..encoder import EncoderConfig, TraceEncoder
from ..evaluate import EvalConfig, evaluate
from ..loading import load_model
from ..mbeir import discover_pairs, read_pool, resolve_image
from ..metrics import headline_metric
from ..records import Query, load_image
from . import evidence as E
from .results_md import evidence_markdown, run_detail, runs_table

log = logging.getLogger(__name__)

AUTO, NEVER, ALWAYS = "TRACE-mini auto", "never reason", "always reason"
IMAGE_TASKS = frozenset({0, 2, 3, 4, 6, 7, 8})  # M-BEIR tasks with an image on the query or candidate side
IMAGE_TO_IMAGE_TASKS = frozenset({4, 7, 8})  # the query holds an image and so do the candidates

# The routing probe: M-BEIR's own instructions (CIRR task 7, MSCOCO tasks 0 and 3), which TRACE-mini never saw.
CIRR_INSTRUCTION = "Retrieve a day-to-day image that aligns with the modification instructions of the provided image."
COCO_T2I_INSTRUCTION = "Find me an everyday image that matches the given caption."
COCO_I2T_INSTRUCTION = "Find an image caption describing the following everyday image."
PROBE_EDITS = ("make it red", "the same but with two of them", "remove the background person")
PROBE_CAPTIONS = (
    "A man riding a bike down a street.",
    "A plate of food with broccoli on a wooden table.",
    "Two dogs playing in the snow.",
    "A red double-decker bus parked by the road.",
    "A woman holding an umbrella in the rain.",
)


# ------------------------------------------------------------------------------------ labels and routing
def query_labels(data: Path, split: str) -> pd.DataFrame:
    """pair, qid and the M-BEIR-CoT keys of the queries: label (route), teacher_cot, target_name, ref_name, kind."""
    rows = []
    for pair in discover_pairs(data, split):
        for line in pair.query_file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                rows.append({"pair": pair.name, "qid": obj["qid"], **E.query_keys(obj)})
    return pd.DataFrame(rows, columns=["pair", "qid", "label", "teacher_cot", "target_name", "ref_name", "kind"])


routing_labels = query_labels  # the name of the v1 report; its "label" column is unchanged


def routing_agreement(queries: pd.DataFrame, labels: pd.DataFrame) -> dict:
    """How often the model's route matches the difficulty label, overall and per label."""
    merged = queries[["pair", "qid", "route"]].merge(labels[["pair", "qid", "label"]], on=["pair", "qid"])
    out = {"accuracy": float((merged["route"] == merged["label"]).mean())}
    for label in ("direct", "reason"):
        part = merged[merged["label"] == label]
        if len(part):
            out[f"reason_rate_when_{label}"] = float((part["route"] == "reason").mean())
            out[f"n_{label}"] = int(len(part))
    return out


def _add_routing(name: str, runs: dict, routing: dict, table: pd.DataFrame, labels: pd.DataFrame) -> None:
    """Routing agreement of a run; the auto run's counterfactual pass becomes the "always reason" run."""
    routing[name] = routing_agreement(table, labels)
    if "counterfactual_always" in runs[name]:
        runs[ALWAYS] = runs[name].pop("counterfactual_always")
        routing[ALWAYS] = routing_agreement(table.assign(route="reason"), labels)


def _run_dir(work: Path, name: str) -> Path:
    return work / name.split(":")[0].replace(" ", "-").replace("λ_gen-=-0", "nogen")


# ------------------------------------------------------------------------------------ model-side evidence
def _as_query(row, data: Path) -> Query:
    """A query as the evaluation encoded it: its text, image and the instruction it was given."""
    image = resolve_image(data, row.query_img_path) if isinstance(row.query_img_path, str) else None
    return Query(text=row.query_txt, image=image, instruction=row.instruction, qid=row.qid)


def run_oracles(encoder: TraceEncoder, data: Path, split: str, auto: pd.DataFrame, ev: pd.DataFrame,
                cache_dir: str, sentence: str = E.NAME_SENTENCE, seed: int = 0) -> dict:
    """R@1/5/10 of the complex queries embedded with each oracle CoT, per pair and pooled.

    The gold ranks are taken over the pool index the evaluation built (loaded from `cache_dir`; embedded
    once per pair when it is not there). The "blank CoT" row embeds the end of the prompt and therefore equals
    the never run on the same queries; auto / never / always on the same queries are given for reference."""
    pairs = {p.name: p for p in discover_pairs(data, split)}
    meta = auto.set_index(["pair", "qid"])
    out: dict = {}
    pooled: dict[str, list[np.ndarray]] = {}
    for name, rows in ev[ev["label"] == "reason"].groupby("pair", sort=True):
        pair = pairs[name]
        index = pool_index(encoder, read_pool(pair.pool_file), data, cache_dir, pair.pool_file.stem)
        info = meta.loc[[(name, q) for q in rows["qid"]]].reset_index()
        queries = [_as_query(r, data) for r in info.itertuples()]
        positives = info["positives"].tolist()
        entry: dict = {"n": int(len(rows))}
        for mode in ("auto", "never", "always"):
            ranks = rows[E.MODES[mode]].to_numpy(dtype=float)
            entry[mode] = {"n": int(len(ranks)), **(E.recalls(ranks) or {})}
            pooled.setdefault(mode, []).append(ranks)
        for row_name, given in E.oracle_cots(rows, sentence, seed).items():
            keep = [i for i, c in enumerate(given) if c is not None]
            ranks = np.full(0, np.nan)
            if keep:
                log.info("oracle %s / %s: %d queries", name, row_name, len(keep))
                res = encoder.encode_with_cot([queries[i] for i in keep], [given[i] for i in keep])
                ranks, _, _ = index.gold_ranks(np.stack([r.embedding for r in res]), [positives[i] for i in keep])
            entry[row_name] = {"n": len(keep), **(E.recalls(ranks) or {})}
            pooled.setdefault(row_name, []).append(ranks)
        out[name] = entry
    if out:
        out[E.POOLED] = {"n": int(sum(e["n"] for e in out.values()))}
        for row_name, parts in pooled.items():
            ranks = np.concatenate(parts)
            out[E.POOLED][row_name] = {"n": int(len(ranks)), **(E.recalls(ranks) or {})}
    return out


def frozen_features(paths: Sequence[Path], vision=None, batch_size: int = 64) -> np.ndarray:
    """EfficientNet-Lite0 pooled features [N, 1280] (global average of the last feature map).

    Images go through `load_image` (transparent pixels on white, as every encoder sees them) and TraceMini's
    own preprocessing at 224 px with the ImageNet mean/std. That preprocessing is a method of TraceMini that
    reads only `config.image_size`, so it is called here with a stand-in holding the default config."""
    import torch

    from ..backbones.mini import MiniConfig, TraceMini
    from ..backbones.pretrained import load_vision

    vision = vision if vision is not None else load_vision("efficientnet-lite0")
    stand_in = type("Preprocess", (), {"config": MiniConfig()})()  # image_size 224
    out = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [load_image(p) for p in paths[start : start + batch_size]]
            fmap = vision.extract_features(TraceMini.preprocess(stand_in, images))
            out.append(fmap.mean((2, 3)).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1280), dtype=np.float32)


def frozen_baselines(data: Path, split: str, auto: pd.DataFrame) -> dict:
    """R@1/5/10 and headline of the frozen-feature baseline on every image-to-image pair (tasks 4, 7, 8): the
    cosine between the query image's and each candidate image's EfficientNet-Lite0 features (any text of the
    query is ignored), ranked over the pair's local pool."""
    from ..backbones.pretrained import load_vision

    out: dict = {}
    vision = None
    for pair in discover_pairs(data, split):
        if pair.task_id not in IMAGE_TO_IMAGE_TASKS:
            continue
        rows = auto[auto["pair"] == pair.name]
        pool = [c for c in read_pool(pair.pool_file) if c.image_path]
        if rows.empty or not pool or rows["query_img_path"].isna().any():
            continue
        log.info("frozen features: %s (%d queries, %d candidates)", pair.name, len(rows), len(pool))
        vision = vision if vision is not None else load_vision("efficientnet-lite0")
        feats = frozen_features([resolve_image(data, p) for p in
                                 [*rows["query_img_path"], *(c.image_path for c in pool)]], vision)
        ranks = E.frozen_gold_ranks(feats[: len(rows)], feats[len(rows) :], [c.did for c in pool],
                                    [set(p) for p in rows["positives"]])
        metrics = E.recalls(ranks) or {}
        out[pair.name] = {"n": int(len(rows)), **metrics, "headline": metrics.get(headline_metric(pair.name))}
    return out


def probe_images(data: Path, split: str, n: int = 6, seed: int = 0) -> list[Path]:
    """Up to n candidate images of the corpus that are not emoji, spread over the image folders, seeded."""
    by_folder: dict[str, list[str]] = {}
    for pair in discover_pairs(data, split):
        for c in read_pool(pair.pool_file):
            if c.image_path and "emoji" not in Path(c.image_path).parts:
                by_folder.setdefault(str(Path(c.image_path).parent), []).append(c.image_path)
    rng = np.random.default_rng(seed)
    picked: dict[str, list[str]] = {
        f: [paths[i] for i in rng.permutation(len(paths))] for f, paths in sorted(by_folder.items())
    }
    out: list[str] = []
    while len(out) < n and any(picked.values()):
        for paths in picked.values():
            if paths and len(out) < n:
                path = paths.pop(0)
                if path not in out:
                    out.append(path)
    return [resolve_image(data, p) for p in out]


def routing_probe(encoder: TraceEncoder, images: Sequence, edits: Sequence[str] = PROBE_EDITS,
                  captions: Sequence[str] = PROBE_CAPTIONS, cot_preview_tokens: int = 24) -> dict:
    """Reason rate of the model on M-BEIR instructions it never saw, per query group.

    (a) CIRR-style composed queries: CIRR's task-7 instruction, each image with each generic edit text;
    (b) MSCOCO caption -> image: its task-0 instruction with everyday captions;
    (c) MSCOCO image -> caption: its task-3 instruction with each image.
    Routing is decided at the first step; CoTs are cut at `cot_preview_tokens` (the route does not depend on
    it) and the first few are kept as examples."""
    groups = {
        "CIRR-style composed (image + edit)": [
            Query(text=e, image=img, instruction=CIRR_INSTRUCTION, qid=f"cirr-{i}-{j}")
            for i, img in enumerate(images) for j, e in enumerate(edits)],
        "MSCOCO caption -> image": [
            Query(text=c, instruction=COCO_T2I_INSTRUCTION, qid=f"coco-t2i-{j}") for j, c in enumerate(captions)],
        "MSCOCO image -> caption": [
            Query(image=img, instruction=COCO_I2T_INSTRUCTION, qid=f"coco-i2t-{i}") for i, img in enumerate(images)],
    }
    if isinstance(encoder, TraceEncoder):
        encoder = TraceEncoder(encoder.backbone, dataclasses.replace(encoder.config,
                                                                     max_cot_tokens=cot_preview_tokens))
    out: dict = {}
    for name, queries in groups.items():
        if not queries:
            continue
        res = encoder.encode_queries(queries, reasoning="auto")
        out[name] = {
            "instruction": queries[0].instruction,
            "n": len(res),
            "reason_rate": float(np.mean([r.route == "reason" for r in res])),
            "mean_p_emb": float(np.mean([r.p_emb for r in res])),
            "examples": [{"text": q.text, "image": Path(q.image).name if q.image is not None else None,
                          "route": r.route, "cot_preview": r.cot}
                         for q, r in list(zip(queries, res, strict=True))[:3]],
        }
    return out


def _digest(paths: Sequence[Path]) -> str:
    """Content hash of some files (what a cached result was computed from)."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes() if path.is_file() else b"")
    return h.hexdigest()[:16]


def _model_digest(model: str) -> str:
    """The weights fingerprint of a local checkpoint (the index caches use the same), else its name."""
    from ..backbones.identity import weights_fingerprint

    path = Path(model)
    return weights_fingerprint(path) if path.is_dir() else model


def _cached(path: Path, params: dict, reuse: bool, compute: Callable[[], dict]) -> dict:
    """compute(), or with reuse the result stored at `path` when it was computed with the same params."""
    if reuse and path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("params") == params:
            log.info("reusing %s", path)
            return stored["result"]
        log.info("%s was computed with other settings; computing again", path)
    result = compute()
    atomic_file(path, lambda p: Path(p).write_text(json.dumps({"params": params, "result": result}, indent=2)))
    return result


# ------------------------------------------------------------------------------------ main
def build_evidence(args: argparse.Namespace, data: Path, work: Path, runs: dict, labels: pd.DataFrame,
                   get_encoder: Callable[[], TraceEncoder]) -> dict:
    """Every number of the evidence sections, from the finished runs (and the model, for oracles and probe)."""
    auto = pd.read_parquet(_run_dir(work, AUTO) / "queries.parquet")
    never = pd.read_parquet(_run_dir(work, NEVER) / "queries.parquet")
    baseline_name = f"baseline: {args.baseline}" if args.baseline else None
    baseline = pd.read_parquet(_run_dir(work, baseline_name) / "queries.parquet") if baseline_name else None
    ev_table = E.evidence_table(auto, labels, never, baseline)
    modes = {m: c for m, c in E.MODES.items() if c in ev_table}
    heads = {"auto": AUTO, "never": NEVER, "always": ALWAYS, "baseline": baseline_name}
    ev: dict = {
        "recall_by_label": E.recalls_by_label(ev_table, modes),
        "reason_rates": E.reason_rates(ev_table),
        "cot_stats": E.cot_stats(ev_table),
        "auto_minus_never": E.auto_minus_never(ev_table, 5, "reason", args.bootstrap, args.seed),
        # the same gain at the other cut-offs: reasoning can sharpen the top (R@1) and still cost R@5 / R@10
        "auto_minus_never_at": {k: E.auto_minus_never(ev_table, k, "reason", args.bootstrap, args.seed)[E.POOLED]
                                for k in E.KS if (ev_table["label"] == "reason").any()},
        "headline_means": {m: runs[n]["average"]["headline"] for m, n in heads.items() if n in runs},
    }
    # What a cached oracle / probe / frozen-feature result depends on: the checkpoint, the corpus, the auto run.
    pair_files = [f for p in discover_pairs(data, args.split) for f in (p.query_file, p.pool_file)]
    data_params = {"data": str(data), "split": args.split, "data_digest": _digest(pair_files)}
    model_params = {**data_params, "model": str(args.model), "model_digest": _model_digest(str(args.model)),
                    "auto_run": _digest([_run_dir(work, AUTO) / "queries.parquet"])}
    if args.oracle:
        ev["oracle_params"] = {**model_params, "sentence": args.name_sentence, "seed": args.seed}
        ev["oracle"] = _cached(work / "oracle.json", ev["oracle_params"], args.reuse, lambda: run_oracles(
            get_encoder(), data, args.split, auto, ev_table, args.cache_dir, args.name_sentence, args.seed))
    frozen = _cached(work / "frozen.json", data_params, args.reuse,
                     lambda: frozen_baselines(data, args.split, auto))
    ev["frozen_features"] = frozen
    bridge = runs.get("baseline: minilm-bridge")
    image_pairs = {}
    for pair in discover_pairs(data, args.split):
        if pair.task_id not in IMAGE_TASKS or pair.name not in runs[AUTO]["pairs"]:
            continue
        metric = headline_metric(pair.name)
        model = runs[AUTO]["pairs"][pair.name][metric]
        ff = frozen.get(pair.name, {}).get("headline")
        br = bridge["pairs"][pair.name][metric] if bridge and pair.name in bridge["pairs"] else None
        base = max((b for b in (ff, br) if b is not None), default=None)
        image_pairs[pair.name] = {"model": model, "frozen_features": ff, "bridge": br, "baseline": base,
                                  "passed": None if base is None else bool(model >= base)}
    ev["image_pairs"] = image_pairs
    if args.probe:
        images = probe_images(data, args.split)
        ev["probe_images"] = [str(p.relative_to(data.resolve())) for p in images]
        ev["probe"] = _cached(work / "probe.json", {**model_params, "images": ev["probe_images"]}, args.reuse,
                              lambda: routing_probe(get_encoder(), images))
    rates, cots, gain, h = ev["reason_rates"], ev["cot_stats"][E.POOLED], ev["auto_minus_never"], ev["headline_means"]
    mixed = rates["pooled_mixed"] or {}
    ev["checklist"] = E.checklist(
        reason_rate_complex=mixed.get("reason_rate_reason"),
        reason_rate_simple=mixed.get("reason_rate_direct"),
        gain_r5=gain.get(E.POOLED, {}).get("diff"),
        gain_lo=gain.get(E.POOLED, {}).get("lo"),
        headline_auto=h.get("auto"), headline_never=h.get("never"), headline_baseline=h.get("baseline"),
        cot_correct=cots["correct"], cap_share=cots["capped_all_cots"],
        image_pairs={p: (r["model"], r["baseline"]) for p, r in image_pairs.items()},
    )
    return ev


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.minibeir.report", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", default="assets/minibeir")
    parser.add_argument("--split", default="test")
    parser.add_argument("--ablation", default=None, help="checkpoint trained with λ_gen = 0")
    parser.add_argument("--baseline", default=None, help="a dual-encoder baseline, e.g. minilm-bridge")
    parser.add_argument("--out", required=True)
    parser.add_argument("--work", default="runs/report", help="folder for the individual evaluation runs")
    parser.add_argument("--cache-dir", default=".cache/index")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse finished runs found in --work instead of evaluating them again")
    parser.add_argument("--oracle", action=argparse.BooleanOptionalAction, default=True,
                        help="embed complex queries with given CoTs (teacher, name only, wrong name, blank, other)")
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                        help="routing probe with M-BEIR's CIRR / MSCOCO instructions on non-emoji images")
    parser.add_argument("--name-sentence", default=E.NAME_SENTENCE,
                        help="the name-only oracle CoT; {name} becomes the target's canonical name")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the auto - never gain")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap and the oracle derangements")
    args = parser.parse_args(argv)
    if "{name}" not in args.name_sentence:
        parser.error("--name-sentence needs a {name} slot")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    labels = query_labels(data, args.split)

    # "always reason" is not a separate run: the auto run's counterfactual pass encodes every query with
    # reasoning forced on, and evaluate() reports it as a run of its own.
    plan = [(AUTO, args.model, "auto"), (NEVER, args.model, "never")]
    if args.ablation:
        # auto shows whether routing is learned without CoT supervision; never isolates its embedding quality
        plan.append(("λ_gen = 0 ablation (auto)", args.ablation, "auto"))
        plan.append(("λ_gen = 0 ablation (never)", args.ablation, "never"))
    if args.baseline:
        plan.append((f"baseline: {args.baseline}", args.baseline, "never"))
    runs, routing, encoders = {}, {}, {}

    def encoder_for(model: str):
        nonlocal encoders
        if model not in encoders:
            # one model in memory at a time; batches of 32 make CPU decoding ~2x faster per query than 8
            encoders = {model: load_model(model, config=EncoderConfig(query_batch_size=32))}
        return encoders[model]

    for name, model, mode in plan:
        log.info("== %s", name)
        run_dir = _run_dir(work, name)
        if args.reuse and (run_dir / "queries.parquet").is_file() and (run_dir / "results.json").is_file():
            log.info("reusing the finished run in %s", run_dir)
            runs[name] = json.loads((run_dir / "results.json").read_text())
            _add_routing(name, runs, routing, pd.read_parquet(run_dir / "queries.parquet"), labels)
            continue
        # The default run also encodes every query with reasoning forced on (gold rank with and without CoT):
        # the analysis tabs read that table, shipped beside the model as queries.parquet.
        cfg = EvalConfig(reasoning=mode, cache_dir=args.cache_dir, run_id=name.split()[0],
                         counterfactual=name == AUTO)
        runs[name] = evaluate(encoder_for(model), data, args.split, "all", run_dir, cfg)
        _add_routing(name, runs, routing, pd.read_parquet(run_dir / "queries.parquet"), labels)

    baseline_name = f"baseline: {args.baseline}" if args.baseline else None
    evidence = build_evidence(args, data, work, runs, labels, lambda: encoder_for(args.model))
    results = {"split": args.split, "data": str(data), "runs": runs, "routing_vs_labels": routing,
               "evidence": evidence}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    # The analysis tabs read the auto run's per-query table and its query embeddings (the embedding map).
    shutil.copyfile(_run_dir(work, AUTO) / "queries.parquet", out / "queries.parquet")
    with atomic_directory(out / "embeddings") as tmp:
        for f in sorted((_run_dir(work, AUTO) / "embeddings").glob("*.npz")):
            shutil.copyfile(f, tmp / f.name)
    # the command that reproduces every run from scratch (--reuse only skips runs already finished)
    command = " ".join(a for a in (argv if argv is not None else sys.argv[1:]) if a != "--reuse")
    md = [f"# TRACE-mini results on the held-out {args.split} split of {data}", "",
          f"Produced by `python -m trace_core.minibeir.report {command}`.", "",
          "Headline metric per pair (R@5; R@10 for fashion datasets), in %:", "", runs_table(runs), "",
          "Routing against the difficulty labels (share of queries routed to reasoning):", "",
          "| run | agreement | reason rate on 'direct'-labelled | reason rate on 'reason'-labelled |",
          "|---|---|---|---|"]
    for name, r in routing.items():
        md.append(f"| {name} | {r['accuracy']:.2f} | {r.get('reason_rate_when_direct', 0):.2f} | "
                  f"{r.get('reason_rate_when_reason', 0):.2f} |")
    md += [""] + evidence_markdown(evidence, baseline_name)
    md += ["", "## Per-pair detail", ""] + [run_detail(n, r) + "\n" for n, r in runs.items()]
    (out / "RESULTS.md").write_text("\n".join(md) + "\n")
    print("\n".join(md[:8 + len(runs[AUTO]["pairs"]) + 3]))
    checks = evidence["checklist"]
    print("done when: " + ", ".join(f"{c['criterion']}: {E.mark(c['passed'])}" for c in checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
