"""Train a TRACE model: L = λ_gen · CE(CoT + <|emb|>) + λ_ret · InfoNCE(query pre-token, candidate pre-token)
(+ λ_direct · InfoNCE at the direct position of reasoning queries).

    python -m trace_core.train --data assets/minibeir --out runs/trace-mini --steps 300

Data is M-BEIR format (train split) with M-BEIR-CoT labels: each query line carries `route` ("direct" or
"reason", per query: one pair may mix both) and `cot` (the teacher chain of thought, or null). The CE target of
a direct query is `<|emb|>` alone, so the routing decision is learned as an ordinary next-token prediction; a
reasoning query's target is its CoT then `<|emb|>`. The query embedding is the hidden state at the position
that predicts `<|emb|>` (the pre-token), exactly what inference pools. Candidates are embedded from their
forced-`<|emb|>` prompt.

TRACE-mini v2 additions, each a `TrainConfig` field:
- Direct-position InfoNCE (`lambda_direct`): a reasoning query's prompt-end state (where the direct route would
  embed) is also trained against the same candidate columns, so "never reason" is a fairly trained baseline.
- Hard negatives (`hard_negatives`): each query with a `neg_cand_list` brings one of them (drawn per step) as an
  extra candidate column, e.g. another skin-tone variant of the same emoji.
- Group-weighted batches (`group_weights`): each pair is "complex" (some query has a CoT), "image" (images on
  either side) or "text"; a step draws a group by weight, then one pair of it uniformly, then a batch from that
  pair, so in-batch negatives are of the right modality and hard enough. Candidates that are positives of
  another query in the batch are masked out of that query's negatives.
- Self-generated CoTs (`self_cot_from`, `self_cot_prob`): late in training, some batches embed their reasoning
  queries after the model's own greedy CoT instead of the teacher's (the CE still teaches the teacher's), so
  the embedding learns not to trust a wrong CoT blindly.
- Wrong-CoT rows (`cot_noise_prob`, `cot_noise_from`): on training queries the model's own CoTs are almost
  always right (their targets were trained on), so self-generated CoTs rarely show the embedding a wrong one,
  while on held-out queries about a quarter name a sibling. So some reason rows embed after their teacher CoT
  with the target's name swapped for the name of that row's hard negative (another variant of the family, a
  related thing): the query itself must then keep the target in reach (the CE still teaches the teacher's CoT).
  The named negative is a column of the batch but, by default, no negative of its own row: pushing the
  embedding away from what its CoT names taught the model to distrust every CoT (run 6 of TRACE-mini: R@1 of
  complex queries fell below "never"). Needs the corpus's `target_name` labels; rows without a named negative
  stay as they are.

Naming stage (`--stage naming`, TRACE-mini): before the joint objective, the CoT loss alone on "The image shows
{name}." for every named training image (`naming.py`), so the image tokens can be named in a CoT; `--naming`
keeps those examples as one more pair in the joint stage.

    python -m trace_core.train --stage naming --data D --out runs/naming --steps 150 --batch-size 32

Name-head stage (`--stage names`, TRACE-mini with `name_slots`): before both, the name head alone learns to spell
each named training image's name from its frozen features (no LM in the loop: minutes on a CPU); its slots then
reach the LM as soft words (`backbones/mini.py`, `NameHead`).

    python -m trace_core.train --stage names --data D --out runs/names --steps 1500 --batch-size 64 --lr 1e-3
    python -m trace_core.train --data D --out runs/joint --init runs/naming/model --naming ...

Checkpointing: every `save_every` steps the trainable weights, optimizer, schedule and RNG states are written
atomically to OUT/checkpoint; `--resume` continues from there (every random choice comes from the saved RNG, so
a resumed run repeats the uninterrupted one). OUT/model is an inference checkpoint that `trace_core.load_model`
reads. Multi-GPU: under torchrun each rank draws its own batches and gradients are averaged across ranks after
each backward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_file
from .backbones.base import Backbone, RenderedPrompt
from .batching import GroupSampler, not_negatives
from .encoder import EncoderConfig, TraceEncoder
from .examples import Example, load_examples
from .glosses import GLOSS_PAIR, gloss_examples
from .minibeir.wordnet import DEFAULT_WORDNET_DIR
from .naming import NAMING_PAIR, fit_name_head, image_names, naming_examples
from .prompts import TRACE_STYLE, PromptStyle, render_candidate, render_query
from .records import Candidate, Query, load_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300  # optimizer steps
    batch_size: int = 32  # queries (and their positives) per step
    lr: float = 2e-4  # peak learning rate (paper: 2e-4)
    warmup: int = 20  # linear warm-up steps, then cosine decay to 10% of the peak
    new_param_lr_scale: float = 10.0  # learning-rate multiplier for parameters trained from scratch
    weight_decay: float = 0.0
    temperature: float = 0.05  # InfoNCE temperature
    lambda_gen: float = 1.0  # weight of the CoT cross-entropy (0: retrieval loss only, the ablation)
    lambda_ret: float = 1.0  # weight of InfoNCE
    max_cot_tokens: int = 96  # teacher CoTs are cut to this many tokens
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 50  # steps between checkpoints
    log_every: int = 5
    random_instruction: bool = True  # draw one of the four instructions per example (False: always the first)
    # InfoNCE at the prompt end (the direct route's embedding) of reason-labelled queries, against the same
    # columns: the "never reason" baseline is then trained on complex queries too, not only on simple ones.
    lambda_direct: float = 0.5
    # One of a query's neg_cand_list (siblings in its pool) per step as an extra candidate column.
    hard_negatives: bool = True
    # At most this many hard-negative columns per batch (each is one more candidate through the LM and back:
    # on a CPU the candidate pass is a third of a step).
    max_hard_negatives: int = 8
    # Share of steps per pair group ("complex": some query has a CoT; "image": images on either side; "text");
    # groups without a pair are dropped and the rest renormalised.
    group_weights: str = "complex=0.40,image=0.45,text=0.15"
    # Late in training (from this fraction of the steps on; 1.0: never) a batch with reason-labelled rows embeds
    # them, with probability self_cot_prob, after the model's own greedy CoT instead of the teacher's.
    self_cot_from: float = 0.7
    self_cot_prob: float = 0.5
    self_cot_max_tokens: int = 48  # cap on a self-generated CoT
    # From this fraction of the steps on, each reason row whose hard-negative column has a known name embeds,
    # with probability cot_noise_prob, after its teacher CoT naming that negative instead (0: never).
    cot_noise_prob: float = 0.0
    cot_noise_from: float = 0.0
    # Whether the item a wrong CoT names counts as a negative of its row (True: the embedding is pushed away from
    # what its CoT names, and learns to distrust every CoT; False: neither positive nor negative for that row).
    cot_noise_named_negative: bool = False


_WORD = re.compile(r"\w[\w'-]*")


def _phrase_map(name: str, other: str) -> list[tuple[str, str]]:
    """The phrases that turn `name` into `other`, word by word ("man running: dark skin tone" -> "woman
    running: medium skin tone": man -> woman, dark -> medium); replacements of at most three words only."""
    import difflib

    a, b = _WORD.findall(name.lower()), _WORD.findall(other.lower())
    ops = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
    return [(" ".join(a[i1:i2]), " ".join(b[j1:j2])) for op, i1, i2, j1, j2 in ops
            if op == "replace" and i2 - i1 <= 3 and j2 - j1 <= 3]


def swap_name(cot: str, name: str, other: str, keep: str | None = None) -> str | None:
    """`cot` as it would read had it concluded `other` instead of `name`: a wrong but self-consistent CoT.

    Every whole-word occurrence of `name` (any case) becomes `other`, and the words that tell the two apart are
    swapped in the rest of the CoT too ("Edit: man, dark skin tone." -> "Edit: woman, medium skin tone."), except
    inside an occurrence of `keep` (a composed edit's reference, which a wrong CoT usually still names right).
    None when `name` does not occur outside `keep` or the two names are the same: nothing to corrupt."""
    name, other = name.strip(), other.strip()
    if not name or not other or name.lower() == other.lower():
        return None

    def spans(phrase: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(rf"(?<!\w){re.escape(phrase)}(?!\w)", cot, flags=re.IGNORECASE)]

    kept = spans(keep.strip()) if keep and keep.strip() else []
    inside = lambda a, b, among: any(x <= a and b <= y for x, y in among)  # noqa: E731
    names = [(a, b) for a, b in spans(name) if not inside(a, b, kept)]
    if not names:
        return None
    edits = [(a, b, other) for a, b in names]
    for old, new in _phrase_map(name, other):
        for a, b in spans(old):
            if not inside(a, b, kept + names) and not any(a < y and x < b for x, y, _ in edits):
                edits.append((a, b, new))
    out, last = [], 0
    for a, b, text in sorted(edits):
        out += [cot[last:a], text]
        last = b
    return "".join(out) + cot[last:]


class _TrainingEncoder(TraceEncoder):
    """The project's encoder over the live training model, with query prompts rendered by the trainer.

    The trainer's prompts keep an image as its path when the model has a frozen feature cache (TRACE-mini), so
    greedy decoding looks the features up instead of opening and re-encoding the file.
    """

    def __init__(self, backbone: Backbone, render, max_cot_tokens: int):
        super().__init__(backbone, EncoderConfig(max_cot_tokens=max_cot_tokens))
        self._render = render

    def render_query(self, query: Query) -> RenderedPrompt:
        return self._render(query)


class Trainer:
    """Runs the TRACE objective on any model with `forward_train` (TRACE-mini, Qwen-VL with LoRA)."""

    def __init__(self, model: nn.Module, style: PromptStyle, examples: dict[str, list[Example]],
                 out: Path, config: TrainConfig = TrainConfig()):
        self.model, self.style, self.examples, self.out, self.cfg = model, style, examples, Path(out), config
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.rng = random.Random(config.seed + 1000 * self.rank)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Parameters trained from scratch (projector, <|emb|>) get new_param_lr_scale x the LoRA learning rate:
        # Adam moves each weight by about lr per step, and a new output row must travel much further than an
        # adapter of a pretrained layer.
        new = {id(p) for p in getattr(model, "new_parameters", list)()}
        groups = [
            {"params": [p for p in self.params if id(p) not in new], "lr": config.lr},
            {"params": [p for p in self.params if id(p) in new], "lr": config.lr * config.new_param_lr_scale},
        ]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        store = getattr(model, "feature_store", None)  # TRACE-mini: frozen image features looked up by path
        self.features = store.get if store is not None else None
        self.emb_id = model.emb_token_id
        self.placeholder = model.image_placeholder
        self._cursor = {p: 0 for p in examples}
        self._order = {p: self.rng.sample(range(len(ex)), len(ex)) for p, ex in examples.items()}
        self.sampler = GroupSampler(examples, config.group_weights)
        log.info("pair groups %s, drawn with weights %s", self.sampler.pairs,
                 dict(zip(self.sampler.groups, (round(w, 3) for w in self.sampler.weights), strict=True)))
        self._encoder: TraceEncoder | None = None  # built on the first self-CoT step
        # did -> canonical name, from every example's target (what a wrong CoT would name instead)
        self.names = {ex.positive.did: ex.target_name for exs in examples.values() for ex in exs
                      if ex.target_name}

    def _lr_factor(self, step: int) -> float:
        if step < self.cfg.warmup:
            return (step + 1) / self.cfg.warmup
        progress = (step - self.cfg.warmup) / max(1, self.cfg.steps - self.cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # ---- batches
    def _draw(self) -> tuple[str, list[Example]]:
        """(group, batch): a pair by group weight, then the next examples of that pair's shuffled order."""
        group, pair = self.sampler.draw(self.rng)  # one pair per batch: in-batch negatives of the right modality
        order, batch = self._order[pair], []
        while len(batch) < min(self.cfg.batch_size, len(order)):
            if self._cursor[pair] >= len(order):
                self.rng.shuffle(order)
                self._cursor[pair] = 0
            batch.append(self.examples[pair][order[self._cursor[pair]]])
            self._cursor[pair] += 1
        return group, batch

    def _self_cot_now(self, batch: list[Example]) -> bool:
        """Whether this step embeds its reason rows after the model's own CoT (late in training, by chance)."""
        if self.step < self.cfg.self_cot_from * self.cfg.steps or all(ex.cot is None for ex in batch):
            return False
        return self.rng.random() < self.cfg.self_cot_prob  # drawn only here, so resuming repeats it

    def _prompt(self, text: str, image) -> RenderedPrompt:
        if image is None:
            return RenderedPrompt(text, [])
        # With cached features (TRACE-mini) the path is only a key; otherwise the model needs the pixels.
        return RenderedPrompt(text, [image if self.features is not None else load_image(image)])

    def _query_prompt(self, query: Query) -> RenderedPrompt:
        return self._prompt(render_query(self.style, query, self.placeholder), query.image)

    def _features(self, items) -> list[torch.Tensor | None]:
        if self.features is None:
            return [None] * len(items)
        return [self.features(str(x.image))[None] if x.image is not None else None for x in items]

    def _targets(self, ex: Example) -> list[int]:
        if ex.cot is None:
            return [self.emb_id]
        ids = self.model.tokenizer(ex.cot, add_special_tokens=False)["input_ids"][: self.cfg.max_cot_tokens]
        return [*ids, self.emb_id]

    def _columns(self, batch: list[Example]) -> list[Candidate]:
        """Candidate columns [B + K]: row i's positive is column i, then one hard negative (drawn with the
        trainer's RNG) per row that has some; a did already among the columns is not added twice."""
        return self._columns_and_negatives(batch)[0]

    def _columns_and_negatives(self, batch: list[Example]) -> tuple[list[Candidate], dict[int, Candidate]]:
        """The columns, and row -> the hard negative drawn for it (a column, added by it or by an earlier row)."""
        columns, drawn = [ex.positive for ex in batch], {}
        if self.cfg.hard_negatives:
            seen = {c.did for c in columns}
            for i, ex in enumerate(batch):
                if ex.negatives and len(columns) - len(batch) < self.cfg.max_hard_negatives:
                    neg = self.rng.choice(ex.negatives)
                    drawn[i] = neg
                    if neg.did not in seen:
                        seen.add(neg.did)
                        columns.append(neg)
        return columns, drawn

    def wrong_cots(self, batch: list[Example], drawn: dict[int, Candidate]) -> dict[int, str]:
        """row -> its teacher CoT naming the row's hard negative instead of its target, for the reason rows
        drawn (with probability cot_noise_prob, from cot_noise_from of the steps on) whose negative has a name."""
        if self.cfg.cot_noise_prob <= 0 or self.step < self.cfg.cot_noise_from * self.cfg.steps:
            return {}
        wrong = {}
        for i, ex in enumerate(batch):
            neg = drawn.get(i)
            other = self.names.get(neg.did) if neg is not None else None
            if ex.cot is None or not ex.target_name or not other:
                continue
            if self.rng.random() < self.cfg.cot_noise_prob:  # drawn only here, so resuming repeats it
                cot = swap_name(ex.cot, ex.target_name, other, keep=ex.ref_name)
                if cot is not None:
                    wrong[i] = cot
        return wrong

    def _own_cot_encoder(self) -> TraceEncoder:
        """The project's TraceEncoder over the live training model (LoRA unmerged, weights shared)."""
        if self._encoder is None:
            backbone = getattr(self.model, "backbone", None)  # QwenVLTrainable: a backbone over the same model
            if not isinstance(backbone, Backbone):
                from .backbones.mini import MiniBackbone, TraceMini

                if not isinstance(self.model, TraceMini):
                    raise ValueError(f"self-generated CoTs need a TRACE-mini or Qwen-VL model, not "
                                     f"{type(self.model).__name__}; set self_cot_from=1")
                # Not MiniBackbone.from_pretrained: that loads a copy and merges LoRA into it.
                backbone = MiniBackbone(self.model, self.style, "training", "training")
            self._encoder = _TrainingEncoder(backbone, self._query_prompt, self.cfg.self_cot_max_tokens)
        return self._encoder

    def own_cots(self, queries: list[Query]) -> list[list[int]]:
        """The model's own greedy CoT ids for each query (reasoning forced on, at most self_cot_max_tokens).

        Decoded by `TraceEncoder` itself, in eval mode and without gradients; the model's train/eval mode is
        restored afterwards.
        """
        was_training = self.model.training  # before the encoder is built: MiniBackbone() sets eval mode
        encoder = self._own_cot_encoder()
        self.model.eval()
        try:
            with torch.no_grad():
                results = encoder.encode_queries(queries, reasoning="always", batch_size=len(queries))
        finally:
            self.model.train(was_training)
        return [list(r.cot_token_ids) for r in results]

    def losses(self, batch: list[Example], self_cot: bool = False) -> dict[str, torch.Tensor]:
        """The loss of one batch and what the log records of it.

        One teacher-forced forward of the queries gives the CE (teacher CoT + <|emb|>), the pre-token embeddings
        and the prompt-end (direct) states; one forward of the candidate columns (each row's positive, then one
        hard negative per row that has some) gives the candidate embeddings. InfoNCE scores the pre-tokens
        against all columns; the direct term scores the reason rows' prompt-end states against the same columns.
        With `self_cot`, the reason rows' pre-tokens come instead from a second forward after the model's own
        greedy CoT (its CE unused): the embedding then learns from what the model will write at inference.
        """
        queries = []
        for ex in batch:
            instruction = self.rng.choice(ex.instructions) if self.cfg.random_instruction else ex.instructions[0]
            queries.append(dataclasses.replace(ex.query, instruction=instruction))
        q_prompts = [self._query_prompt(q) for q in queries]
        q_features = self._features(queries)
        fwd = self.model.forward_train(q_prompts, [self._targets(ex) for ex in batch], q_features)
        ce = fwd.ce_sum / max(fwd.n_tokens, 1)
        if (self.cfg.lambda_ret == 0 and self.cfg.lambda_direct == 0) or batch[0].pair == GLOSS_PAIR:
            # CE only (the naming stage, the gloss drill): no candidates
            zero = ce.new_zeros(()).detach()
            return {"loss": self.cfg.lambda_gen * ce, "nce": zero, "ce": ce.detach(), "nce_direct": zero,
                    "in_batch_acc": zero, "n_hard_neg": zero, "self_cot": zero, "wrong_cot": zero}
        columns, drawn = self._columns_and_negatives(batch)
        wrong = self.wrong_cots(batch, drawn)
        c_prompts = [self._prompt(render_candidate(self.style, c, self.placeholder), c.image) for c in columns]
        c = self.model.forward_train(c_prompts, None, self._features(columns)).pooled  # [B + K, H]
        q = fwd.pooled  # [B, H]
        reason = torch.tensor([ex.cot is not None for ex in batch])  # [B]
        rows = torch.nonzero(reason).flatten()  # [R] the reason rows
        # Rows embedded after another CoT than the teacher's: a wrong one (its negative named), else the model's own.
        suffix = {i: self._targets(dataclasses.replace(batch[i], cot=cot)) for i, cot in wrong.items()}
        own_rows = [i for i in rows.tolist() if i not in wrong] if self_cot else []
        if own_rows:
            for i, t in zip(own_rows, self.own_cots([queries[i] for i in own_rows]), strict=True):
                suffix[i] = [*t, self.emb_id]
        if suffix:
            idx = sorted(suffix)
            # Teacher-forced again with that CoT as the suffix; only the pooled state [R', H] is used.
            again = self.model.forward_train([q_prompts[i] for i in idx], [suffix[i] for i in idx],
                                             [q_features[i] for i in idx])
            q = q.index_copy(0, torch.tensor(idx, device=q.device), again.pooled.to(q.dtype))  # differentiable
        n_self = len(own_rows)
        q = nn.functional.normalize(q.float(), dim=-1)
        c = nn.functional.normalize(c.float(), dim=-1)
        logits = q @ c.T / self.cfg.temperature  # [B, B + K]
        labels = torch.arange(len(batch), device=logits.device)  # row i's positive is column i
        false_neg = not_negatives(batch, columns).to(logits.device)  # [B, B + K]
        masked = false_neg
        if wrong and not self.cfg.cot_noise_named_negative:  # what a wrong CoT names is no negative of its row
            masked = false_neg.clone()
            at = {c.did: j for j, c in enumerate(columns)}
            for i in wrong:
                masked[i, at[drawn[i].did]] = True
        logits = logits.masked_fill(masked, -torch.inf)
        nce = nn.functional.cross_entropy(logits, labels)
        if len(rows):
            # The direct route's state of the reason rows [R, H], against the same columns and masks. A direct
            # row's prompt-end state is its pre-token, already in `nce`.
            d = nn.functional.normalize(fwd.direct[rows.to(fwd.direct.device)].float(), dim=-1)
            r = rows.to(logits.device)
            d_logits = (d @ c.T / self.cfg.temperature).masked_fill(false_neg[r], -torch.inf)  # [R, B + K]
            nce_direct = nn.functional.cross_entropy(d_logits, labels[r])
        else:
            nce_direct = logits.new_zeros(())
        loss = self.cfg.lambda_ret * nce + self.cfg.lambda_gen * ce + self.cfg.lambda_direct * nce_direct
        acc = (logits.argmax(-1) == labels).float().mean()
        return {"loss": loss, "nce": nce.detach(), "ce": ce.detach(), "nce_direct": nce_direct.detach(),
                "in_batch_acc": acc, "n_hard_neg": torch.tensor(float(len(columns) - len(batch))),
                "self_cot": torch.tensor(n_self / len(batch)), "wrong_cot": torch.tensor(len(wrong) / len(batch))}

    # ---- loop
    def train(self, progress: bool = True, until: int | None = None) -> Path:
        """Train to `config.steps` (or stop early at step `until`, as an interrupted run would)."""
        last = min(until or self.cfg.steps, self.cfg.steps)
        self.model.train()
        log_file = self.out / "train_log.jsonl"
        self.out.mkdir(parents=True, exist_ok=True)
        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.cfg.steps, initial=self.step, unit="step", desc="training")
        t0 = time.perf_counter()
        while self.step < last:
            group, batch = self._draw()
            out = self.losses(batch, self_cot=self._self_cot_now(batch))
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self._all_reduce_grads()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
            if self.rank == 0:
                record = {"step": self.step, "pair": batch[0].pair, "group": group,
                          "lr": self.schedule.get_last_lr()[0],
                          "seconds": round(time.perf_counter() - t0, 2),
                          **{k: round(float(v.detach()), 5) for k, v in out.items()}}
                with open(log_file, "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", nce=f"{record['nce']:.3f}",
                                    ce=f"{record['ce']:.3f}")
                if self.step % self.cfg.log_every == 0:
                    log.info("step %d %s", self.step, record)
                if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                    self.save_checkpoint()
        if bar is not None:
            bar.close()
        self.model.eval()
        return self.out

    def _all_reduce_grads(self) -> None:
        if self.world == 1 or not torch.distributed.is_initialized():
            return
        for p in self.params:
            # Every rank must reduce the same tensors: a rank whose batch had no image (another group) has no
            # gradient for the projector, and skipping it there would hang or pair up the wrong tensors.
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= self.world

    # ---- checkpoints
    def save_checkpoint(self) -> None:
        """Trainable weights + optimizer + schedule + RNG to OUT/checkpoint, atomically."""
        state = {
            "step": self.step,
            "weights": {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
            "cursor": self._cursor,
            "order": self._order,
            "config": dataclasses.asdict(self.cfg),
        }
        atomic_file(self.out / "checkpoint.pt", lambda tmp: torch.save(state, tmp))
        self.model.export(self.out / "model", self.style)

    def _truncate_log(self, step: int) -> None:
        """Drop log records of steps after the checkpoint: the resumed run writes them again."""
        log_file = self.out / "train_log.jsonl"
        if not log_file.is_file():
            return
        lines = log_file.read_text().splitlines(keepends=True)
        keep = [x for x in lines if x.strip() and json.loads(x)["step"] <= step]
        if len(keep) != len(lines):
            atomic_file(log_file, lambda tmp: Path(tmp).write_text("".join(keep)))

    def resume(self) -> bool:
        path = self.out / "checkpoint.pt"
        if not path.is_file():
            return False
        state = torch.load(path, weights_only=False)  # our own file, written by save_checkpoint
        missing = self.model.load_state_dict(state["weights"], strict=False).unexpected_keys
        if missing:
            raise ValueError(f"{path} holds weights this model lacks: {missing[:3]}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        self._cursor, self._order, self.step = state["cursor"], state["order"], state["step"]
        self._truncate_log(self.step)
        log.info("resumed from %s at step %d", path, self.step)
        return True


# The naming stage trains the CoT loss alone (no candidates, no InfoNCE), with the one naming instruction.
NAMING_STAGE = dict(lambda_ret=0.0, lambda_direct=0.0, hard_negatives=False, self_cot_from=1.0,
                    random_instruction=False, group_weights="complex=1")


def build_model(base: str, init: str | None = None):
    """The trainable model: "mini" (TRACE-mini from packaged parts) or a Qwen2-VL-family checkpoint folder."""
    if base == "mini":
        from .backbones.mini import MiniConfig, TraceMini

        model = TraceMini.create(MiniConfig())
        changed = model.init_from(init) if init is not None else []
        if changed:  # a part whose shape changed starts afresh, and is named
            log.warning("--init %s: %d tensors of another shape start afresh: %s", init, len(changed),
                        ", ".join(changed))
        # Teacher CoTs are at most ~90 tokens; a cap a little above keeps a looping model from running long.
        return model, dataclasses.replace(TRACE_STYLE, max_cot_tokens=128)
    from .backbones.qwen2vl import QwenVLTrainable

    model = QwenVLTrainable.from_pretrained(base)
    return model, model.style


def precompute_features(model, examples: dict[str, list[Example]], store: str | None = None) -> None:
    """Run a frozen vision encoder (TRACE-mini) once over every training image; with `store`, features of
    earlier runs are read from that file and the file is updated."""
    features = getattr(model, "feature_store", None)
    if features is None:
        return
    paths = [str(x.image) for exs in examples.values() for ex in exs
             for x in (ex.query, ex.positive, *ex.negatives) if x.image is not None]
    log.info("image features: %d read from %s, %d computed", *features.warm(paths, store))


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return value in ("true", "1", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="M-BEIR-format folder with a train split and CoT labels")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, log, model/)")
    parser.add_argument("--base", default="mini", help="'mini' or a Qwen2-VL-family checkpoint folder")
    parser.add_argument("--pairs", default="all")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--init", default=None, help="start from the weights of this TRACE-mini checkpoint")
    parser.add_argument("--feature-store", default=None,
                        help="file that keeps the frozen image features between runs (TRACE-mini)")
    parser.add_argument("--stage", choices=("joint", "naming", "names"), default="joint",
                        help="joint: the TRACE objective; naming: the CoT loss alone on 'The image shows "
                             "{name}.' for every named training image (see trace_core/naming.py); names: "
                             "the name head alone (TRACE-mini), from frozen image features to names")
    parser.add_argument("--naming", action="store_true",
                        help="joint stage: add the naming examples as one more pair, named 'naming'")
    parser.add_argument("--glosses", type=int, default=0, metavar="N",
                        help="joint stage: add up to N definition questions about common WordNet nouns that no "
                             "candidate names, as one more pair named 'glosses', trained with the CoT loss alone "
                             "(see trace_core/glosses.py)")
    parser.add_argument("--gloss-pair", default="emoji_task1",
                        help="the definition pair whose instructions the gloss drill asks with")
    parser.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR,
                        help="WordNet database (Debian wordnet-base) of the gloss drill")
    for f in dataclasses.fields(TrainConfig):
        kind = _boolean if isinstance(f.default, bool) else type(f.default)  # bool("False") would be True
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=f.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if args.stage == "naming":
        cfg = dataclasses.replace(cfg, **NAMING_STAGE)
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(cfg.seed)
    try:
        examples = load_examples(Path(args.data), "train", args.pairs)
        if args.stage == "names":
            if not image_names(examples):
                raise ValueError(f"no named training images under {args.data}")
            model, style = build_model(args.base, args.init)
            precompute_features(model, {NAMING_PAIR: naming_examples(examples)}, args.feature_store)
            fit_name_head(model, style, examples, Path(args.out), steps=cfg.steps, batch_size=cfg.batch_size,
                          lr=cfg.lr, seed=cfg.seed)
            print(f"wrote {Path(args.out) / 'model'}")
            return 0
        if args.stage == "naming" or args.naming:
            named = naming_examples(examples)
            if not named:
                raise ValueError(f"no named training images under {args.data}")
            examples = {NAMING_PAIR: named} if args.stage == "naming" else {**examples, NAMING_PAIR: named}
            log.info("naming examples: %d training images with names", len(named))
        if args.glosses and args.stage == "joint":
            like = examples.get(args.gloss_pair)
            drill = gloss_examples(args.wordnet_dir, Path(args.data), like[0].instructions if like else (),
                                   args.glosses, cfg.seed)
            examples = {**examples, GLOSS_PAIR: drill}
            log.info("gloss drill: %d definition questions about nouns no candidate names", len(drill))
        model, style = build_model(args.base, args.init)
        precompute_features(model, examples, args.feature_store)
        trainer = Trainer(model, style, examples, Path(args.out), cfg)
        if args.resume:
            trainer.resume()
        counts = {p: len(e) for p, e in examples.items()}
        log.info("training on %d examples in %d pairs: %s", sum(counts.values()), len(counts), counts)
        trainer.train()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {Path(args.out) / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
