"""Shared helpers for comparing genrec's model with Hugging Face's T5ForConditionalGeneration.

The comparisons only mean something if both sides get the same dimensions, the same inputs and,
for beam search, the same weights; this module builds all three in one place.
Loaded by path from the benchmark scripts (see `load_helpers` there), not as a package.
"""

import os
import platform
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode
from transformers import LogitsProcessor, T5Config, T5ForConditionalGeneration

from genrec.trainer.model import BOS, PAD, GenerativeRecommender, ModelConfig


def hardware() -> str:
    """One line to print next to every figure: timings mean little without it.

    The benchmarks run on the CPU only, the target the goals are stated for.
    """
    return (
        f"hardware: device cpu ({platform.machine()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def matmul_flops(run: Callable[[], object]) -> int:
    """Matmul FLOPs of one call of `run`, as torch counts them.

    torch has no count for its CPU attention kernel, so attention scores are left out: rates
    derived from this count err low, ceilings derived from it err high.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops()


def matmul_rate(rows: int, inner: int, outer: int, backward: bool, repeats: int = 20) -> float:
    """FLOP/s this machine reaches on one [rows, inner] x [inner, outer] matmul (and, for
    training, its two backward matmuls): at the model's widest layer shape, no implementation
    of the model runs its matmuls faster, so it caps the samples/s any of them can reach."""
    x = torch.randn(rows, inner, requires_grad=backward)
    w = torch.randn(outer, inner, requires_grad=backward)
    grad = torch.randn(rows, outer)

    def once() -> None:
        y = x @ w.T
        if backward:
            y.backward(grad)

    once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    seconds = (time.perf_counter() - start) / repeats
    return (3 if backward else 1) * 2 * rows * inner * outer / seconds


def t5_config(config: ModelConfig) -> T5Config:
    """A T5 v1.1-style config with genrec's dimensions and vocabulary.

    EOS is PAD, a token neither model ever generates, so HF never stops a beam early.
    """
    return T5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.inner_dim // config.num_heads,
        d_ff=config.d_ff,
        num_heads=config.num_heads,
        num_layers=config.encoder_layers,
        num_decoder_layers=config.decoder_layers,
        feed_forward_proj="gated-gelu" if config.ffn == "gated-gelu" else "relu",
        dropout_rate=config.dropout,
        tie_word_embeddings=False,
        decoder_start_token_id=BOS,
        pad_token_id=PAD,
        eos_token_id=PAD,
    )


def build_t5(config: ModelConfig) -> T5ForConditionalGeneration:
    """T5ForConditionalGeneration with genrec's dimensions and an untied output head.

    transformers 5 ties lm_head to the shared embedding even with tie_word_embeddings=False
    (the flag now only turns off output scaling), so the head is untied here by hand: T5 v1.1,
    like genrec, has a separate output projection.
    """
    model = T5ForConditionalGeneration(t5_config(config))
    model.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
    model.lm_head.weight.data.copy_(model.shared.weight.data)
    return model


def item_codes(config: ModelConfig, num_items: int, rng: np.random.Generator) -> np.ndarray:
    """Unique semantic IDs [num_items, L+1], TIGER-style: L skewed codes plus a dedup code.

    Codes follow a Zipf-like law (as real RQ codebooks are unevenly used), so some L-code
    prefixes collide and get dedup codes 0, 1, 2, ...; a prefix already holding dedup_size
    items is redrawn.
    """
    size, levels = config.codebook_size, config.num_levels
    weights = 1.0 / np.arange(1, size + 1)
    probs = weights / weights.sum()
    ranks = [rng.permutation(size) for _ in range(levels)]  # popular codes spread over the book
    used: dict[tuple[int, ...], int] = {}
    rows: list[tuple[int, ...]] = []
    while len(rows) < num_items:
        draws = np.stack([ranks[lv][rng.choice(size, num_items, p=probs)] for lv in range(levels)])
        for prefix in map(tuple, draws.T.tolist()):
            dedup = used.get(prefix, 0)
            if dedup < config.dedup_size and len(rows) < num_items:
                used[prefix] = dedup + 1
                rows.append((*prefix, dedup))
    return np.asarray(rows, dtype=np.int64)


def random_histories(codes: np.ndarray, users: int, items: int, rng: np.random.Generator) -> Tensor:
    """Histories [users, items, L+1] of random catalogue items, 1..items long, left-padded.

    Padding items are -1 in every code, genrec's convention; lengths vary as in real logs.
    """
    picks = codes[rng.integers(0, len(codes), (users, items))]
    lengths = rng.integers(1, items + 1, users)
    picks[np.arange(items)[None, :] < (items - lengths)[:, None]] = -1
    return torch.from_numpy(picks)


def t5_inputs(config: ModelConfig, history: Tensor, target: Tensor | None = None) -> dict:
    """genrec batches as T5 inputs: history tokens flattened to [B, H*(L+1)] plus a mask.

    Token ids are genrec's own (code + level offset), so both models read identical tokens;
    padding items become PAD and are masked out.
    """
    offsets = torch.tensor(config.level_offsets())
    valid = history >= 0
    tokens = torch.where(valid, history + offsets, PAD).flatten(1)
    inputs = {"input_ids": tokens, "attention_mask": valid.flatten(1).long()}
    if target is not None:
        inputs["labels"] = target + offsets
    return inputs


def copy_decoder(model: GenerativeRecommender) -> T5ForConditionalGeneration:
    """An HF T5 whose decoder and head compute exactly genrec's next-code logits.

    Only the decoder is copied: callers pass genrec's encoder output as `encoder_outputs`,
    so HF's encoder weights never run. Differences bridged here:
    - T5 does not scale attention scores; genrec (SDPA) divides by sqrt(head_dim), so q is
      pre-scaled. T5's relative bias is zeroed: genrec's decoder has none.
    - genrec adds a per-step embedding dec_level[t]; a decoder input token fixes its step
      (BOS -> 0, a level-l token -> l + 1), so it is folded into a decoder-only token table.
    - genrec has one head per step; lm_head row offset[t] + c is head[t, c], other rows zero.
    The per-step normalisation over a level's own codes is `LevelLogSoftmax`'s job.
    """
    config = model.config
    hf = build_t5(config).eval()
    scale = (config.inner_dim // config.num_heads) ** -0.5
    offsets, sizes = config.level_offsets(), config.level_sizes()
    with torch.no_grad():
        for block, ours in zip(hf.decoder.block, model.decoder, strict=True):
            self_attn, cross, ffn = block.layer
            for theirs, mine in (
                (self_attn.SelfAttention, ours.self_attn),
                (cross.EncDecAttention, ours.cross_attn),
            ):
                theirs.q.weight.copy_(mine.q.weight * scale)
                for name in ("k", "v", "o"):
                    getattr(theirs, name).weight.copy_(getattr(mine, name).weight)
            self_attn.layer_norm.weight.copy_(ours.self_norm.weight)
            cross.layer_norm.weight.copy_(ours.cross_norm.weight)
            ffn.layer_norm.weight.copy_(ours.ffn_norm.weight)
            dense = ffn.DenseReluDense
            if ours.ffn.gate is not None:
                dense.wi_0.weight.copy_(ours.ffn.gate.weight)
                dense.wi_1.weight.copy_(ours.ffn.wi.weight)
            else:
                dense.wi.weight.copy_(ours.ffn.wi.weight)
            dense.wo.weight.copy_(ours.ffn.wo.weight)
        hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        hf.decoder.final_layer_norm.weight.copy_(model.dec_norm.weight)

        table = model.embed.weight.detach().clone()
        table[BOS] += model.dec_level.weight[0]
        for level in range(config.num_levels):  # the last (dedup) level is never an input
            block = slice(offsets[level], offsets[level] + sizes[level])
            table[block] += model.dec_level.weight[level + 1]
        hf.decoder.set_input_embeddings(nn.Embedding.from_pretrained(table, freeze=False))

        hf.lm_head.weight.zero_()
        for step, (offset, size) in enumerate(zip(offsets, sizes, strict=True)):
            hf.lm_head.weight[offset : offset + size] = model.head[step, :size]
    return hf


class LevelLogSoftmax(LogitsProcessor):
    """Renormalises step t's scores over level t's tokens only and rules out every other token.

    HF's beam search log-softmaxes over the whole vocabulary before any processor runs, while
    genrec normalises each step over its own code set; subtracting the block's logsumexp turns
    the first into the second. It must run before the trie constraint, which would otherwise
    shrink the normaliser to the allowed children.
    """

    def __init__(self, config: ModelConfig):
        self.blocks = list(zip(config.level_offsets(), config.level_sizes(), strict=True))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        offset, size = self.blocks[input_ids.shape[1] - 1]  # input_ids start with BOS
        block = scores[:, offset : offset + size]
        out = torch.full_like(scores, float("-inf"))
        out[:, offset : offset + size] = block - block.logsumexp(-1, keepdim=True)
        return out


def allowed_tokens(config: ModelConfig, codes: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    """Trie of item IDs as prefix tokens (without BOS) -> the token ids that may follow."""
    tokens = codes + np.asarray(config.level_offsets())
    children: dict[tuple[int, ...], set[int]] = {}
    for row in tokens.tolist():
        for depth in range(len(row)):
            children.setdefault(tuple(row[:depth]), set()).add(row[depth])
    return {prefix: sorted(ids) for prefix, ids in children.items()}
