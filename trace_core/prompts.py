"""Prompt styles: special tokens, templates and pooled position of each model family.

TRACE, LamRA, UME-R1 and GME are all Qwen-VL models that read an instruction and a query and are pooled at
one position; they differ only in the embedding token, the wording of the query and candidate prompts, whether
the model may reason, and which position is pooled. A `PromptStyle` holds exactly those differences, so the
encoder runs every family with one code path. A checkpoint may carry its own style in `trace_style.json`.

Templates are plain strings with the slots {instruction}, {text}, {image} and {modality}; {image} becomes the
backbone's image placeholder (one per image) or "" for text-only inputs. Queries end at the start of the
assistant turn, so the first decoded token decides the route. Candidate prompts end the same way; the pooled
pre-token is then the last prompt position, which equals feeding `<|emb|>` and pooling the position before it
(causal attention: later tokens never change earlier hidden states).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from .records import Candidate, Query

Pooling = Literal["pre_token", "emb_token"]


@dataclass(frozen=True)
class PromptStyle:
    name: str  # short id: "trace", "lamra", ...
    emb_token: str  # the special token that closes the query: its predecessor (or itself) is pooled
    query_template: str  # slots {instruction} {text} {image}
    candidate_template: str  # slots {text} {image} {modality}
    can_reason: bool = True  # False: the model never writes a CoT (LamRA, GME); the route is always direct
    pooling: Pooling = "pre_token"  # "pre_token": hidden state before emb_token; "emb_token": of emb_token itself
    max_cot_tokens: int = 256  # cap on generated CoT tokens before <emb> is forced

    def hash(self) -> str:
        """Stable hash of everything that changes the embeddings; index manifests record it."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def candidate_hash(self) -> str:
        """Hash of what changes candidate embeddings only (the query template does not)."""
        payload = json.dumps(
            {"emb": self.emb_token, "tpl": self.candidate_template, "pool": self.pooling}, sort_keys=True
        ).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict) -> PromptStyle:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown prompt style fields: {sorted(unknown)}")
        return cls(**data)


def render_query(style: PromptStyle, query: Query, image_placeholder: str) -> str:
    """The query prompt as text, with one image placeholder when the query has an image."""
    query.validate()
    return style.query_template.format(
        instruction=(query.instruction or "").strip(),
        text=(query.text or "").strip(),
        image=image_placeholder if query.image is not None else "",
    )


def query_prefix(style: PromptStyle, query: Query) -> str:
    """The start of `render_query`'s prompt that depends on the instruction alone: up to where the query's text
    or image goes. Every query of one instruction (and modality) shares it."""
    marker = "\x00"
    text = style.query_template.format(instruction=(query.instruction or "").strip(), text=marker,
                                       image=marker if query.image is not None else "")
    return text.split(marker, 1)[0]


def render_candidate(style: PromptStyle, candidate: Candidate, image_placeholder: str) -> str:
    modality = {"image,text": "image and sentence", "image": "image", "text": "sentence"}[candidate.modality]
    return style.candidate_template.format(
        text=(candidate.text or "").strip(),
        image=image_placeholder if candidate.image is not None else "",
        modality=modality,
    )


# TRACE (arXiv 2603.02929): no system prompt, instruction then query; the candidate prompt forces <|emb|>.
TRACE_STYLE = PromptStyle(
    name="trace",
    emb_token="<|emb|>",
    query_template="<|im_start|>user\n{image}{instruction}\n{text}<|im_end|>\n<|im_start|>assistant\n",
    candidate_template=(
        "<|im_start|>user\n{image}{text}\nSummarize the above {modality} in one word. "
        "Your output must only be <|emb|>.<|im_end|>\n<|im_start|>assistant\n"
    ),
)

# LamRA-Ret: Qwen chat template with its system prompt; "<emb>" follows the assistant prefix; no reasoning.
LAMRA_STYLE = PromptStyle(
    name="lamra",
    emb_token="<emb>",
    query_template=(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{instruction} "
        "{text}\nSummarize above image and sentence in one word: <|im_end|>\n<|im_start|>assistant\n"
    ),
    candidate_template=(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{text}\n"
        "Summarize above {modality} in one word: <|im_end|>\n<|im_start|>assistant\n"
    ),
    can_reason=False,
)

# UME-R1: reasons inside <think>..</think>, answers, then emits <gen_emb>, whose own hidden state is pooled.
UME_R1_STYLE = PromptStyle(
    name="ume-r1",
    emb_token="<gen_emb>",
    query_template=(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{instruction}\n"
        "{text}\nRepresent the above input for retrieval.<|im_end|>\n<|im_start|>assistant\n"
    ),
    candidate_template=(
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n{image}{text}\n"
        "Represent the above {modality} for retrieval.<|im_end|>\n<|im_start|>assistant\n"
    ),
    pooling="emb_token",
    max_cot_tokens=512,
)

STYLES: dict[str, PromptStyle] = {s.name: s for s in (TRACE_STYLE, LAMRA_STYLE, UME_R1_STYLE)}


def style_for_vocab(tokens: set[str]) -> PromptStyle:
    """Guess the family from the special tokens a checkpoint's tokenizer already has."""
    for style in (TRACE_STYLE, UME_R1_STYLE, LAMRA_STYLE):
        if style.emb_token in tokens:
            return style
    return TRACE_STYLE
