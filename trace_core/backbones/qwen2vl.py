"""Qwen2-VL / Qwen2.5-VL checkpoints through transformers.

Inputs are built by hand rather than through `Qwen2VLProcessor` (whose construction needs torchvision): the
tokenizer tokenises the prompt after each `<|image_pad|>` is expanded to the number of merged patches of its
image, the image processor gives `pixel_values` [P, C*T*p*p] and `image_grid_thw` [I, 3], and
`mm_token_type_ids` marks image-token positions (transformers 5 requires it for M-RoPE).

Positions are computed here, not inside the model: M-RoPE positions of the left-padded prompt come from the
model's `get_rope_index` (padding-aware), and each decoded token takes the next position of its own row. The
model then never relies on its internal `rope_deltas` state, so rows can be dropped from the batch between
steps (`select`) without the positions going wrong.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_directory
from ..prompts import PromptStyle, style_for_vocab
from .base import Backbone, RenderedPrompt, StepOutput, TrainForward, pool_and_score
from .identity import MODEL_FILES, weights_fingerprint  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")
IMAGE_PLACEHOLDER = "<|vision_start|><|image_pad|><|vision_end|>"
STYLE_FILE = "trace_style.json"


@dataclass
class QwenState:
    cache: object  # transformers Cache holding keys/values [B, heads, S, d] per layer
    attention_mask: torch.Tensor  # [B, S] 1 for real tokens (prompts are left-padded)
    next_pos: torch.Tensor  # [B] M-RoPE position of the next token of each row


class QwenVLBackbone(Backbone):
    def __init__(self, model, tokenizer, image_processor, style: PromptStyle, model_id: str, revision: str):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.style = style
        self.model_id = model_id
        self.revision = revision
        self.image_placeholder = IMAGE_PLACEHOLDER
        self.device = next(model.parameters()).device
        self.image_token_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.emb_token_id = tokenizer.convert_tokens_to_ids(style.emb_token)
        stops = {tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")}
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        self.stop_token_ids = frozenset(t for t in stops if t is not None and t != tokenizer.unk_token_id)
        self.hidden_size = model.config.text_config.hidden_size
        self.merge = model.config.vision_config.spatial_merge_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        style: PromptStyle | None = None,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
    ) -> QwenVLBackbone:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        if config.model_type not in QWEN_VL_TYPES:
            raise ValueError(
                f"{name_or_path} is a {config.model_type!r} model; this backbone loads {', '.join(QWEN_VL_TYPES)}"
            )
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 on GPU as the checkpoints are trained; fp32 on CPU where bf16 matmuls are slow and lossy.
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        tokenizer.padding_side = "left"
        image_processor = AutoImageProcessor.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        model = AutoModelForImageTextToText.from_pretrained(
            name_or_path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(device)

        local = Path(name_or_path)
        if style is None:
            style_file = local / STYLE_FILE
            if style_file.is_file():
                style = PromptStyle.from_dict(json.loads(style_file.read_text()))
            else:
                style = style_for_vocab(set(tokenizer.get_vocab()))
        if style.emb_token not in tokenizer.get_vocab():
            # A checkpoint that was never trained with the token gets a fresh, untrained row: the route is then
            # meaningless until fine-tuning, but the pipeline runs.
            log.warning("%s lacks %s; adding it (untrained)", name_or_path, style.emb_token)
            tokenizer.add_special_tokens({"additional_special_tokens": [style.emb_token]})
            if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
                model.resize_token_embeddings(len(tokenizer))
        revision = weights_fingerprint(local) if local.is_dir() else getattr(config, "_commit_hash", "") or ""
        # The model's name, not the path it was reached by: the revision (a weights fingerprint) tells
        # checkpoints apart, and caches keyed on the name stay valid however the path is spelled.
        model_id = local.resolve().name if local.is_dir() else str(name_or_path)
        return cls(model, tokenizer, image_processor, style, model_id, revision)

    # ---------------------------------------------------------------- inputs
    def _expand_images(self, prompt: RenderedPrompt, grids: list[torch.Tensor]) -> str:
        parts = prompt.text.split("<|image_pad|>")
        if len(parts) - 1 != len(prompt.images):
            raise ValueError(f"prompt has {len(parts) - 1} image placeholders but {len(prompt.images)} images")
        out = parts[0]
        for grid, rest in zip(grids, parts[1:], strict=True):
            out += "<|image_pad|>" * int(grid.prod().item() // self.merge**2) + rest
        return out

    def _inputs(self, prompts: list[RenderedPrompt], suffixes: list[list[int]] | None = None) -> dict:
        """Left-padded model inputs; `suffixes` are token ids appended after each prompt (teacher forcing)."""
        images = [img for p in prompts for img in p.images]
        vision = {}
        grids: list[torch.Tensor] = []
        if images:
            vision = dict(self.image_processor(images=images, return_tensors="pt"))
            grids = list(vision["image_grid_thw"])
        rows, i = [], 0
        for k, p in enumerate(prompts):
            text = self._expand_images(p, grids[i : i + len(p.images)])
            i += len(p.images)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append(ids + (list(suffixes[k]) if suffixes else []))
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for k, r in enumerate(rows):
            input_ids[k, length - len(r) :] = torch.tensor(r, dtype=torch.long)
            attention_mask[k, length - len(r) :] = 1
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": (input_ids == self.image_token_id).int(),
        }
        if images:
            inputs["pixel_values"] = vision["pixel_values"].to(self.model.dtype)
            inputs["image_grid_thw"] = vision["image_grid_thw"]
        return {k: v.to(self.device) for k, v in inputs.items()}

    def tokenize(self, prompt: RenderedPrompt) -> list[str]:
        ids = self._inputs([prompt])["input_ids"][0].tolist()
        return self.tokenizer.convert_ids_to_tokens(ids)

    # ---------------------------------------------------------------- forward
    def _last(self, hidden: torch.Tensor, with_logits: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        last = hidden[:, -1]  # [B, H]; left padding puts every row's last token in the last column
        # lm_head only on the last position: the full [B, S, V] logits would cost S times more.
        logits = self.model.lm_head(last).float() if with_logits else None
        return last.float(), logits

    @torch.inference_mode()
    def prefill(self, prompts: list[RenderedPrompt], with_logits: bool = True) -> StepOutput:
        inputs = self._inputs(prompts)
        core = self.model.model
        position_ids, _ = core.get_rope_index(
            inputs["input_ids"],
            inputs["mm_token_type_ids"],
            image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs["attention_mask"],
        )  # [3, B, S]
        out = core(**inputs, position_ids=position_ids, use_cache=with_logits)
        hidden, logits = self._last(out.last_hidden_state, with_logits)
        next_pos = position_ids.amax(dim=(0, 2)) + 1  # [B]
        state = QwenState(out.cache, inputs["attention_mask"], next_pos) if with_logits else None
        return StepOutput(hidden, logits, state)

    @torch.inference_mode()
    def step(self, state: QwenState, tokens: torch.Tensor) -> StepOutput:
        b = tokens.shape[0]
        mask = torch.cat([state.attention_mask, state.attention_mask.new_ones(b, 1)], dim=1)
        pos = state.next_pos.view(1, b, 1).expand(3, b, 1)
        out = self.model.model(
            input_ids=tokens.view(b, 1).to(self.device),
            attention_mask=mask,
            position_ids=pos,
            cache=state.cache,
            use_cache=True,
        )
        hidden, logits = self._last(out.last_hidden_state, True)
        return StepOutput(hidden, logits, QwenState(out.cache, mask, state.next_pos + 1))

    def select(self, state: QwenState, rows: torch.Tensor) -> QwenState:
        rows = rows.to(self.device)
        state.cache.batch_select_indices(rows)
        return QwenState(state.cache, state.attention_mask[rows], state.next_pos[rows])

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(int(token_id))


class QwenVLTrainable(torch.nn.Module):
    """A Qwen2-VL-family checkpoint prepared for TRACE training: LoRA on the language model, the vision tower
    frozen (as in the paper), and only the `<|emb|>` rows of the input and output embeddings trainable.

    `forward_train` has the same contract as TRACE-mini's, so `trace_core.train.Trainer` runs either.
    """

    image_placeholder = IMAGE_PLACEHOLDER

    def __init__(self, backbone: QwenVLBackbone, lora_r: int = 16, lora_alpha: int = 32,
                 lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")):
        super().__init__()
        from peft import LoraConfig, inject_adapter_in_model

        self.backbone = backbone
        self.model = backbone.model
        self.tokenizer = backbone.tokenizer
        self.emb_token_id = backbone.emb_token_id
        self.style = backbone.style
        self.model.requires_grad_(False)
        lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, target_modules=list(lora_targets), lora_dropout=0.0)
        inject_adapter_in_model(lora, self.model.model.language_model)
        # The new token's rows learn; a gradient mask keeps every other row of the (large) matrices fixed.
        keep = torch.zeros(self.model.get_input_embeddings().weight.shape[0], 1)
        keep[self.emb_token_id] = 1
        for weight in {id(w): w for w in (self.model.get_input_embeddings().weight,
                                          self.model.lm_head.weight)}.values():
            weight.requires_grad_(True)
            weight.register_hook(lambda g, keep=keep: g * keep.to(g.device, g.dtype))

    @classmethod
    def from_pretrained(cls, path: str, **lora) -> QwenVLTrainable:
        return cls(QwenVLBackbone.from_pretrained(path, dtype=torch.float32), **lora)

    def forward_train(self, prompts: list[RenderedPrompt], targets: list[list[int]] | None = None,
                      features=None) -> TrainForward:
        """Pre-token and prompt-end hidden states [B, H], summed CE over the targets, their count (see TraceMini)."""
        suffixes = [t[:-1] for t in targets] if targets is not None else None
        inputs = self.backbone._inputs(prompts, suffixes)
        core = self.model.model
        position_ids, _ = core.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs.get("image_grid_thw"),
                                              attention_mask=inputs["attention_mask"])
        hidden = core(**inputs, position_ids=position_ids, use_cache=False).last_hidden_state
        return pool_and_score(hidden, targets, self.model.lm_head)

    def export(self, directory, style: PromptStyle | None = None) -> Path:
        """Merge LoRA into a copy of the weights and save a checkpoint that `load_model` reads."""
        import copy

        from peft.tuners.lora import LoraLayer

        directory = Path(directory)
        model = copy.deepcopy(self.model)
        for module in model.modules():
            if isinstance(module, LoraLayer):
                module.merge()
        # Replace each LoRA wrapper by its merged base layer so the saved keys are the plain model's.
        for name, module in list(model.named_modules()):
            if isinstance(module, LoraLayer):
                parent = model.get_submodule(name.rsplit(".", 1)[0])
                setattr(parent, name.rsplit(".", 1)[1], module.get_base_layer())
        with atomic_directory(directory) as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            self.backbone.image_processor.save_pretrained(tmp)
            (tmp / STYLE_FILE).write_text((style or self.style).to_json() + "\n")
        return directory
