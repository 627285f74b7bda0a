"""LightGCN (He et al. 2020): user and item embeddings smoothed over the interaction graph.

Unlike SASRec it ignores order: its item vectors encode who-bought-with-whom, the collaborative
signal that TokenRec's masked quantizer tokenizes. Propagation has no weights or
nonlinearities, only the symmetric-normalised adjacency, so the layer-0 embeddings are all it
learns and the items' layer mean is what it exports.

The users' vectors it exports are not its trained user embeddings but what TokenRec's users'
tokenizer codes (genrec/methods/tokenrec): each user's history propagated one step from the
exported item vectors (`propagated`), a trained user's from its validation history (its
training sequence), a held-out user's from its own. The users' MQ tokenizer is fitted on
the trained users' rows, so it is fitted on the kind of vector it codes in training and
evaluation, not on the layer-averaged user embeddings (whose norms and codes differ).
"""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from genrec.artifacts import (
    HOLDOUT_USER_EMBEDDINGS,
    ITEM_DEGREES,
    ITEM_EMBEDDINGS,
    USER_EMBEDDINGS,
)
from genrec.cf.training import (
    ONE_PROCESS,
    Runner,
    Shard,
    split_batches,
    train_cf_model,
    train_here,
)
from genrec.data_pipeline.prepared import EvalSet, PreparedData
from genrec.data_pipeline.streaming import right_aligned
from genrec.errors import DataError

# 2: the users' vectors are their propagated histories (1: LightGCN's trained user vectors).
EXPORT_FORMAT = 2
# A user who has nearly every item could make rejection sampling loop; such clashes are rare
# enough that a few rounds leave virtually none, and a leftover one only adds a little noise.
NEGATIVE_RESAMPLE_ROUNDS = 10


def normalized_adjacency(
    users: np.ndarray, items: np.ndarray, num_users: int, num_items: int
) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph (users first, then items) as a sparse COO
    tensor (coalesced; `compressed` turns it into what training multiplies with)."""
    size = num_users + num_items
    rows = np.concatenate([users, items + num_users])
    cols = np.concatenate([items + num_users, users])
    degree = np.bincount(rows, minlength=size).astype(np.float32)
    inv_sqrt = np.divide(1.0, np.sqrt(degree), out=np.zeros_like(degree), where=degree > 0)
    indices = torch.from_numpy(np.stack([rows, cols]))
    values = torch.from_numpy(inv_sqrt[rows] * inv_sqrt[cols])
    return torch.sparse_coo_tensor(indices, values, (size, size), check_invariants=True).coalesce()


def compressed(graph: torch.Tensor) -> torch.Tensor:
    """The graph in CSR, whose products are row-parallel and deterministic."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return graph.to_sparse_csr()


