"""M-BEIR's query instructions: four per task, keyed by (query modality, candidate modality, dataset id).

``instructions/query_instructions.tsv`` of an M-BEIR folder is read as UniIR publishes it; a folder without one
uses the copy shipped with the package (`instructions_for`), the one rule for every reader (training, the
evaluation, the app, bench).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Iterator
from importlib import resources
from pathlib import Path
from typing import NamedTuple

from .mbeir import MODALITIES, MBEIRQuery, PathLike
from .mbeir import _fail as fail

logger = logging.getLogger(__name__)
TABLE = Path("instructions") / "query_instructions.tsv"  # where an M-BEIR folder keeps its table


class InstructionRow(NamedTuple):
    query_modality: str  # "text", "image" or "image,text"
    cand_modality: str  # modality of the candidates this instruction asks for
    dataset: str  # dataset name as printed in the table, e.g. "MSCOCO"
    dataset_id: int  # M-BEIR dataset id (the qid prefix)
    prompts: tuple[str, ...]  # the instructions, prompt_1 first


class Instructions:
    """Lookup of M-BEIR's query instructions by (query modality, candidate modality, dataset id)."""

    def __init__(self, rows: Iterable[InstructionRow], source: str = "<memory>") -> None:
        self._rows = tuple(rows)
        self._source = source  # where the table came from, for error messages
        self._by_key = {(r.query_modality, r.cand_modality, r.dataset_id): r for r in self._rows}

    def find(self, query_modality: str, cand_modality: str, dataset_id: int) -> InstructionRow | None:
        """The row of one task (dataset title and instructions), None if the table has none."""
        return self._by_key.get((query_modality, cand_modality, int(dataset_id)))

    def get(self, query_modality: str, cand_modality: str, dataset_id: int) -> tuple[str, ...]:
        """The instructions (prompt_1..prompt_4) of one task; KeyError listing the known tasks if absent."""
        row = self.find(query_modality, cand_modality, dataset_id)
        if row is None:
            known = "; ".join(
                f"{r.query_modality} -> {r.cand_modality} {r.dataset} ({r.dataset_id})" for r in self._rows
            )
            raise KeyError(
                f"no instruction for query modality {query_modality!r}, "
                f"candidate modality {cand_modality!r}, "
                f"dataset id {dataset_id} in {self._source}; known: {known}"
            )
        return row.prompts

    def for_query(self, query: MBEIRQuery, cand_modality: str, index: int = 0) -> str:
        """Instruction number ``index`` (0-based) for this query; UniIR samples one at random, we pick it."""
        prompts = self.get(query.modality, cand_modality, query.dataset_id)
        if not 0 <= index < len(prompts):
            raise IndexError(
                f"instruction index {index} out of range: this task has {len(prompts)} instructions"
            )
        return prompts[index]

    def rows(self) -> list[InstructionRow]:
        """All rows in table order (for the app's task selector)."""
        return list(self._rows)

    def __iter__(self) -> Iterator[InstructionRow]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)


def read_instructions(path: PathLike) -> Instructions:
    """Parse ``query_instructions.tsv``: a header row, then query modality, candidate modality, dataset,
    dataset id and the instructions, tab separated. Columns are read by position, not header name."""
    rows: list[InstructionRow] = []
    seen: dict[tuple[str, str, int], int] = {}
    with open(path, encoding="utf-8") as f:
        for line, raw in enumerate(f, start=1):
            if line == 1 or not raw.strip():
                continue  # header row
            cells = [c.strip() for c in raw.rstrip("\r\n").split("\t")]
            if len(cells) < 5:
                raise fail(path, line, f"expected at least 5 tab-separated columns, got {len(cells)}")
            qmod, cmod, dataset, dsid = cells[:4]
            for key, mod in (("query modality", qmod), ("candidate modality", cmod)):
                if mod not in MODALITIES:
                    raise fail(path, line, f"{key} must be one of {', '.join(MODALITIES)}; got {mod!r}")
            try:
                dataset_id = int(dsid)
            except ValueError:
                raise fail(path, line, f"dataset id must be an integer, got {dsid!r}") from None
            prompts = tuple(c for c in cells[4:] if c)
            if not prompts:
                raise fail(path, line, "no instructions on this row")
            key3 = (qmod, cmod, dataset_id)
            if key3 in seen:
                raise fail(path, line, f"duplicate task {qmod} -> {cmod} dataset id {dataset_id} "
                                        f"(first on line {seen[key3]})")
            seen[key3] = line
            rows.append(InstructionRow(qmod, cmod, dataset, dataset_id, prompts))
    return Instructions(rows, source=os.fspath(path))


@functools.lru_cache(maxsize=1)
def load_default_instructions() -> Instructions:
    """The instruction table shipped with the package (a copy of M-BEIR's ``query_instructions.tsv``)."""
    ref = resources.files("trace_core") / "data" / "query_instructions.tsv"
    with resources.as_file(ref) as path:
        return read_instructions(path)


def instructions_for(root: PathLike) -> Instructions:
    """The instruction table of an M-BEIR folder; the shipped copy when the folder has none (with a warning)."""
    path = Path(root) / TABLE
    if path.is_file():
        return read_instructions(path)
    logger.warning("no %s; using the instruction table shipped with trace_core", path)
    return load_default_instructions()
