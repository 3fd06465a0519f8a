"""Train a TRACE model: L = λ_gen · CE(CoT + <|emb|>) + λ_ret · InfoNCE(query pre-token, candidate pre-token).

    python -m trace_core.train --data assets/minibeir --out runs/trace-mini --steps 300

Data is M-BEIR format (train split) with M-BEIR-CoT labels: each query line carries `route` ("direct" or
"reason") and `cot` (the teacher chain of thought, or null). The CE target of a direct query is `<|emb|>`
alone, so the routing decision is learned as an ordinary next-token prediction; a reasoning query's target is
its CoT then `<|emb|>`. The query embedding is the hidden state at the position that predicts `<|emb|>`
(the pre-token), exactly what inference pools. Candidates are embedded from their forced-`<|emb|>` prompt.

Batches are task-balanced: each step draws one (dataset, task) pair uniformly, then a batch from it, so
in-batch negatives are of the right modality and hard enough. Candidates that are positives of another query
in the batch are masked out of that query's negatives.

Checkpointing: every `save_every` steps the trainable weights, optimizer, schedule and RNG states are written
atomically to OUT/checkpoint; `--resume` continues from there. OUT/model is an inference checkpoint that
`trace_core.load_model` reads. Multi-GPU: under torchrun each rank draws its own batches and gradients are
averaged across ranks after each backward pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .backbones.base import RenderedPrompt
from .mbeir import MBEIRCandidate, discover_pairs, load_pair, read_instructions, resolve_image
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


@dataclass(frozen=True)
class Example:
    pair: str  # "<dataset>_task<k>"
    query: Query  # text / image path / instruction filled in
    cot: str | None  # teacher CoT (reason route) or None (direct route)
    positive: Candidate  # one positive candidate
    all_positives: frozenset[str]  # every positive did of the query: none of them is a negative for it
    instructions: tuple[str, ...]  # the four instructions of the example's task, for sampling


def _read_labels(path: Path) -> dict[str, tuple[str, str | None]]:
    """qid -> (route, cot) from the M-BEIR-CoT keys of a query file."""
    labels = {}
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            obj = json.loads(line)
            route = obj.get("route", "direct")
            if route not in ("direct", "reason"):
                raise ValueError(f"{path}:{n}: route must be 'direct' or 'reason', not {route!r}")
            cot = obj.get("cot")
            if route == "reason" and not cot:
                raise ValueError(f"{path}:{n}: a 'reason' query needs a non-empty 'cot'")
            labels[obj["qid"]] = (route, cot if route == "reason" else None)
    return labels


def load_examples(root: Path, split: str = "train", pairs: str = "all") -> dict[str, list[Example]]:
    """Training examples grouped by pair: each query with its CoT label and each of its positives."""
    root = Path(root)
    instructions = read_instructions(root / "instructions" / "query_instructions.tsv")
    by_pair: dict[str, list[Example]] = {}
    for pair in discover_pairs(root, split, pairs):
        queries, pool, positives = load_pair(pair)
        labels = _read_labels(pair.query_file)
        pool_by_id: dict[str, MBEIRCandidate] = {c.did: c for c in pool}
        examples = []
        for q in queries:
            route, cot = labels.get(q.qid, ("direct", None))
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
                cand = Candidate(
                    text=c.text, image=str(resolve_image(root, c.image_path)) if c.image_path else None, did=c.did
                )
                examples.append(Example(pair.name, query, cot, cand, frozenset(positives[q.qid]), tuple(prompts)))
        if examples:
            by_pair[pair.name] = examples
    if not by_pair:
        raise ValueError(f"no training examples under {root / 'query' / split}")
    return by_pair


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
        self.features = getattr(model, "feature_cache", None)
        self.emb_id = model.emb_token_id
        self.placeholder = model.image_placeholder
        self._cursor = {p: 0 for p in examples}
        self._order = {p: self.rng.sample(range(len(ex)), len(ex)) for p, ex in examples.items()}

    def _lr_factor(self, step: int) -> float:
        if step < self.cfg.warmup:
            return (step + 1) / self.cfg.warmup
        progress = (step - self.cfg.warmup) / max(1, self.cfg.steps - self.cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    # ---- batches
    def _draw(self) -> list[Example]:
        pair = self.rng.choice(sorted(self.examples))  # task-balanced: every pair equally often
        order, batch = self._order[pair], []
        while len(batch) < min(self.cfg.batch_size, len(order)):
            if self._cursor[pair] >= len(order):
                self.rng.shuffle(order)
                self._cursor[pair] = 0
            batch.append(self.examples[pair][order[self._cursor[pair]]])
            self._cursor[pair] += 1
        return batch

    def _prompt(self, text: str, image) -> RenderedPrompt:
        if image is None:
            return RenderedPrompt(text, [])
        # With cached features (TRACE-mini) the path is only a key; otherwise the model needs the pixels.
        return RenderedPrompt(text, [image if self.features is not None else load_image(image)])

    def _features(self, items) -> list[torch.Tensor | None]:
        if self.features is None:
            return [None] * len(items)
        return [self.features(str(x.image))[None] if x.image is not None else None for x in items]

    def _targets(self, ex: Example) -> list[int]:
        if ex.cot is None:
            return [self.emb_id]
        ids = self.model.tokenizer(ex.cot, add_special_tokens=False)["input_ids"][: self.cfg.max_cot_tokens]
        return [*ids, self.emb_id]

    def losses(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        queries = []
        for ex in batch:
            instruction = self.rng.choice(ex.instructions) if self.cfg.random_instruction else ex.instructions[0]
            queries.append(dataclasses.replace(ex.query, instruction=instruction))
        q_prompts = [self._prompt(render_query(self.style, q, self.placeholder), q.image) for q in queries]
        c_prompts = [self._prompt(render_candidate(self.style, ex.positive, self.placeholder), ex.positive.image)
                     for ex in batch]
        q, _, ce_sum, n_tok = self.model.forward_train(q_prompts, [self._targets(ex) for ex in batch],
                                                       self._features(queries))
        c = self.model.forward_train(c_prompts, None, self._features([ex.positive for ex in batch])).pooled
        q = nn.functional.normalize(q.float(), dim=-1)
        c = nn.functional.normalize(c.float(), dim=-1)
        logits = q @ c.T / self.cfg.temperature  # [B, B]
        # A column holding another positive of the row's query (or the same candidate) is not a negative.
        false_neg = torch.tensor([[c.positive.did in r.all_positives for c in batch] for r in batch])
        logits = logits.masked_fill(false_neg & ~torch.eye(len(batch), dtype=torch.bool), -torch.inf)
        nce = nn.functional.cross_entropy(logits, torch.arange(len(batch)))
        ce = ce_sum / max(n_tok, 1)
        loss = self.cfg.lambda_ret * nce + self.cfg.lambda_gen * ce
        acc = (logits.argmax(-1) == torch.arange(len(batch))).float().mean()
        return {"loss": loss, "nce": nce.detach(), "ce": ce.detach(), "in_batch_acc": acc}

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
            batch = self._draw()
            out = self.losses(batch)
            self.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            self._all_reduce_grads()
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.optimizer.step()
            self.schedule.step()
            self.step += 1
            if self.rank == 0:
                record = {"step": self.step, "pair": batch[0].pair, "lr": self.schedule.get_last_lr()[0],
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
            if p.grad is not None:
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
        target = self.out / "checkpoint.pt"
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".checkpoint.", suffix=".tmp")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.model.export(self.out / "model", self.style)

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
        log.info("resumed from %s at step %d", path, self.step)
        return True


def build_model(base: str, init: str | None = None):
    """The trainable model: "mini" (TRACE-mini from packaged parts) or a Qwen2-VL-family checkpoint folder."""
    if base == "mini":
        from .backbones.mini import MiniConfig, TraceMini

        model = TraceMini.create(MiniConfig())
        if init is not None:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(Path(init) / "trace_mini.safetensors"), strict=False)
        # Teacher CoTs are at most ~90 tokens; a cap a little above keeps a looping model from running long.
        return model, dataclasses.replace(TRACE_STYLE, max_cot_tokens=128)
    from .backbones.qwen2vl import QwenVLTrainable

    model = QwenVLTrainable.from_pretrained(base)
    return model, model.style


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trace_core.train", description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="M-BEIR-format folder with a train split and CoT labels")
    parser.add_argument("--out", required=True, help="output folder (checkpoint, log, model/)")
    parser.add_argument("--base", default="mini", help="'mini' or a Qwen2-VL-family checkpoint folder")
    parser.add_argument("--pairs", default="all")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--init", default=None, help="start from the weights of this TRACE-mini checkpoint")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(cfg.seed)
    try:
        examples = load_examples(Path(args.data), "train", args.pairs)
        model, style = build_model(args.base, args.init)
        if hasattr(model, "precompute_features"):  # frozen vision encoder: run it once over all images
            model.precompute_features([str(x.image) for exs in examples.values() for ex in exs
                                       for x in (ex.query, ex.positive) if x.image is not None])
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
