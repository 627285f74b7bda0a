"""SASRec (Kang & McAuley 2018): a causal self-attention next-item model.

Its item embedding table (shared between input and output) is the collaborative signal that CF
tokenizers quantize, and its scores are the sequential baseline a generative recommender must
beat. Item ids are shifted by one so that 0 is padding; sequences are left-padded, so the last
slot always holds the newest item and its position embedding encodes recency.
"""

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from genrec.artifacts import ITEM_EMBEDDINGS, MODEL
from genrec.cf.config import SASRecConfig, SASRecLoss
from genrec.cf.training import ONE_PROCESS, Runner, Shard, split_batches, train_cf_model, train_here
from genrec.data_pipeline.prepared import EvalSet, PreparedData
from genrec.data_pipeline.preprocess import ragged_gather
from genrec.errors import DataError
from genrec.metrics import USER_BATCH


class CausalBlock(nn.Module):
    """Pre-LN Transformer block: masked self-attention, then a position-wise feed-forward."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, hidden)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        qkv = self.qkv(self.attn_norm(x)).view(batch, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        p = self.dropout.p if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        x = x + self.dropout(self.out(attended.transpose(1, 2).reshape(batch, length, hidden)))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class SASRec(nn.Module):
    def __init__(
        self, num_items: int, hidden: int, layers: int, heads: int, dropout: float, max_len: int
    ):
        super().__init__()
        self.items = nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(max_len, hidden)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(hidden, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.items.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    @property
    def item_vectors(self) -> torch.Tensor:
        """[num_items, hidden]: row i is contiguous item i (the padding row left out)."""
        return self.items.weight[1:]

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, L, hidden] of left-padded, shifted item ids [B, L]."""
        length = seq.shape[1]
        real = seq > 0
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        # padded slots attend to themselves only, so no attention row is empty
        diagonal = torch.eye(length, dtype=torch.bool, device=seq.device)
        mask = (causal & (real[:, None, :] | diagonal))[:, None]
        x = self.items(seq) * math.sqrt(self.items.embedding_dim)
        x = x + self.positions.weight[-length:]
        x = self.dropout(x) * real[..., None]
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


