"""Training examples: the queries of an M-BEIR train split with their CoT labels, one per positive.

Both training stages read them: the joint TRACE objective (`train.py`) directly, the naming stage
(`naming.py`) through the names that the examples' candidates give their images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .instructions import instructions_for
from .mbeir import MBEIRCandidate, discover_pairs, load_pair, read_cot_labels, read_name_labels, resolve_image
from .records import Candidate, Query


@dataclass(frozen=True)
class Example:
    pair: str  # "<dataset>_task<k>"
    query: Query  # text / image path / instruction filled in
    cot: str | None  # teacher CoT (reason route) or None (direct route)
    positive: Candidate  # one positive candidate
    all_positives: frozenset[str]  # every positive did of the query: none of them is a negative for it
    instructions: tuple[str, ...]  # the four instructions of the example's task, for sampling
    negatives: tuple[Candidate, ...] = ()  # the query's hard negatives (neg_cand_list) found in the pool
    target_name: str | None = None  # what a correct CoT names (the corpus's `target_name`), when known
    ref_name: str | None = None  # a composed edit's reference, as a correct CoT names it


def load_examples(root: Path, split: str = "train", pairs: str = "all") -> dict[str, list[Example]]:
    """Training examples grouped by pair: each query with its CoT label and each of its positives."""
    root = Path(root)
    instructions = instructions_for(root)
    by_pair: dict[str, list[Example]] = {}

    def candidate(c: MBEIRCandidate) -> Candidate:
        return Candidate(text=c.text, image=str(resolve_image(root, c.image_path)) if c.image_path else None,
                         did=c.did)

    for pair in discover_pairs(root, split, pairs):
        queries, pool, positives = load_pair(pair)
        labels = read_cot_labels(pair.query_file)
        names = read_name_labels(pair.query_file)
        pool_by_id: dict[str, MBEIRCandidate] = {c.did: c for c in pool}
        examples = []
        for q in queries:
            route, cot = labels.get(q.qid, ("direct", None))
            # Hard negatives missing from the pool are skipped; one that is also a positive is no negative.
            negatives = tuple(candidate(pool_by_id[d]) for d in dict.fromkeys(q.negatives)
                              if d in pool_by_id and d not in positives[q.qid])
            for did in sorted(positives[q.qid]):
                c = pool_by_id.get(did)
                if c is None:
                    continue
                prompts = instructions.get(q.modality, c.modality, q.dataset_id)
                query = Query(
                    text=q.text,
                    image=str(resolve_image(root, q.image_path)) if q.image_path else None,
                    instruction=prompts[0],
                    qid=q.qid,
                )
                examples.append(Example(pair.name, query, cot, candidate(c), frozenset(positives[q.qid]),
                                        tuple(prompts), negatives, *names.get(q.qid, (None, None))))
        if examples:
            by_pair[pair.name] = examples
    if not by_pair:
        raise ValueError(f"no training examples under {root / 'query' / split}")
    return by_pair
