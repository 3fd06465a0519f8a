"""The gloss drill of TRACE-mini training (trace_core/glosses.py): which nouns it asks about, and that its rows
train the CoT loss alone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.minibeir_fixture import (
    LEX_ARTIFACT,
    LEX_FOOD,
    LEX_PERSON,
    _queries,
    build_synthetic,
    make_wordnet,
)
from tests.test_train import _mini
from trace_core import train
from trace_core.glosses import GLOSS_PAIR, gloss_examples
from trace_core.minibeir.wordnet import WordNet
from trace_core.prompts import TRACE_STYLE
from trace_core.train import TrainConfig, Trainer, load_examples

INSTRUCTIONS = ("Find the emoji this describes.", "Which emoji fits the description?")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("glosses"))


def _held_out_gloss(corpus: Path) -> str:
    """The gloss quoted by some test definition question of the built corpus."""
    for q in _queries(corpus, "emoji_task1", "test"):
        m = re.match(r"(?:Which emoji shows |Find the emoji for this: |I need the emoji that depicts |"
                     r"The emoji of a kind of [^:]+: )(.+?)[.?]$", q["query_txt"] or "")
        if m:
            return m.group(1)
    raise AssertionError("no test definition question")


def test_drill_keeps_to_common_nouns_that_no_candidate_names(corpus: Path, tmp_path: Path) -> None:
    held = _held_out_gloss(corpus)
    extra = {
        "anvil": [(LEX_ARTIFACT, "a heavy iron block on which metal is hammered into shape", None)],
        "ladle": [(LEX_ARTIFACT, "a spoon-shaped vessel with a long handle", None)],
        "porridge": [(LEX_FOOD, "soft food made by boiling oatmeal in milk or water", None)],
        "kettle": [(LEX_ARTIFACT, "a metal pot for stewing or boiling", None)],  # rare: tagged once
        "plumber": [(LEX_PERSON, "a craftsman who installs and repairs pipes", None)],  # a person: not drilled
        "hammock": [(LEX_ARTIFACT, "a hammock of canvas or rope hung between two supports", None)],  # names itself
        "apple tree": [(LEX_ARTIFACT, "a tree that bears a round fruit", None)],  # a candidate's word
        "decoy": [(LEX_ARTIFACT, held, None)],  # the gloss of a held-out question
    }
    counts = {lemma: 5 for lemma in extra} | {"kettle": 1}
    wn_dir = make_wordnet(tmp_path / "wordnet", extra, counts)
    assert WordNet(wn_dir).common_lemmas() == {k.replace(" ", "_") for k in extra} - {"kettle"}
    drill = gloss_examples(wn_dir, corpus, INSTRUCTIONS, 100, seed=0)
    assert sorted(ex.target_name for ex in drill) == ["anvil", "ladle", "porridge"]
    for ex in drill:
        word = ex.target_name
        assert ex.pair == GLOSS_PAIR and ex.query.instruction == INSTRUCTIONS[0] and ex.instructions == INSTRUCTIONS
        assert word not in ex.query.text.lower()  # the question never names its answer
        assert ex.cot.endswith(f"Target: the {word} emoji.") and f" {word}." in ex.cot.split("Target:")[0]
    assert len(gloss_examples(wn_dir, corpus, INSTRUCTIONS, 2, seed=0)) == 2
    with pytest.raises(ValueError, match="instructions"):
        gloss_examples(wn_dir, corpus, (), 10)


def test_gloss_rows_train_the_cot_loss_alone(corpus: Path, lm_dir, tmp_path: Path) -> None:
    extra = {"anvil": [(LEX_ARTIFACT, "a heavy iron block on which metal is hammered into shape", None)],
             "ladle": [(LEX_ARTIFACT, "a spoon-shaped vessel with a long handle", None)]}
    wn_dir = make_wordnet(tmp_path / "wordnet", extra, {"anvil": 3, "ladle": 3})
    examples = load_examples(corpus)
    drill = gloss_examples(wn_dir, corpus, examples["emoji_task1"][0].instructions, 10)
    examples[GLOSS_PAIR] = drill
    trainer = Trainer(_mini(lm_dir), TRACE_STYLE, examples, tmp_path / "run",
                      TrainConfig(random_instruction=False, self_cot_from=1.0))
    calls = []
    fwd = trainer.model.forward_train

    def spy(prompts, targets=None, features=None):
        calls.append(targets is not None)
        return fwd(prompts, targets, features)

    trainer.model.forward_train = spy
    with torch.no_grad():
        out = trainer.losses(drill)
    assert calls == [True]  # the queries only: no candidate is encoded
    assert float(out["ce"]) > 0 and float(out["nce"]) == 0.0 and float(out["nce_direct"]) == 0.0
    torch.testing.assert_close(out["loss"], out["ce"])
    calls.clear()
    with torch.no_grad():
        definitions = trainer.losses(examples["emoji_task1"][:4])
    assert calls.count(False) == 1 and float(definitions["nce"]) > 0  # the definition pair keeps InfoNCE


def test_cli_needs_the_definition_pair(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = train.main(["--data", str(corpus), "--out", str(tmp_path / "run"), "--glosses", "5",
                     "--gloss-pair", "no_such_pair", "--wordnet-dir", str(tmp_path / "missing")])
    assert rc == 2
    assert "error:" in capsys.readouterr().err