def trim_padding(seq: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row; positions stay end-aligned."""
    real_columns = (seq > 0).any(dim=0)
    first = int(real_columns.int().argmax()) if bool(real_columns.any()) else seq.shape[1] - 1
    return seq[:, first:]


def sasrec_queries(model: SASRec, histories: torch.Tensor) -> torch.Tensor:
    """[B, hidden]: the state after left-padded `histories`, whose dot product with
    `model.item_vectors` scores every item as the next one.

    Histories are shifted ids (0 = padding); only the last `max_len` columns are read.
    """
    histories = trim_padding(histories[:, -model.positions.num_embeddings :])
    return model(histories)[:, -1]


def pad_histories(offsets: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    """Left-padded [n, width] int64 rows of each CSR sequence's last `width` items, ids + 1."""
    stops = offsets[1:]
    starts = np.maximum(offsets[:-1], stops - width)
    row_offsets, kept = ragged_gather(items, starts, stops)
    lengths = np.diff(row_offsets)
    padded = np.zeros((lengths.size, width), dtype=np.int64)
    rows = np.repeat(np.arange(lengths.size), lengths)
    cols = width - np.repeat(lengths, lengths) + np.arange(kept.size) - row_offsets[:-1][rows]
    padded[rows, cols] = kept + 1
    return padded


def sampled_softmax(
    hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, drawn: torch.Tensor
) -> torch.Tensor:
    """Softmax over each position's target and the `drawn` items [K] all positions share; a
    draw equal to the position's target is left out of its row. Uniform draws have the same
    probability for every item, so the log-Q correction is a constant and cancels."""
    # F.embedding, not indexing: the backward of indexing adds in thread order on CPU.
    positive = (hidden * F.embedding(targets, items)).sum(-1, keepdim=True)
    negative = (hidden @ F.embedding(drawn, items).T).masked_fill(
        drawn[None, :] == targets[:, None], float("-inf")
    )
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def in_batch_softmax(
    hidden: torch.Tensor, targets: torch.Tensor, items: torch.Tensor, log_share: torch.Tensor
) -> torch.Tensor:
    """Softmax over the distinct targets of the batch, each logit less the log of its item's
    share of all training targets (the log-Q correction: popular items are drawn as
    negatives in proportion to that share, Yi et al. 2019)."""
    candidates, column = torch.unique(targets, return_inverse=True)
    logits = hidden @ F.embedding(candidates, items).T - log_share[candidates]
    return F.cross_entropy(logits, column)


def build_sasrec(num_items: int, cfg: DictConfig) -> SASRec:
    return SASRec(num_items, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len)


def load_sasrec(out_dir: Path, device: str = "cpu") -> SASRec:
    """The best model a `train_sasrec` run saved, in eval mode."""
    checkpoint = torch.load(Path(out_dir) / MODEL, map_location=device, weights_only=True)
    cfg = OmegaConf.merge(OmegaConf.structured(SASRecConfig), checkpoint["config"])
    model = build_sasrec(checkpoint["num_items"], cfg)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()


class SASRecTrainer:
    """Every position of a user's last max_len + 1 training items predicts its next item; a
    data-parallel rank trains its part of each batch's users (`Shard`)."""

    def __init__(
        self,
        data: PreparedData,
        cfg: DictConfig,
        rng: np.random.Generator,
        shard: Shard = ONE_PROCESS,
    ):
        self.cfg, self.rng, self.device, self.shard = cfg, rng, torch.device(cfg.device), shard
        self.model = build_sasrec(data.num_items, cfg).to(self.device)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        sequences = pad_histories(data.train_offsets, data.train_items, cfg.max_len + 1)
        lengths = (sequences > 0).sum(axis=1)
        if not (lengths >= 2).any():
            raise DataError(
                str(data.data_dir / "sequences.parquet"),
                "no user has two training items: SASRec has no next item to learn",
            )
        self.sequences, self.lengths = sequences[lengths >= 2], lengths[lengths >= 2]
        targets = self.sequences[:, 1:]
        counts = np.bincount(targets[targets > 0] - 1, minlength=data.num_items)
        share = torch.as_tensor(counts / max(counts.sum(), 1), dtype=torch.float32)
        self.log_share = share.clamp(min=1e-12).log().to(self.device)
        self.histories = {
            split.name: pad_histories(split.offsets, split.history, cfg.max_len)
            for split in (data.valid, data.test)
        }

    def train_epoch(self) -> float:
        batches = self.batches()
        return sum(self.step(self.shard.take(rows)) for rows in batches) / len(batches)

    def step(self, rows: np.ndarray) -> float:
        """One optimizer step on the users `rows`; returns the loss."""
        seq = trim_padding(torch.from_numpy(self.sequences[rows]).to(self.device))
        inputs, targets = seq[:, :-1], seq[:, 1:]
        real = inputs > 0
        loss = self._loss(self.model(inputs)[real], targets[real] - 1)
        self.optimizer.zero_grad()
        loss.backward()
        self.shard.average(self.model)
        self.optimizer.step()
        return loss.item()

    def batches(self) -> list[np.ndarray]:
        """Users of similar length batched together (random within a length, random batch
        order), so padding columns can be cut: most sequences are far shorter than max_len."""
        order = np.lexsort((self.rng.random(self.lengths.size), self.lengths))
        batches = split_batches(order, self.cfg.batch_size)
        return [batches[i] for i in self.rng.permutation(len(batches))]

    def _loss(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss of the positions' `hidden` states [M, d] for `targets` [M]."""
        items = self.model.item_vectors
        if self.cfg.loss == SASRecLoss.ce:
            return F.cross_entropy(hidden @ items.T, targets)
        if self.cfg.loss == SASRecLoss.sampled:
            drawn = torch.randint(0, items.shape[0], (self.cfg.negatives,), device=self.device)
            return sampled_softmax(hidden, targets, items, drawn)
        if self.cfg.loss == SASRecLoss.in_batch:
            return in_batch_softmax(hidden, targets, items, self.log_share)
        negatives = torch.randint(0, items.shape[0], targets.shape, device=self.device)
        # F.embedding, not indexing: the backward of indexing adds in thread order on CPU.
        positive = (hidden * F.embedding(targets, items)).sum(-1)
        negative = (hidden * F.embedding(negatives, items)).sum(-1)
        return F.binary_cross_entropy_with_logits(
            torch.cat([positive, negative]),
            torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]),
        )

    def vectors(self, split: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's queries a batch of histories at a time (each padded to its longest)."""
        histories = torch.from_numpy(self.histories[split.name]).to(self.device)
        batches = histories.split(USER_BATCH)
        queries = torch.cat([sasrec_queries(self.model, batch) for batch in batches])
        return queries, self.model.item_vectors

    def export(self, out_dir: Path) -> None:
        vectors = self.model.item_vectors.detach().cpu().numpy().astype(np.float32)
        np.save(out_dir / ITEM_EMBEDDINGS, vectors)


def train_sasrec(
    cfg: DictConfig, data_dir: Path, out_dir: Path, runner: Runner = train_here
) -> Path:
    """Train SASRec on `data_dir` (or reuse out_dir) and write item_embeddings.npy etc."""
    return train_cf_model("sasrec", cfg, data_dir, out_dir, SASRecTrainer, runner=runner)
