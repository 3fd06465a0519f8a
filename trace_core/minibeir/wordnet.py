"""WordNet 3.0 noun glosses (Debian `wordnet-base`, WordNet licence) for the definition questions of TRACE-mini.

A definition question describes its target without naming it ("elongated crescent-shaped yellow fruit with
soft sweet flesh"); the reasoning step resolves the description to a name (banana) that the candidates carry.
Only the database files are read (`index.noun`, `data.noun`); nothing is copied into the corpus but the gloss
text of the senses used, which the WordNet licence allows with its notice (see assets/minibeir/SOURCES.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

from .sources import SourceMissingError

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")

# Lexicographer files of WordNet nouns (lexnames), by number.
LEXFILES = {4: "act", 6: "artifact", 8: "body", 11: "event", 13: "food", 15: "location", 17: "object",
            18: "person", 19: "phenomenon", 20: "plant", 27: "substance", 5: "animal"}


@dataclass(frozen=True)
class Sense:
    lemma: str  # "hot dog"
    lexfile: str  # "food"
    gloss: str  # definition, examples dropped: "a frankfurter served hot on a bun"
    hypernym: str | None  # first word of the first hypernym synset: "sandwich"


class WordNet:
    """Noun senses by lemma, in WordNet's frequency order (the first sense is the most common)."""

    def __init__(self, root: Path = DEFAULT_WORDNET_DIR) -> None:
        self.root = root
        index, data = root / "index.noun", root / "data.noun"
        if not index.is_file() or not data.is_file():
            raise SourceMissingError("wordnet", root, "no index.noun / data.noun")
        self._offsets: dict[str, list[int]] = {}
        self._tagged: set[str] = set()  # lemmas with a sense tagged in the SemCor corpus (tagsense_cnt > 0)
        for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(" "):  # licence header
                continue
            parts = line.split()
            n_senses = int(parts[2])
            self._offsets[parts[0]] = [int(x) for x in parts[-n_senses:]]
            if int(parts[-n_senses - 1]) > 0:  # lemma pos synset_cnt p_cnt [ptr]... sense_cnt tagsense_cnt offsets
                self._tagged.add(parts[0])
        self._data = data.read_bytes()  # records are addressed by byte offset

    def _record(self, offset: int) -> tuple[int, list[str], list[int], str]:
        end = self._data.index(b"\n", offset)
        line = self._data[offset:end].decode("utf-8", errors="replace")
        head, _, gloss = line.partition(" | ")
        parts = head.split()
        lexfile = int(parts[1])
        n_words = int(parts[3], 16)
        words = [parts[4 + 2 * i] for i in range(n_words)]
        k = 4 + 2 * n_words
        n_ptr = int(parts[k])
        hypernyms = [int(parts[k + 1 + 4 * i + 1]) for i in range(n_ptr) if parts[k + 1 + 4 * i] == "@"]
        return lexfile, words, hypernyms, gloss.strip()

    def records(self) -> Iterator[tuple[str, list[str], str]]:
        """Every noun synset in file order: (lexfile name, its words with spaces, the first clause of its gloss,
        examples dropped). For scanning glosses (`countries.country_facts`)."""
        for raw in self._data.splitlines():
            if raw.startswith(b" "):  # licence header
                continue
            line = raw.decode("utf-8", errors="replace")
            head, _, gloss = line.partition(" | ")
            parts = head.split()
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
            yield LEXFILES.get(int(parts[1]), parts[1]), words, gloss.split(";")[0].strip().strip('"').strip()

    def common_lemmas(self, min_count: int = 2) -> set[str]:
        """Lemmas ("hot_dog") whose first noun sense is tagged at least `min_count` times in the SemCor corpus
        (WordNet's `cntlist.rev`): the common nouns. Without that file, every lemma with a tagged sense."""
        counts = self.root / "cntlist.rev"
        if not counts.is_file():
            return set(self._tagged)
        out = set()
        for line in counts.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()  # sense_key sense_number tag_cnt; a noun's key is lemma%1:...
            if len(parts) == 3 and parts[1] == "1" and int(parts[2]) >= min_count:
                lemma, _, rest = parts[0].partition("%")
                if rest.startswith("1:") and lemma in self._offsets:
                    out.add(lemma)
        return out

    def senses(self, lemma: str, lexfiles: Collection[str] | None = None) -> list[Sense]:
        """The noun senses of ``lemma`` (spaces allowed), optionally only those in the given lexfiles."""
        out = []
        for off in self._offsets.get(lemma.lower().replace(" ", "_"), []):
            lexfile, _, hypernyms, gloss = self._record(off)
            name = LEXFILES.get(lexfile)
            if lexfiles is not None and name not in lexfiles:
                continue
            hyper = self._record(hypernyms[0])[1][0].replace("_", " ") if hypernyms else None
            definition = gloss.split(";")[0].strip().strip('"').strip()
            out.append(Sense(lemma.lower(), name or str(lexfile), definition, hyper))
        return out
