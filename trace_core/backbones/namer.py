"""The name head of TRACE-mini (`backbones/mini.py`): it spells what an image shows as word pieces, from the
frozen image features alone, and hands the LM those pieces as soft words."""

from __future__ import annotations

import torch
from torch import nn


class NameHead(nn.Module):
    """Spells what an image shows as `name_slots` word pieces, from the frozen image features alone.

    A projector trained from scratch inside the LM's losses learns to name images far too slowly on a CPU
    budget (v2 run 2: 3 of 40 training images named exactly after 150 naming steps). Trained on its own, with
    no LM in the loop (BLIP-2 also aligns its vision side before it meets the LM), it spells back the names of
    the images it was trained on within minutes; its slots then enter the LM as soft words (probability-weighted
    mixes of word embeddings), so the LM reads a name instead of having to decode one from raw features. It
    knows only the word pieces of the names it was fitted on (`vocab`), and for an image unlike any of them it
    spells the nearest name it knows: the other image tokens still carry the picture itself.

    slot k: cells (LayerNorm, Linear 128 each) + global (LayerNorm, Linear 256) + colour (Linear 128)
            --MLP (width)--> slots x rank --one shared Linear--> slots x H
            --cosine with the word embeddings of `vocab`, times a learnt scale--> logits
    The rank-r bottleneck keeps the head small enough to ship (width 512, rank 64: 1.9 M parameters; v2 run
    3's full head, width 1024 and no bottleneck, had 11.5 M).
    """

    def __init__(self, vision_dim: int, grid: int, hist_bins: int, slots: int, vocab_size: int, hidden: int,
                 width: int = 512, rank: int = 64):
        """Features [N, vision_dim, grid**2 + 1 (+ 1)] as TraceMini.image_features lays them out: the grid
        cells, the global average, and (hist_bins > 0) the colour histogram in the first hist_bins rows of one
        more column. `vocab_size`: most word pieces it can spell; `hidden`: the LM's width; `width`: the MLP's;
        `rank`: the slots' bottleneck (0: the MLP writes slots x hidden directly)."""
        super().__init__()
        self.grid, self.hist_bins, self.slots, self.hidden = grid, hist_bins, slots, hidden
        self.cell = nn.Sequential(nn.LayerNorm(vision_dim), nn.Linear(vision_dim, 128))
        self.glob = nn.Sequential(nn.LayerNorm(vision_dim), nn.Linear(vision_dim, 256))
        self.hist = nn.Linear(hist_bins, 128) if hist_bins else None
        inputs = 128 * grid**2 + 256 + (128 if hist_bins else 0)
        self.mlp = nn.Sequential(nn.GELU(), nn.Linear(inputs, width), nn.GELU(), nn.Dropout(0.1),
                                 nn.Linear(width, slots * (rank or hidden)))
        self.up = nn.Linear(rank, hidden) if rank else None
        self.scale = nn.Parameter(torch.tensor(10.0))
        # Word-piece ids it can spell; -1 marks unused rows (masked). Set by TraceMini.fit_name_head.
        self.register_buffer("vocab", torch.full((vocab_size,), -1, dtype=torch.long))
        self.requires_grad_(False)  # trained only in its own stage

    @staticmethod
    def end_id(tokenizer) -> int:
        return tokenizer.convert_tokens_to_ids(".")

    def set_vocab(self, ids: list[int]) -> None:
        ids = sorted(set(ids))
        if len(ids) > len(self.vocab):
            raise ValueError(f"the names use {len(ids)} distinct word pieces; the name head holds "
                             f"{len(self.vocab)} (raise name_vocab)")
        self.vocab.fill_(-1)
        self.vocab[: len(ids)] = torch.tensor(ids, dtype=torch.long)

    def words_of(self, table: torch.Tensor) -> torch.Tensor:
        """The rows of a word-embedding table [V, H] that `vocab` spells with [len(vocab), H]."""
        return table[self.vocab.clamp(min=0)]

    def local_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Word-piece ids -> their rows in `vocab`."""
        lookup = {int(v): i for i, v in enumerate(self.vocab.tolist()) if v >= 0}
        return torch.tensor([[lookup[int(t)] for t in row] for row in ids.tolist()], device=ids.device)

    def forward(self, features: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Features [N, vision_dim, C] and the word embeddings of `vocab` [len(vocab), H] (`words_of`) -> logits
        over `vocab` [N, slots, len(vocab)]."""
        g2 = self.grid**2
        parts = [self.cell(features[..., :g2].transpose(1, 2)).flatten(1), self.glob(features[..., g2])]
        if self.hist is not None:
            parts.append(self.hist(features[:, : self.hist_bins, g2 + 1] * 4))
        slots = self.mlp(torch.cat(parts, -1)).view(len(features), self.slots, -1)
        if self.up is not None:
            slots = self.up(slots)
        slots = nn.functional.normalize(slots, dim=-1)
        words = nn.functional.normalize(words.to(slots.dtype), dim=-1)
        logits = self.scale * slots @ words.T
        return logits.masked_fill(self.vocab < 0, float("-inf"))

    # ---- spelling names
    def targets(self, tokenizer, names: list[str]) -> torch.Tensor:
        """Names -> the ids to spell [N, slots]: " {name}" cut to slots - 1 pieces, then the end piece "."
        repeated."""
        end = self.end_id(tokenizer)
        rows = []
        for name in names:
            ids = tokenizer(" " + name.strip(), add_special_tokens=False)["input_ids"][: self.slots - 1] + [end]
            rows.append(ids + [end] * (self.slots - len(ids)))
        return torch.tensor(rows, dtype=torch.long)

    def fit(self, features: torch.Tensor, names: list[str], tokenizer, table: torch.Tensor, steps: int = 1500,
            batch_size: int = 64, lr: float = 1e-3, seed: int = 0, log=None) -> float:
        """Train the head alone (no LM in the loop): fixed image features [N, vision_dim, C] -> their names,
        cross-entropy on every slot. Sets `vocab` to the pieces of these names. Returns the share of images
        whose whole name it spells back exactly."""
        if len(features) != len(names) or not names:
            raise ValueError(f"{len(features)} feature rows for {len(names)} names")
        ids = self.targets(tokenizer, names)
        self.set_vocab(ids.unique().tolist() + [self.end_id(tokenizer)])
        targets = self.local_ids(ids.to(self.vocab.device))
        words = self.words_of(table)
        features = features.to(self.vocab.device, torch.float32)
        gen = torch.Generator().manual_seed(seed)
        self.requires_grad_(True)
        self.train()
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.01)
        for step in range(steps):
            rows = torch.randint(0, len(names), (batch_size,), generator=gen)
            loss = nn.functional.cross_entropy(self(features[rows], words).flatten(0, 1), targets[rows].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if log is not None and (step % 250 == 0 or step == steps - 1):
                log(step, loss.item())
        self.requires_grad_(False)
        self.eval()
        with torch.no_grad():
            hits = [(self(features[i : i + 256], words).argmax(-1) == targets[i : i + 256]).all(-1)
                    for i in range(0, len(names), 256)]
        return float(torch.cat(hits).float().mean())

    @torch.no_grad()
    def read(self, features: torch.Tensor, tokenizer, words: torch.Tensor) -> list[str]:
        """What the head spells for each image [N, vision_dim, C] (`words`: as in `forward`): its argmax pieces
        up to the end piece."""
        ids = self.vocab[self(features.to(self.vocab.device, torch.float32), words).argmax(-1)]
        end = self.end_id(tokenizer)
        out = []
        for row in ids.tolist():
            row = row[: row.index(end)] if end in row else row
            out.append(tokenizer.decode(row).strip())
        return out
