"""TokenRec's recommendation users/s against genrec's beam search, on the same model.

Command:
    python benchmarks/tokenrec_speed.py RUN_DIR [--users 2000] [--batch 256] [--beam 20]
        [--threads N] [--device cpu]

RUN_DIR is a finished `genrec run method=tokenrec` folder: its trained model, ID table, users'
tokens and item vectors. Retrieval is one encoder pass, one decoder step and an exact top-20
over every item vector; beam search (B = --beam) decodes the same model's generative head over
the trie of the same IDs. The model is the same size for both (the head TokenRec does not train
costs beam search nothing extra). Both rank the first --users validation users, timed after
one warm-up batch; encoding is included in both.
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from genrec import artifacts
from genrec.config import config_from_dict
from genrec.data_pipeline.prepared import load_prepared
from genrec.methods.tokenrec.preference import RetrievalRanker, retrieval
from genrec.trainer.checkpoint import load_model
from genrec.trainer.evaluate import eval_batches
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.ranking import BeamSearchRanker


class WithUserCodes:
    """Beam search fed the users' MQ codes, as the TokenRec model reads them."""

    def __init__(self, search: BeamSearchRanker, retrieval: RetrievalRanker):
        self.search, self.catalogue = search, retrieval.catalogue

    def top_k(self, model, batch, k):
        users = self.catalogue.user_codes(batch)
        return self.search.top_k(model, replace(batch, user=users), k)


def users_per_second(ranker, model, batches, k: int) -> float:
    ranker.top_k(model, batches[0], k)  # warm-up
    started, users = time.perf_counter(), 0
    with torch.no_grad():
        for batch in batches:
            ranker.top_k(model, batch, k)
            users += len(batch.user)
    return users / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = args.run_dir
    summary = json.loads((run / artifacts.TRAIN / artifacts.TRAIN_SUMMARY).read_text())
    cfg = config_from_dict({**summary["config"], "run_dir": str(run)})
    data = load_prepared(run / artifacts.DATA)
    tables = [artifacts.semantic_ids(run / artifacts.TOKENIZER)]
    model, _ = load_model(run / artifacts.TRAIN / artifacts.MODEL, device=args.device)
    codes = ItemCodes.load(tables, data.num_items, cfg.tokenizer.codebook_size).to(args.device)
    valid = data.valid.subsample(args.users, cfg.seed)
    batches = [batch for _, batch in eval_batches(valid, codes, args.batch)]
    k = args.beam
    ranker = retrieval(cfg, codes, tables)
    fast = users_per_second(ranker, model, batches, k)
    slow = users_per_second(WithUserCodes(BeamSearchRanker.over(codes), ranker), model, batches, k)
    print(
        f"{data.num_items} items, {valid.users.size} users, batch {args.batch}, top-{k}, "
        f"{model.num_parameters():,} parameters, {torch.get_num_threads()} threads, {args.device}"
    )
    print(f"TokenRec retrieval: {fast:,.0f} users/s")
    print(f"beam search (B = {args.beam}): {slow:,.0f} users/s")
    print(f"ratio: {fast / slow:.1f}x")


if __name__ == "__main__":
    main()
