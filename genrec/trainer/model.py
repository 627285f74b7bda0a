"""A T5-style encoder-decoder that reads semantic-ID histories and generates the next item's codes.

Every item is `num_levels` codes in [0, codebook_size) plus one dedup code in [0, dedup_size).
The encoder reads the concatenated codes of a user's history; the decoder emits the next item's
num_levels + 1 codes, one step per code, each step scored only over that step's own code set.

Shared vocabulary: PAD, BOS, the hashed user buckets, then one block of ids per code level
(token id = offset[level] + code), so no two levels share an embedding.
"""

from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genrec.schema import Invalid, at_least

PAD = 0
BOS = 1
USER_OFFSET = 2
FFN_KINDS = ("gated-gelu", "relu")
ENCODERS = ("bidirectional", "causal")
PREFERENCE_HEADS = ("decoder", "pooled")
IntArray = int | np.ndarray


@dataclass
class ModelConfig:
    num_levels: int = 3
    codebook_size: int = 256
    dedup_size: int = 64
    d_model: int = 128
    num_heads: int = 6
    head_dim: int | None = 64
    d_ff: int = 1024
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    max_history_items: int = 50
    num_user_buckets: int = 0
    ffn: str = "gated-gelu"
    # ETEGRec's alignment adapters (0: none): the pooled encoder output into the tokenizer's
    # latent space, the decoder's first state into the item-embedding space.
    latent_adapter_dim: int = 0
    embedding_adapter_dim: int = 0
    # TokenRec's user tokens (0: none): the user's MQ codes, read before the history, one
    # token per level from a codebook of user_codebook_size.
    user_code_levels: int = 0
    user_codebook_size: int = 0
    # "causal": an item's tokens see only it and earlier items, so one pass over a sequence
    # encodes every prefix of it (item positions count from the oldest item); "bidirectional"
    # (the papers'): every history token sees the whole history (positions count back from the
    # newest item).
    encoder: str = "bidirectional"
    # TokenRec's preference vector: the decoder's first state, or the pooled encoder states.
    preference_head: str = "decoder"

    def __post_init__(self) -> None:
        at_least(self, 1, "num_levels", "codebook_size", "dedup_size", "d_model", "num_heads")
        at_least(self, 1, "d_ff", "max_history_items")
        at_least(self, 0, "encoder_layers", "decoder_layers", "num_user_buckets")
        at_least(self, 0, "latent_adapter_dim", "embedding_adapter_dim")
        at_least(self, 0, "user_code_levels", "user_codebook_size")
        if self.user_code_levels and self.num_user_buckets:
            raise Invalid("user_code_levels", "and num_user_buckets both read the user; choose one")
        if self.user_code_levels and not self.user_codebook_size:
            raise Invalid("user_codebook_size", "must be >= 1 when user_code_levels is")
        if not 0.0 <= self.dropout < 1.0:
            raise Invalid("dropout", f"must be in [0, 1), got {self.dropout}")
        if self.ffn not in FFN_KINDS:
            raise Invalid("ffn", f"must be one of {FFN_KINDS}, got {self.ffn!r}")
        if self.encoder not in ENCODERS:
            raise Invalid("encoder", f"must be one of {ENCODERS}, got {self.encoder!r}")
        if self.preference_head not in PREFERENCE_HEADS:
            raise Invalid(
                "preference_head",
                f"must be one of {PREFERENCE_HEADS}, got {self.preference_head!r}",
            )
        if self.head_dim is None and self.d_model % self.num_heads:
            raise Invalid(
                "d_model",
                f"({self.d_model}) is not divisible by num_heads ({self.num_heads}); set "
                "head_dim (T5's d_kv) explicitly",
            )
        if self.head_dim is not None:
            at_least(self, 1, "head_dim")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> "ModelConfig":
        """A named size preset, with any field overridden."""
        if name not in PRESETS:
            raise Invalid("preset", f"is unknown: {name!r}; choose one of {sorted(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise Invalid(unknown[0], "is not a model config key")
        return replace(cls(**PRESETS[name]), **overrides)

    @property
    def codes_per_item(self) -> int:
        return self.num_levels + 1

    @property
    def inner_dim(self) -> int:
        """Attention width; T5 decouples it from d_model (e.g. 6 heads x 64 on d_model 128)."""
        head_dim = self.head_dim if self.head_dim is not None else self.d_model // self.num_heads
        return self.num_heads * head_dim

    @property
    def max_codes(self) -> int:
        return max(self.codebook_size, self.dedup_size)

    @property
    def vocab_size(self) -> int:
        return self.level_offsets()[-1] + self.dedup_size

    def level_sizes(self) -> list[int]:
        return [self.codebook_size] * self.num_levels + [self.dedup_size]

    @property
    def user_tokens(self) -> int:
        """Tokens read before the history: the hashed user, or the user's codes."""
        return self.user_code_levels or (1 if self.num_user_buckets else 0)

    def level_offsets(self) -> list[int]:
        start = (
            USER_OFFSET + self.num_user_buckets + self.user_code_levels * self.user_codebook_size
        )
        return [start + level * self.codebook_size for level in range(self.codes_per_item)]


PRESETS: dict[str, dict] = {
    # The CPU default. No dropout: a model this small underfits rather than overfits, and on
    # CPU dropout (attention's above all) costs about as much as the matmuls it follows.
    "tiny": dict(
        d_model=64,
        num_heads=4,
        head_dim=16,
        d_ff=256,
        encoder_layers=2,
        decoder_layers=2,
        dropout=0.0,
    ),
    "small": dict(
        d_model=128, num_heads=6, head_dim=64, d_ff=1024, encoder_layers=4, decoder_layers=4
    ),
    "base": dict(
        d_model=768, num_heads=12, head_dim=64, d_ff=2048, encoder_layers=6, decoder_layers=6
    ),
    "large": dict(
        d_model=1024, num_heads=16, head_dim=64, d_ff=2816, encoder_layers=12, decoder_layers=12
    ),
}


def embedding_parameters(config: ModelConfig) -> int:
    """The lookup tables (codes, code positions, item positions) and the code head: the
    parameters a scaling law leaves out of N, since they cost no FLOPs per token."""
    d = config.d_model
    tables = d * (config.vocab_size + 2 * config.codes_per_item + config.max_history_items)
    return tables + config.codes_per_item * config.max_codes * d


def count_parameters(config: ModelConfig) -> int:
    """The parameter count of GenerativeRecommender(config), without building it."""
    d, inner = config.d_model, config.inner_dim
    attention = 4 * d * inner
    ffn = (3 if config.ffn == "gated-gelu" else 2) * d * config.d_ff
    encoder = config.encoder_layers * (attention + ffn + 2 * d)
    decoder = config.decoder_layers * (2 * attention + ffn + 3 * d)
    adapters = (d + 1) * (config.latent_adapter_dim + config.embedding_adapter_dim)
    causal = d * d if config.encoder == "causal" else 0  # the decoder's start projection
    return embedding_parameters(config) + encoder + decoder + 2 * d + adapters + causal


def flops_per_example(
    config: ModelConfig, history_items: IntArray, training: bool = True, targets: IntArray = 1
) -> IntArray:
    """Matmul FLOPs for one example: 2 per weight per token it touches, plus attention scores.

    Encoder weights see every history token, decoder weights the L+1 target steps of each of
    the `targets` decoded from one encoder pass (the causal encoder's window; their
    cross-attention counted over the whole window), and the cross-attention K/V projections
    the history tokens once. Training is 3x the forward. Arrays give one count per element.
    """
    d, inner = config.d_model, config.inner_dim
    ffn = (3 if config.ffn == "gated-gelu" else 2) * d * config.d_ff
    enc_tokens = history_items * config.codes_per_item + config.user_tokens
    dec_tokens = config.codes_per_item
    encoder = config.encoder_layers * (
        2 * (4 * d * inner + ffn) * enc_tokens + 4 * enc_tokens * enc_tokens * inner
    )
    decoder = config.decoder_layers * (
        2 * (6 * d * inner + ffn) * dec_tokens * targets
        + 2 * (2 * d * inner) * enc_tokens
        + 4 * dec_tokens * dec_tokens * inner * targets
        + 4 * dec_tokens * enc_tokens * inner * targets
    )
    head = 2 * config.max_codes * d * dec_tokens * targets
    forward = encoder + decoder + head
    return 3 * forward if training else forward


def batch_flops(config: ModelConfig, history: Tensor, target: Tensor) -> int:
    """Training FLOPs of a collated batch (history [B, H] item ids, -1 padding; target [B],
    or [B, H] for the causal encoder's windows, -1 where untrained), by `flops_per_example`."""
    items = (history >= 0).sum(-1).numpy()
    targets = (target >= 0).sum(-1).numpy() if target.dim() > 1 else 1
    return int(np.sum(flops_per_example(config, items, True, targets)))


def code_cross_entropy(logits: Tensor, target_codes: Tensor, temperature: float = 1.0) -> Tensor:
    """Mean cross-entropy over all L+1 steps, each against its own code set.

    temperature < 1 is LETTER's ranking-guided loss: dividing the logits sharpens the softmax,
    so negatives scoring close to the target weigh more in the gradient.
    """
    scaled = logits.float() / temperature
    return F.cross_entropy(scaled.flatten(0, 1), target_codes.flatten())


class Dropout(nn.Module):
    """Inverted dropout about three times faster than torch's on CPU (forward + backward).

    torch's CPU dropout draws one Bernoulli per element; on the training profile that costs
    more than the matmul it follows (16% of a step). Here every 64-bit random word gives four
    16-bit uniforms, so an element is kept with probability 1 - round(p * 2^16) / 2^16 (within
    8e-6 of 1 - p) and rescaled by exactly its inverse. Other devices' kernels are already fast.
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        dropped = min(round(p * 2**16), 2**16 - 1)
        self.threshold = dropped - 2**15
        self.scale = 2**16 / (2**16 - dropped)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(2**63), None)
        uniform = words.view(torch.int16)[: x.numel()].view(x.shape)
        keep = torch.where(uniform >= self.threshold, x.new_full((), self.scale), x.new_zeros(()))
        return x * keep


class Attention(nn.Module):
    """Multi-head attention whose K/V projection is separate so callers can cache it."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.dropout = config.dropout
        self.q = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.k = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.v = nn.Linear(config.d_model, config.inner_dim, bias=False)
        self.o = nn.Linear(config.inner_dim, config.d_model, bias=False)

    def split_heads(self, x: Tensor) -> Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, -1).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split_heads(self.k(x)), self.split_heads(self.v(x))

    def attend(
        self, x: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, causal: bool
    ) -> Tensor:
        """Queries from x against k/v; key_mask [B, S] (every query) or [B, Q, S] (each its
        own) is True where a key may be attended, or is an additive float [B, heads, Q, S]."""
        if key_mask is None or key_mask.dim() == 4:
            mask = key_mask  # none, or additive [B, heads, Q, S] (the causal encoder's)
        else:
            mask = key_mask[:, None] if key_mask.dim() == 3 else key_mask[:, None, None]
        out = F.scaled_dot_product_attention(
            self.split_heads(self.q(x)),
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )
        batch, _, length, _ = out.shape
        return self.o(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        gated = config.ffn == "gated-gelu"
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.gate = nn.Linear(config.d_model, config.d_ff, bias=False) if gated else None
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.gate is not None:
            hidden = F.gelu(self.gate(x), approximate="tanh") * self.wi(x)
        else:
            hidden = F.relu(self.wi(x))
        return self.wo(self.dropout(hidden))


class EncoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.attn = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.attn_norm(x)
        k, v = self.attn.project_kv(h)
        x = x + self.dropout(self.attn.attend(h, k, v, mask, causal=False))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class DecoderBlock(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self_norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.self_attn = Attention(config)
        self.cross_norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.cross_attn = Attention(config)
        self.ffn_norm = nn.RMSNorm(config.d_model, eps=1e-6)
        self.ffn = FeedForward(config)
        self.dropout = Dropout(config.dropout)

    def forward(
        self,
        x: Tensor,
        past: tuple[Tensor, Tensor],
        cross: tuple[Tensor, Tensor],
        memory_mask: Tensor,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Runs new positions x after the cached ones in past; returns x and the extended K/V.

        Several new positions at once (teacher forcing) need a causal mask and an empty past;
        a single new position attends to everything cached, which is causal by construction.
        Cross-attention treats a user's beams as more queries against that user's memory.
        """
        h = self.self_norm(x)
        k, v = self.self_attn.project_kv(h)
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        x = x + self.dropout(self.self_attn.attend(h, k, v, None, causal=x.size(1) > 1))
        h = self.cross_norm(x)
        rows, length, width = h.shape
        per_user = h.reshape(memory_mask.size(0), -1, width)
        if memory_mask.dim() > 2 and memory_mask.size(-2) > 1 and length > 1:
            # Masks per decoding row: each of a row's positions sees what the row sees.
            memory_mask = memory_mask.repeat_interleave(length, dim=-2)
        attended = self.cross_attn.attend(per_user, *cross, memory_mask, causal=False)
        x = x + self.dropout(attended.reshape(rows, length, width))
        return x + self.dropout(self.ffn(self.ffn_norm(x))), (k, v)


@dataclass
class DecoderCache:
    """Cross-attention K/V once per user, self-attention K/V per decoding row.

    Rows are users x beams, grouped by user (row r is beam r % beams of user r // beams), so a
    user's beams share its cross-attention K/V instead of each holding a copy.
    """

    cross_k: list[Tensor]
    cross_v: list[Tensor]
    memory_mask: Tensor
    self_k: list[Tensor]
    self_v: list[Tensor]
    beams: int = 1
    start: Tensor | None = None  # causal encoder: added to each row's first decoder input

    @property
    def length(self) -> int:
        """How many decoder positions are cached, i.e. the step the next decode_step predicts."""
        return self.self_k[0].size(2) if self.self_k else 0

    @property
    def num_users(self) -> int:
        return self.memory_mask.size(0)

    @property
    def batch_size(self) -> int:
        """Decoding rows: users x beams."""
        return self.num_users * self.beams

    def select_beams(self, index: Tensor) -> "DecoderCache":
        """The cache for beams `index` [users, new_beams] of each user, e.g. the survivors."""
        users, beams = index.shape
        rows = (torch.arange(users, device=index.device)[:, None] * self.beams + index).flatten()
        return DecoderCache(
            cross_k=self.cross_k,
            cross_v=self.cross_v,
            memory_mask=self.memory_mask,
            self_k=[t.index_select(0, rows) for t in self.self_k],
            self_v=[t.index_select(0, rows) for t in self.self_v],
            beams=beams,
            start=None if self.start is None else self.start.index_select(0, rows),
        )


def kept(rows: Tensor, keep: Tensor | None) -> Tensor:
    """The output rows [N, ...] of decoding rows [B * Q, ...] marked in `keep` (None: all)."""
    return rows if keep is None else rows[keep]


def adapter(d_model: int, width: int) -> nn.Linear | None:
    return nn.Linear(d_model, width) if width else None


class GenerativeRecommender(nn.Module):
    """Encoder over history codes, decoder over the next item's codes.

    Shapes are always checked; code values, padding and user ids only with `debug` (each such
    check is a host-device sync). genrec checks ids where they enter instead: the semantic-ID
    tables when loaded, the item ids of every shard as it is read.
    """

    def __init__(self, config: ModelConfig, debug: bool = False):
        super().__init__()
        self.config, self.debug = config, debug
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        self.enc_level = nn.Embedding(config.codes_per_item, d)
        self.item_position = nn.Embedding(config.max_history_items, d)
        self.dec_level = nn.Embedding(config.codes_per_item, d)
        self.encoder = nn.ModuleList(EncoderBlock(config) for _ in range(config.encoder_layers))
        self.decoder = nn.ModuleList(DecoderBlock(config) for _ in range(config.decoder_layers))
        self.enc_norm = nn.RMSNorm(d, eps=1e-6)
        self.dec_norm = nn.RMSNorm(d, eps=1e-6)
        self.head = nn.Parameter(torch.empty(config.codes_per_item, config.max_codes, d))
        self.dropout = Dropout(config.dropout)
        self.latent_adapter = adapter(d, config.latent_adapter_dim)
        self.embedding_adapter = adapter(d, config.embedding_adapter_dim)
        # The causal encoder's positions count from the oldest item, so nothing would tell the
        # decoder which item is the newest: its first input gets the newest item's state, and
        # every attention a fixed per-head penalty by how many items back a key is (ALiBi's
        # slopes; the user's tokens are never penalised). Fixed, so the additive mask needs no
        # gradient and attention keeps torch's fused kernel (a learned bias forces its math path).
        causal = config.encoder == "causal"
        self.start = nn.Linear(d, d, bias=False) if causal else None
        slopes = 2.0 ** (-8.0 * torch.arange(1, config.num_heads + 1) / config.num_heads)
        self.register_buffer("recency_slopes", slopes if causal else None, persistent=False)
        sizes = torch.tensor(config.level_sizes())
        self.register_buffer("level_sizes", sizes, persistent=False)
        self.register_buffer(
            "level_offsets", torch.tensor(config.level_offsets()), persistent=False
        )
        valid = torch.arange(config.max_codes)[None, :] < sizes[:, None]
        self.register_buffer("valid_codes", valid, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.head, std=0.02)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_example(self, history_items: int, training: bool = True) -> int:
        return flops_per_example(self.config, history_items, training)

    def mfu(
        self, samples_per_second: float, peak_flops: float, history_items: int | None = None
    ) -> float:
        """Model FLOPs utilisation of a training run; history length defaults to the maximum."""
        items = self.config.max_history_items if history_items is None else history_items
        return samples_per_second * self.flops_per_example(items) / peak_flops

    def encode(self, history_codes: Tensor, user: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """History [B, H, L+1] (padding items all -1, any order of padding) -> memory, mask.

        Items are oldest first. The bidirectional encoder's item-position embedding counts back
        from the newest real item, the causal encoder's on from the oldest, so how much padding
        surrounds a history does not change its encoding. `user` [B] is read only by a model
        that reads the user (its first tokens are the hashed user or the user's codes).
        """
        valid = self._check_history(history_codes)
        user = self._check_user(user, history_codes.size(0))
        batch, items, width = history_codes.shape
        causal = self.config.encoder == "causal"
        tokens = torch.where(valid[..., None], history_codes + self.level_offsets, PAD)
        if causal:
            position = (valid.cumsum(1) - 1).clamp(min=0)
        else:
            position = (valid.flip(1).cumsum(1).flip(1) - 1).clamp(min=0)
        # Every weight is read through its module's forward: ZeRO-3 traces parameter fetches by
        # module, and a weight read outside it breaks the trace once a resumed run gathers it.
        levels = torch.arange(width, device=tokens.device)
        x = self.embed(tokens) + self.enc_level(levels) + self.item_position(position)[:, :, None]
        x = x.view(batch, items * width, -1)
        mask = valid.repeat_interleave(width, dim=1)
        if user is not None:
            x = torch.cat([self.embed(self._user_tokens(user)), x], dim=1)
            mask = torch.cat([mask.new_ones(batch, user.size(1)), mask], dim=1)
        elif self.debug and not valid.any(1).all():
            raise ValueError("every history needs at least one item when no user is given")
        if causal:
            token_items = self.token_items(items, mask.device)
            seen = self.visible(mask, token_items, token_items)
            attention = self.biased(seen, token_items, token_items)
        else:
            attention = mask
        x = self.dropout(x)
        for block in self.encoder:
            x = block(x, attention)
        return self.enc_norm(x), mask

    def token_items(self, items: int, device: torch.device) -> Tensor:
        """The history item [S] each encoder token belongs to; -1 for the user's tokens."""
        item = torch.arange(items, device=device).repeat_interleave(self.config.codes_per_item)
        return torch.cat([item.new_full((self.config.user_tokens,), -1), item])

    def biased(self, seen: Tensor, items: Tensor, token_items: Tensor) -> Tensor:
        """The additive mask [B, heads, Q, S] of queries at history items `items` ([Q], or
        [B, Q] where rows differ) over keys of items `token_items` [S]: each head's penalty,
        its slope times how many items back the key is (the user's tokens: none), -inf where
        `seen` [B, Q, S] is False."""
        back = torch.where(token_items < 0, 0, items[..., None] - token_items).clamp(min=0)
        bias = -self.recency_slopes[:, None, None] * back[..., None, :, :]
        return (bias if bias.dim() == 4 else bias[None]).masked_fill(~seen[:, None], float("-inf"))

    @staticmethod
    def visible(mask: Tensor, token_items: Tensor, items: Tensor) -> Tensor:
        """[B, Q, S]: for queries at history items `items` ([Q], or [B, Q] where rows differ),
        the real encoder tokens (`mask` [B, S], of items `token_items` [S]) of that item and
        earlier ones, the user's tokens included. A query with none (padding) gets every real
        token instead, so that no attention row is empty: its output is never read."""
        seen = (token_items <= items[..., None]) & mask[:, None, :]
        return torch.where(seen.any(-1, keepdim=True), seen, mask[:, None, :])

    def init_cache(self, memory: Tensor, memory_mask: Tensor, beams: int = 1) -> DecoderCache:
        """Projects the encoder memory to every layer's cross-attention K/V once, for `beams`
        decoding rows per history; `memory_mask` [B, S] is what every row sees, or [B, beams,
        S] what each row sees (each its own prefix)."""
        cross = [block.cross_attn.project_kv(memory) for block in self.decoder]
        batch, heads = memory.size(0), self.config.num_heads
        head_dim = self.config.inner_dim // heads
        empty = memory.new_zeros(batch * beams, heads, 0, head_dim)
        start = None
        if self.start is not None:
            rows = memory_mask[:, None] if memory_mask.dim() == 2 else memory_mask
            last = (rows * torch.arange(rows.size(-1), device=rows.device)).argmax(-1)
            newest = memory.gather(1, last[..., None].expand(-1, -1, memory.size(-1)))
            start = self.start(newest).flatten(0, 1)
            start = start if rows.size(1) > 1 else start.repeat_interleave(beams, dim=0)
            items = (memory.size(1) - self.config.user_tokens) // self.config.codes_per_item
            token_items = self.token_items(items, memory.device)
            # Each row's queries stand at the newest item it sees.
            memory_mask = self.biased(rows, token_items[last], token_items)
        return DecoderCache(
            cross_k=[k for k, _ in cross],
            cross_v=[v for _, v in cross],
            memory_mask=memory_mask,
            self_k=[empty] * len(self.decoder),
            self_v=[empty] * len(self.decoder),
            beams=beams,
            start=start,
        )

    def decode_step(self, cache: DecoderCache, prev_codes: Tensor) -> Tensor:
        """Logits [B, codes of step t] for the next code, given the t codes chosen so far.

        Extends the cache by exactly one position in place; earlier positions are not rerun.
        """
        step = cache.length
        if step >= self.config.codes_per_item:
            raise ValueError(f"all {self.config.codes_per_item} codes are already decoded")
        if prev_codes.dim() != 2 or prev_codes.shape != (cache.batch_size, step):
            raise ValueError(
                f"prev_codes must have shape [{cache.batch_size}, {step}] (the codes decoded "
                f"so far), got {list(prev_codes.shape)}"
            )
        self._check_codes(prev_codes, "prev_codes")
        if step == 0:
            token = prev_codes.new_full((cache.batch_size, 1), BOS)
        else:
            token = prev_codes[:, -1:] + self.level_offsets[step - 1]
        hidden = self._decode(cache, token)
        return self.step_logits(hidden[:, 0], step)

    def step_logits(self, hidden: Tensor, step: int) -> Tensor:
        """Decoder states [..., d] at step `step` -> logits over that step's codes only."""
        size = self.config.level_sizes()[step]
        return hidden @ self.head[step, :size].T

    def forward(
        self,
        history_codes: Tensor,
        target_codes: Tensor | None,
        user: Tensor | None = None,
        aligned: bool = False,
        prefixes: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced logits [B, L+1, max(K, D)]; codes outside a step's set are -inf.

        With the causal encoder, targets may be [B, H, L+1], one per history item (the item
        after it; all -1 where none is trained): every trained prefix of the history is
        decoded at once, each target's cross-attention limited to its own prefix, and the
        outputs are one row per trained target [N, L+1, max(K, D)], in the order of
        `target_codes[target_codes[..., 0] >= 0]`. Untrained rows cost nothing.

        With `aligned`, also the adapters' views (ETEGRec), per target: the encoder output
        mean-pooled over the real tokens it sees in the tokenizer's latent space, and the
        decoder's first state in the item-embedding space. Without targets, only that last
        view (TokenRec's preference vector, one decoder step; `prefixes` as `preference`)."""
        if target_codes is None:
            return self.preference(history_codes, user, prefixes)
        memory, mask = self.encode(history_codes, user)
        trained = self._check_targets(target_codes, history_codes)
        width = self.config.codes_per_item
        seen, keep, position = self._rows(mask, trained)
        cache = self._decoder_cache(memory, mask, seen, position)
        if position is not None:
            target_codes = target_codes.gather(1, position[..., None].expand(-1, -1, width))
        flat = target_codes.reshape(-1, width)
        bos = flat.new_full((flat.size(0), 1), BOS)
        shifted = flat[:, :-1].clamp(min=0) + self.level_offsets[:-1]
        hidden = self._decode(cache, torch.cat([bos, shifted], dim=1))
        logits = torch.einsum("btd,tkd->btk", hidden, self.head)
        logits = logits.masked_fill(~self.valid_codes, float("-inf"))
        if not aligned:
            return kept(logits, keep)
        if self.latent_adapter is None or self.embedding_adapter is None:
            raise ValueError("aligned outputs need latent_adapter_dim and embedding_adapter_dim")
        pooled = self._pooled(memory, seen).flatten(0, 1)
        return (
            kept(logits, keep),
            self.latent_adapter(kept(pooled, keep)),
            self.embedding_adapter(kept(hidden[:, 0], keep)),
        )

    @staticmethod
    def _trained_rows(trained: Tensor) -> tuple[Tensor, Tensor]:
        """The history positions [B, R] of each row's trained prefixes (`trained` [B, H]),
        oldest first, R the most any row trains, and which of them are real [B, R] (the
        rest repeat a position and are dropped)."""
        count = trained.sum(1)
        order = torch.sort((~trained).to(torch.uint8), dim=1, stable=True).indices
        rows = int(count.max()) if count.numel() else 0
        return order[:, :rows], torch.arange(rows, device=trained.device) < count[:, None]

    def _rows(
        self, mask: Tensor, trained: Tensor | None
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The encoder tokens [B, Q, S] each output row sees, which rows [B * Q] are outputs
        (None: all), and the rows' history positions [B, Q]: one row per history seeing all
        of it (`trained` None), or, reading every trained prefix at once (causal encoder), one
        per trained prefix seeing only that prefix."""
        if trained is None:
            return mask[:, None], None, None
        position, keep = self._trained_rows(trained)
        items = (mask.size(1) - self.config.user_tokens) // self.config.codes_per_item
        seen = self.visible(mask, self.token_items(items, mask.device), position)
        return seen, keep.flatten(), position

    def _decoder_cache(
        self, memory: Tensor, mask: Tensor, seen: Tensor, position: Tensor | None
    ) -> DecoderCache:
        """The decoder's cache for the rows of `_rows`."""
        if position is None:
            return self.init_cache(memory, mask)
        return self.init_cache(memory, seen, beams=position.size(1))

    @staticmethod
    def _pooled(memory: Tensor, seen: Tensor) -> Tensor:
        """The mean [B, Q, d] of the encoder states each row sees."""
        weights = seen.type_as(memory)
        return (weights @ memory) / weights.sum(-1, keepdim=True).clamp(min=1)

    def preference(
        self, history_codes: Tensor, user: Tensor | None = None, prefixes: Tensor | None = None
    ) -> Tensor:
        """TokenRec's query for nearest-neighbour retrieval in the item-embedding space [B,
        embedding_adapter_dim]: the decoder's first state (BOS over the encoded history), or
        with `preference_head="pooled"` the mean of the encoder's states. With `prefixes`
        [B, H] (causal encoder), one per prefix marked True, over that prefix [N, ...]."""
        if self.embedding_adapter is None:
            raise ValueError("a preference vector needs embedding_adapter_dim > 0")
        memory, mask = self.encode(history_codes, user)
        if prefixes is not None:
            self._needs_causal()
        seen, keep, position = self._rows(mask, prefixes)
        if self.config.preference_head == "pooled":
            pooled = self._pooled(memory, seen).flatten(0, 1)
            return self.embedding_adapter(kept(pooled, keep))
        cache = self._decoder_cache(memory, mask, seen, position)
        bos = torch.full((cache.batch_size, 1), BOS, dtype=torch.long, device=memory.device)
        hidden = self._decode(cache, bos)
        return self.embedding_adapter(kept(hidden[:, 0], keep))

    def loss(
        self,
        history_codes: Tensor,
        target_codes: Tensor,
        user: Tensor | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        return code_cross_entropy(
            self(history_codes, target_codes, user), target_codes, temperature
        )

    def _decode(self, cache: DecoderCache, tokens: Tensor) -> Tensor:
        """Runs tokens [B, T] as decoder positions cache.length.., extending the cache."""
        start = cache.length
        levels = torch.arange(start, start + tokens.size(1), device=tokens.device)
        x = self.embed(tokens) + self.dec_level(levels)
        if start == 0 and cache.start is not None:
            x = torch.cat([x[:, :1] + cache.start[:, None], x[:, 1:]], dim=1)
        x = self.dropout(x)
        for i, block in enumerate(self.decoder):
            past = (cache.self_k[i], cache.self_v[i])
            cross = (cache.cross_k[i], cache.cross_v[i])
            x, (cache.self_k[i], cache.self_v[i]) = block(x, past, cross, cache.memory_mask)
        return self.dec_norm(x)

    def _check_codes(self, codes: Tensor, name: str) -> None:
        """Codes [..., n] with n <= L+1, each within its level's range (values: debug only)."""
        if codes.dtype != torch.long:
            raise ValueError(f"{name} must be int64 (torch.long), got {codes.dtype}")
        if not self.debug:
            return
        sizes = self.level_sizes[: codes.size(-1)]
        bad = (codes < 0) | (codes >= sizes)
        if bad.any():
            where = bad.nonzero()[0].tolist()
            level = where[-1]
            raise ValueError(
                f"{name}{where} = {codes[tuple(where)].item()} is outside level {level}'s "
                f"code range [0, {sizes[level].item()})"
            )

    def _check_targets(self, target_codes: Tensor, history_codes: Tensor) -> Tensor | None:
        """Checks the targets: one per history [B, L+1] (returns None), or, with the causal
        encoder, one per history item [B, H, L+1] (returns which are trained, [B, H])."""
        width = self.config.codes_per_item
        batch, items = history_codes.shape[:2]
        every = target_codes.dim() == 3
        shape = (batch, items, width) if every else (batch, width)
        if target_codes.shape != shape:
            raise ValueError(
                f"target_codes must have shape [batch={batch}, L+1={width}], or with the causal "
                f"encoder [batch={batch}, items={items}, L+1={width}], got "
                f"{list(target_codes.shape)}"
            )
        self._check_codes(target_codes.clamp(min=0) if every else target_codes, "target_codes")
        if not every:
            return None
        self._needs_causal()
        return target_codes[..., 0] >= 0

    def _needs_causal(self) -> None:
        """Decoding every prefix of the histories at once needs the causal encoder."""
        if self.config.encoder != "causal":
            raise ValueError(
                "decoding every prefix at once needs the causal encoder (encoder='causal'): "
                "the bidirectional one lets each item see later ones"
            )

    def _check_history(self, history_codes: Tensor) -> Tensor:
        """Checks history codes and returns which items are real (not padding)."""
        width = self.config.codes_per_item
        if history_codes.dim() != 3 or history_codes.size(-1) != width:
            raise ValueError(
                f"history_codes must have shape [batch, items, L+1={width}], "
                f"got {list(history_codes.shape)}"
            )
        valid = history_codes[..., 0] >= 0
        self._check_codes(history_codes.clamp(min=0), "history_codes")
        if not self.debug:
            return valid
        if ((history_codes >= 0) != valid[..., None]).any():
            raise ValueError("a padding item in history_codes must be -1 in every code position")
        longest = int(valid.sum(1).max()) if valid.numel() else 0
        if longest > self.config.max_history_items:
            raise ValueError(
                f"a history has {longest} items but max_history_items is "
                f"{self.config.max_history_items}; keep only the most recent items"
            )
        return valid

    def _check_user(self, user: Tensor | None, batch: int) -> Tensor | None:
        """What a model that reads the user gets, as [B, tokens]: the user ids (user buckets)
        or the users' codes (user_code_levels); None for a model that reads no user."""
        levels = self.config.user_code_levels
        if not self.config.user_tokens:
            return None
        shape, what = ((batch, levels), "codes") if levels else ((batch,), "ids")
        if user is None or user.dtype != torch.long or user.shape != shape:
            got = "None" if user is None else f"{user.dtype} {list(user.shape)}"
            raise ValueError(
                f"this model reads the users' {what}: an int64 tensor of shape {list(shape)}, "
                f"got {got}"
            )
        if self.debug and (
            (user < 0).any() or (levels and (user >= self.config.user_codebook_size).any())
        ):
            raise ValueError(f"user {what} out of range")
        return user.view(batch, -1)

    def _user_tokens(self, user: Tensor) -> Tensor:
        """[B, tokens] user ids or codes -> vocabulary ids."""
        if self.config.user_code_levels:
            levels = torch.arange(user.size(1), device=user.device)
            start = USER_OFFSET + self.config.num_user_buckets
            return start + levels * self.config.user_codebook_size + user
        return USER_OFFSET + user % self.config.num_user_buckets
