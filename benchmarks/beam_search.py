"""Constrained beam search users/s: genrec's batched trie search vs Hugging Face generate().

Command:
    python benchmarks/beam_search.py [--preset small] [--items 10000] [--users 256]
        [--hf-users 32] [--beam 20] [--batch 256] [--hf-batch 8] [--threads N]

Both sides run the same model: genrec's decoder weights are copied into a
T5ForConditionalGeneration (benchmarks/hf_t5.py) and HF decodes from genrec's encoder output,
restricted to valid IDs by HF's PrefixConstrainedLogitsProcessor. Both timings include
encoding. HF is slow, so it is timed on the first --hf-users users only; users/s is comparable
and the ratio genrec / HF is the figure to watch (goal >= 10x). The share of those users whose
top-10 agree checks that the two really rank alike. The `encode only` row is genrec's encoder
alone on every user: since both sides include it, it caps how large the ratio can get. The
ceiling line bounds the whole search the same way: genrec's matmul FLOPs per user over the
FLOP/s of the model's feed-forward matmul timed alone at the decoder's batch of rows.

On a machine shared with other jobs, pass --threads 1: torch's default of one thread per core
then fights the other load and small ops stall (seen here: 7 s instead of 0.4 s per step).
"""

import argparse
import sys
import time

import hf_t5
import numpy as np
import torch
from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor
from transformers.modeling_outputs import BaseModelOutput

from genrec.trainer.beam_search import beam_search
from genrec.trainer.model import BOS, PAD, GenerativeRecommender, ModelConfig
from genrec.trainer.trie import ItemTrie