class Propagation(torch.autograd.Function):
    """x -> A x for the symmetric graph A: the gradient is A grad, the same product again, so
    autograd never transposes A (with CSR, forward and backward of a 3-layer propagation take
    under half the time of COO `sparse.mm`; BENCHMARKS.md, "LightGCN at scale")."""

    @staticmethod
    def forward(ctx, graph: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        return graph @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, ctx.graph @ grad


def propagated(history: torch.Tensor, items: torch.Tensor, degree: torch.Tensor) -> torch.Tensor:
    """Vectors [B, D] of users from their histories [B, H] (-1: padding) alone, no retraining:
    one propagation step from the trained item vectors [N, D], sum_i e_i / sqrt(|N(u)| deg(i))
    over the distinct history items with training interactions (LightGCN's first layer)."""
    valid = history >= 0
    item = history.clamp(min=0)
    earlier = torch.ones(history.size(1), history.size(1), dtype=torch.bool).tril(-1)
    repeated = ((history[:, :, None] == history[:, None, :]) & earlier.to(history.device)).any(-1)
    counted = valid & ~repeated & (degree[item] > 0)
    count = counted.sum(-1, keepdim=True).clamp(min=1)
    weight = counted / torch.sqrt(count * degree[item].clamp(min=1))
    return torch.einsum("bh,bhd->bd", weight.to(items.dtype), items[item])


def unseen_users(
    split: EvalSet, first_user: int, items: np.ndarray, degree: np.ndarray, chunk: int = 4096
) -> np.ndarray:
    """`propagated` vectors of the split's users from their histories alone (users outside
    the graph, or trained users from their validation histories); row u - `first_user` holds
    user u, so the split must hold users first_user.. first_user + its size - 1, once each."""
    rows = split.users - first_user
    if not np.array_equal(np.sort(rows), np.arange(split.users.size)):
        raise DataError(
            split.name, f"does not hold users {first_user}..{first_user + split.users.size - 1}"
        )
    histories = np.split(split.history, split.offsets[1:-1])
    out = np.zeros((split.users.size, items.shape[1]), dtype=np.float32)
    vectors, degrees = torch.from_numpy(items), torch.from_numpy(degree)
    for start in range(0, split.users.size, chunk):
        history = right_aligned(histories[start : start + chunk])
        out[rows[start : start + chunk]] = propagated(history, vectors, degrees).numpy()
    return out


class LightGCN(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int, layers: int):
        super().__init__()
        self.layers = layers
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        nn.init.normal_(self.users.weight, std=0.1)
        nn.init.normal_(self.items.weight, std=0.1)

    def forward(self, graph: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(user, item) embeddings: the mean of layers 0..L of propagation over the symmetric
        `graph` (CSR, from `compressed`)."""
        x = torch.cat([self.users.weight, self.items.weight])
        total = x
        for _ in range(self.layers):
            x = Propagation.apply(graph, x)
            total = total + x
        return (total / (self.layers + 1)).split(
            [self.users.num_embeddings, self.items.num_embeddings]
        )


class LightGCNTrainer:
    """BPR over every distinct (user, training item) edge, one sampled unseen negative each.

    Every batch propagates the whole graph, so a batch costs what the graph costs, whatever
    its size: at 10^7 edges, larger batches (fewer propagations an epoch) are what makes an
    epoch affordable. Data-parallel ranks each hold the whole graph and train their part of
    each batch (`Shard`): that spreads the BPR terms, not the propagation."""

    def __init__(
        self,
        data: PreparedData,
        cfg: DictConfig,
        rng: np.random.Generator,
        shard: Shard = ONE_PROCESS,
    ):
        self.cfg, self.rng, self.device, self.shard = cfg, rng, torch.device(cfg.device), shard
        self.num_items, self.num_users = data.num_items, data.num_users
        self.valid, self.holdout = data.valid, data.holdout
        users = np.repeat(np.arange(data.num_users), np.diff(data.train_offsets))
        self.edges = np.unique(users * data.num_items + data.train_items)
        self.users, self.positives = np.divmod(self.edges, data.num_items)
        graph = normalized_adjacency(self.users, self.positives, data.num_users, data.num_items)
        self.graph = compressed(graph).to(self.device)
        self.model = LightGCN(data.num_users, data.num_items, cfg.dim, cfg.layers).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)

    def _negatives(self, users: np.ndarray) -> np.ndarray:
        """Uniform items, redrawn where the user has already interacted with them."""
        negatives = self.rng.integers(0, self.num_items, users.size)
        for _ in range(NEGATIVE_RESAMPLE_ROUNDS):
            keys = users * self.num_items + negatives
            found = np.minimum(np.searchsorted(self.edges, keys), self.edges.size - 1)
            clash = self.edges[found] == keys
            if not clash.any():
                break
            negatives[clash] = self.rng.integers(0, self.num_items, int(clash.sum()))
        return negatives

    def train_epoch(self) -> float:
        order = self.rng.permutation(self.edges.size)
        batches = split_batches(order, self.cfg.batch_size)
        total = 0.0
        for rows in batches:
            # Every rank draws the whole batch's negatives, so their generators stay in step.
            negatives = self._negatives(self.users[rows])
            mine = self.shard.take(np.arange(rows.size))
            batch = [
                torch.from_numpy(ids[mine]).to(self.device)
                for ids in (self.users[rows], self.positives[rows], negatives)
            ]
            loss = self._loss(*batch)
            self.optimizer.zero_grad()
            loss.backward()
            self.shard.average(self.model)
            self.optimizer.step()
            total += loss.item()
        return total / len(batches)

    def _loss(
        self, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
    ) -> torch.Tensor:
        """BPR plus L2 on the layer-0 embeddings the batch touches (as the paper does)."""
        user_vectors, item_vectors = self.model(self.graph)
        # F.embedding, not indexing: the backward of indexing adds in thread order on CPU.
        u, positive, negative = (
            F.embedding(index, table)
            for index, table in (
                (users, user_vectors),
                (positives, item_vectors),
                (negatives, item_vectors),
            )
        )
        preference = (u * positive).sum(-1) - (u * negative).sum(-1)
        ego = (self.model.users(users), self.model.items(positives), self.model.items(negatives))
        l2 = sum(e.pow(2).sum() for e in ego) / (2 * users.numel())
        return -F.logsigmoid(preference).mean() + self.cfg.weight_decay * l2

    def vectors(self, split: EvalSet) -> tuple[torch.Tensor, torch.Tensor]:
        """One propagation for the whole split."""
        user_vectors, item_vectors = self.model(self.graph)
        return user_vectors[torch.from_numpy(split.users).to(self.device)], item_vectors

    def export(self, out_dir: Path) -> None:
        """Item vectors and degrees, and the users' vectors of their histories (see above)."""
        with torch.no_grad():
            item_vectors = self.model(self.graph)[1]
        items = item_vectors.cpu().numpy().astype(np.float32)
        np.save(out_dir / ITEM_EMBEDDINGS, items)
        degree = np.bincount(self.positives, minlength=self.num_items)  # distinct users
        np.save(out_dir / ITEM_DEGREES, degree)
        np.save(out_dir / USER_EMBEDDINGS, unseen_users(self.valid, 0, items, degree))
        if self.holdout is not None:
            unseen = unseen_users(self.holdout, self.num_users, items, degree)
            np.save(out_dir / HOLDOUT_USER_EMBEDDINGS, unseen)


def train_lightgcn(
    cfg: DictConfig, data_dir: Path, out_dir: Path, runner: Runner = train_here
) -> Path:
    """Train LightGCN on `data_dir` (or reuse out_dir) and write user/item_embeddings.npy etc."""
    return train_cf_model(
        "lightgcn", cfg, data_dir, out_dir, LightGCNTrainer, EXPORT_FORMAT, runner
    )
