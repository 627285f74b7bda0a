"""Exact beam search over valid semantic IDs, batched over users and beams.

Each step scores only the children of each beam's trie node, so every finished beam is a real
item and, the dedup code being part of the ID, no item appears twice. With a beam at least as
wide as the catalogue the result is the model's exact ranking of every item.
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from genrec.trainer.model import GenerativeRecommender
from genrec.trainer.trie import ItemTrie


@torch.no_grad()
def beam_search(
    model: GenerativeRecommender,
    trie: ItemTrie,
    history_codes: Tensor,
    beam_size: int,
    user: Tensor | None = None,
    first_code_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Top `beam_size` items per user, best first: (item ids, summed code log-probs) [B, beam].

    `first_code_weight` scales the first code's log-probability in the sum (1: the model's
    joint probability; below 1 the ranking crosses more readily into the model's second and
    third choice of first code). Where fewer items exist than beams, the extra slots hold
    item -1 with score -inf.
    """
    if trie.depth != model.config.codes_per_item:
        raise ValueError(
            f"the trie has IDs of {trie.depth} codes but the model decodes "
            f"{model.config.codes_per_item}"
        )
    memory, mask = model.encode(history_codes, user)
    batch = memory.size(0)
    cache = model.init_cache(memory, mask)
    node = torch.zeros(batch, 1, dtype=torch.long, device=memory.device)
    score = torch.zeros(batch, 1, device=memory.device)
    prefix = torch.zeros(batch, 1, 0, dtype=torch.long, device=memory.device)
    for depth in range(trie.depth):
        beams = node.size(1)
        logp = model.decode_step(cache, prefix.flatten(0, 1)).float().log_softmax(-1)
        child, code, valid = trie.children(depth, node)
        step = logp.view(batch, beams, -1).gather(2, code.view(batch, beams, -1))
        if depth == 0:
            step = step * first_code_weight
        candidates = (score[..., None] + step).masked_fill(~valid, float("-inf"))
        width = min(beam_size, candidates[0].numel())
        score, pick = candidates.flatten(1).topk(width, dim=1)
        node = child.flatten(1).gather(1, pick)
        if depth + 1 == trie.depth:
            break  # the survivors' codes and cache would only feed a next step
        origin = pick // trie.max_children[depth]
        chosen = code.flatten(1).gather(1, pick)
        kept = prefix.gather(1, origin[..., None].expand(-1, -1, prefix.size(2)))
        prefix = torch.cat([kept, chosen[..., None]], dim=2)
        cache = cache.select_beams(origin)
    items = trie.leaf_item[node].masked_fill(torch.isinf(score), -1)
    missing = beam_size - items.size(1)
    return F.pad(items, (0, missing), value=-1), F.pad(score, (0, missing), value=float("-inf"))