class HFSearch:
    """HF generate() with genrec's encoder in front and item ids mapped back from codes."""

    def __init__(self, model: GenerativeRecommender, codes: np.ndarray, beam: int):
        self.model, self.beam = model, beam
        self.config = model.config
        self.hf = hf_t5.copy_decoder(model).eval()
        self.allowed = hf_t5.allowed_tokens(self.config, codes)
        self.item_of = {tuple(row): item for item, row in enumerate(codes.tolist())}
        self.offsets = torch.tensor(self.config.level_offsets())

    def prefix_allowed_tokens(self, batch_id: int, tokens: torch.Tensor) -> list[int]:
        """Children of the beam's prefix (tokens after BOS); a dead beam may only end (PAD)."""
        return self.allowed.get(tuple(tokens[1:].tolist()), [PAD])

    @torch.no_grad()
    def __call__(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top `beam` items per user and their summed log-probs, best first, like beam_search.

        The trie constraint is HF's own PrefixConstrainedLogitsProcessor, exactly what
        prefix_allowed_tokens_fn= would build, but placed after LevelLogSoftmax: generate()
        runs its own processors first, and masking before renormalising would rank by
        probabilities renormalised over each prefix's children instead of over the level.
        """
        memory, mask = self.model.encode(history)
        processors = LogitsProcessorList(
            [
                hf_t5.LevelLogSoftmax(self.config),
                PrefixConstrainedLogitsProcessor(self.prefix_allowed_tokens, self.beam),
            ]
        )
        out = self.hf.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=mask.long(),
            logits_processor=processors,
            num_beams=self.beam,
            num_return_sequences=self.beam,
            max_new_tokens=self.config.codes_per_item,
            do_sample=False,
            length_penalty=0.0,  # report plain summed log-probs; equal lengths rank alike anyway
            return_dict_in_generate=True,
            output_scores=True,
        )
        codes = (out.sequences[:, 1:] - self.offsets).tolist()
        items = torch.tensor([self.item_of.get(tuple(row), -1) for row in codes])
        shape = (history.size(0), self.beam)
        return items.view(shape), out.sequences_scores.view(shape)


def check_same_logits(search: HFSearch, history: torch.Tensor, target: torch.Tensor) -> float:
    """Largest gap between the two models' teacher-forced logits on each step's own codes."""
    model, config = search.model, search.config
    with torch.no_grad():
        ours = model(history, target)
        memory, mask = model.encode(history)
        shifted = (target[:, :-1] + search.offsets[:-1]).long()
        decoder_input = torch.cat([torch.full_like(target[:, :1], BOS), shifted], dim=1)
        theirs = search.hf(
            encoder_outputs=BaseModelOutput(last_hidden_state=memory),
            attention_mask=mask.long(),
            decoder_input_ids=decoder_input,
        ).logits
    gaps = [
        (theirs[:, step, offset : offset + size] - ours[:, step, :size]).abs().max().item()
        for step, (offset, size) in enumerate(
            zip(config.level_offsets(), config.level_sizes(), strict=True)
        )
    ]
    return max(gaps)


def timed(search, history: torch.Tensor, batch: int) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Seconds to search every user in batches, and the stacked (items, scores)."""
    items, scores = [], []
    start = time.perf_counter()
    for first in range(0, history.size(0), batch):
        i, s = search(history[first : first + batch])
        items.append(i)
        scores.append(s)
    return time.perf_counter() - start, torch.cat(items), torch.cat(scores)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base", "large"])
    parser.add_argument("--items", type=int, default=10_000, help="catalogue size")
    parser.add_argument("--users", type=int, default=256, help="users genrec searches")
    parser.add_argument("--hf-users", type=int, default=32, help="the first N users, for HF")
    parser.add_argument("--history", type=int, default=20, help="history items per user")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--top", type=int, default=10, help="ranks compared for agreement")
    parser.add_argument("--batch", type=int, default=256, help="users per genrec call")
    parser.add_argument("--hf-batch", type=int, default=8, help="users per generate() call")
    parser.add_argument("--threads", type=int, default=None, help="default: torch's own")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    hf_users = min(args.hf_users, args.users)

    config = ModelConfig.preset(args.preset, max_history_items=args.history)
    codes = hf_t5.item_codes(config, args.items, rng)
    history = hf_t5.random_histories(codes, args.users, args.history, rng)
    model = GenerativeRecommender(config).eval()
    trie = ItemTrie.from_codes(codes)
    search = HFSearch(model, codes, args.beam)

    probe = min(16, args.users)
    target = torch.from_numpy(codes[rng.integers(0, len(codes), probe)])
    gap = check_same_logits(search, history[:probe], target)
    assert gap < 1e-4, f"HF's copy computes different logits (max gap {gap:.2e})"

    def genrec(users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return beam_search(model, trie, users, args.beam)

    warm = history[: min(4, args.users)]
    genrec(warm)
    search(warm)
    ours_s, ours_items, ours_scores = timed(genrec, history, args.batch)
    with torch.no_grad():  # both sides include encoding: its rate caps the ratio
        start = time.perf_counter()
        for first in range(0, args.users, args.batch):
            model.encode(history[first : first + args.batch])
        encode_s = time.perf_counter() - start
    theirs_s, theirs_items, theirs_scores = timed(search, history[:hf_users], args.hf_batch)

    top = min(args.top, args.beam)
    ours_top, theirs_top = ours_items[:hf_users, :top], theirs_items[:, :top]
    same_list = (ours_top == theirs_top).all(1)
    same_set = (ours_top.sort(1).values == theirs_top.sort(1).values).all(1)
    score_gap = (ours_scores[:hf_users, :top] - theirs_scores[:, :top]).abs().max().item()
    ours_rate, theirs_rate = args.users / ours_s, hf_users / theirs_s

    print("command: python " + " ".join(sys.argv))
    print(hf_t5.hardware())
    print(
        f"preset {args.preset}, {args.items:,} items, history {args.history} items, "
        f"beam {args.beam}, {config.codes_per_item} decoding steps"
    )
    print(f"{'search':16} {'users':>6} {'batch':>6} {'seconds':>8} {'users/s':>9}")
    for name, users, batch, seconds, rate in (
        ("genrec", args.users, args.batch, ours_s, ours_rate),
        ("HF generate()", hf_users, args.hf_batch, theirs_s, theirs_rate),
        ("encode only", args.users, args.batch, encode_s, args.users / encode_s),
    ):
        print(f"{name:16} {users:6d} {batch:6d} {seconds:8.2f} {rate:9.1f}")
    print(f"ratio genrec / HF: {ours_rate / theirs_rate:.1f}x (goal >= 10x)")
    lists, sets = same_list.float().mean().item(), same_set.float().mean().item()
    print(f"top-{top} over {hf_users} users: same lists {lists:.1%}, same sets {sets:.1%}")
    print(f"max |score gap| at ranks 1..{top}: {score_gap:.2e}")
    print(f"max |teacher-forced logit gap|: {gap:.2e} (asserted < 1e-4)")

    first = history[: args.batch]
    per_user = hf_t5.matmul_flops(lambda: genrec(first)) / first.size(0)
    rows = first.size(0) * args.beam
    ceiling = hf_t5.matmul_rate(rows, config.d_model, config.d_ff, backward=False)
    best = ceiling / per_user
    print(
        f"genrec: {per_user / 1e9:.3f} matmul GFLOP per user, "
        f"{per_user * ours_rate / 1e9:.1f} GFLOP/s"
    )
    print(
        f"ceiling: the feed-forward matmul [{rows} x {config.d_model}] x "
        f"[{config.d_model} x {config.d_ff}] runs at {ceiling / 1e9:.1f} GFLOP/s; at that rate "
        f"throughout, genrec would search {best:.1f} users/s, {best / theirs_rate:.1f}x HF"
    )


if __name__ == "__main__":
    main()
