"""Where a generative run loses its quality, measured on validation users (never the test).

Command:
    python benchmarks/diagnose.py RUN_DIR [--users 2000] [--beams 10 20 50]
        [--first-code-weights 0.5 0.75] [--sasrec DIR]

For a finished `genrec run` folder (its config read back from metrics.json), on a fixed seeded
sample of validation users:
- **code accuracy**: teacher-forced, the share of targets whose code at each level is the
  decoder's argmax given the true earlier codes (level 0 is the hardest choice: which region
  of the catalogue); and recall@1/5/10 of the target's first code among the first codes by
  the decoder's level-0 logits (beam search keeps several first codes, not the argmax);
- **oracle recall**: recall@1/5/10 with the target's true first code given, i.e. the target's rank
  among the items sharing its first code, scored by the model's log-probability of their
  remaining codes. The gap to beam search's recall is what the first level loses;
- **beam size**: recall and NDCG@10 of beam search at each `--beams` width, and at the widest
  the recall@10 of the users whose target's first code ranks 1st, 2nd-5th, 6th-10th or
  lower (and each band's share of users); with `--first-code-weights`, recall and NDCG@10 at
  the widest beam with the first code's log-probability so weighted (`beam_search`);
- **collisions**: items per first code, and the share of items whose L codes (the dedup code
  aside) another item shares;
- **the SASRec beside it** (`--sasrec DIR`, a trained SASRec's folder on the same data, e.g.
  the tuned point of `benchmarks/converged.py`): the first code's recall, the oracle and the
  bands read off its item scores, so the gap to SASRec splits into the first code and the
  rest. Its first codes are ranked by its probability summed over each first code's items;
  its oracle ranks the target among the items sharing its first code by SASRec's score.
Writes RUN_DIR/diagnosis.json and prints the figures.
"""

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from genrec import stages
from genrec.cf.sasrec import load_sasrec, pad_histories, sasrec_queries
from genrec.config import config_from_dict
from genrec.data_pipeline.prepared import EvalSet, load_eval_set
from genrec.methods import method_spec
from genrec.metrics import USER_BATCH, ranking_metrics, ranks_in_lists
from genrec.provenance import code_version, write_json
from genrec.trainer.checkpoint import load_model
from genrec.trainer.evaluate import eval_batches
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.ranking import BeamSearchRanker

PAIRS_PER_PASS = 4096  # (user, candidate) rows teacher-forced at once
# Bands of the target's first-code rank (0-based, [low, high)), named 1-based.
FIRST_CODE_BANDS = (("1", 0, 1), ("2-5", 1, 5), ("6-10", 5, 10), (">10", 10, np.inf))


def teacher_forced(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct argmax codes per level [L+1] summed over the batch, and each target's first
    code's 0-based rank among the first codes [B]."""
    logits = model(batch.history_codes, batch.target_codes, batch.user)
    first = logits[:, 0].float()
    ranks = rank_of(first, batch.target_codes[:, 0])
    return (logits.argmax(-1) == batch.target_codes).sum(0), ranks


def oracle_ranks(model, batch, table: torch.Tensor) -> np.ndarray:
    """Each target's 0-based rank among the items sharing its first code, by the summed
    log-probability of the later codes (ties counted against the target)."""
    first = table[:, 0]
    ranks = []
    for row in range(batch.target.size(0)):
        candidates = torch.nonzero(first == batch.target_codes[row, 0]).squeeze(1)
        scores = []
        for chunk in candidates.split(PAIRS_PER_PASS):
            history = batch.history_codes[row].expand(chunk.size(0), -1, -1)
            user = batch.user[row].expand(chunk.size(0))
            codes = table[chunk]
            logp = model(history, codes, user).float().log_softmax(-1)
            scores.append(logp.gather(2, codes[..., None]).squeeze(2)[:, 1:].sum(1))
        score = torch.cat(scores)
        ranks.append(int(rank_of(score[None], torch.nonzero(candidates == batch.target[row])[0])))
    return np.array(ranks)


def rank_of(scores: torch.Tensor, target: torch.Tensor, among: torch.Tensor | None = None):
    """0-based rank of column `target` [B] in each row of `scores` [B, N] (only where `among`),
    ties counted against it."""
    above = scores >= scores.gather(1, target[:, None])
    return (above if among is None else above & among).sum(1) - 1


@torch.no_grad()
def sasrec_levels(sasrec_dir: Path, valid: EvalSet, table: torch.Tensor) -> dict:
    """The SASRec's first-code recall, oracle, ranking and bands on the same users."""
    model = load_sasrec(sasrec_dir)
    items = model.item_vectors.shape[0]
    if items != len(table):
        raise SystemExit(f"{sasrec_dir} scores {items} items, the run codes {len(table)}")
    width = model.positions.num_embeddings
    histories = torch.from_numpy(pad_histories(valid.offsets, valid.history, width))
    scores = torch.cat(
        [sasrec_queries(model, rows) @ model.item_vectors.T for rows in histories.split(USER_BATCH)]
    )
    targets = torch.from_numpy(valid.targets)
    first = table[:, 0]
    per_code = torch.zeros(len(scores), int(first.max()) + 1).index_add_(
        1, first, scores.softmax(-1)
    )
    oracle = rank_of(scores, targets, first[None, :] == first[targets][:, None])
    first_ranks, ranks = rank_of(per_code, first[targets]).numpy(), rank_of(scores, targets).numpy()
    return {
        "sasrec_dir": str(sasrec_dir),
        "first_code": recalls(first_ranks),
        "oracle_first_code": recalls(oracle.numpy()),
        "ranking": ranking_metrics(ranks, (10,)),
        "by_first_code": by_first_code(first_ranks, ranks),
    }


def by_first_code(first_ranks: np.ndarray, ranks: np.ndarray) -> dict[str, dict[str, float]]:
    """The users in each band of their target's first-code rank (its share of them) and the
    recall@10 of the whole ranking among them: where a ranking loses the target."""
    out = {}
    for name, low, high in FIRST_CODE_BANDS:
        chosen = (first_ranks >= low) & (first_ranks < high)
        hits = float((ranks[chosen] < 10).mean()) if chosen.any() else 0.0
        out[name] = {"users": float(chosen.mean()), "recall@10": hits}
    return out


def recalls(ranks: np.ndarray) -> dict[str, float]:
    return {k: v for k, v in ranking_metrics(ranks, (1, 5, 10)).items() if k.startswith("recall")}


def collisions(table: torch.Tensor) -> dict[str, float]:
    codes = table[:, :-1].numpy()
    _, first_counts = np.unique(codes[:, 0], return_counts=True)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return {
        "items_per_first_code": float(first_counts.mean()),
        "largest_first_code": int(first_counts.max()),
        "items_sharing_their_codes": float((counts[inverse.ravel()] > 1).mean()),
    }


@torch.no_grad()
def diagnose(
    run_dir: Path, users: int, beams: list[int], weights: list[float], sasrec_dir: Path | None
) -> dict:
    saved = json.loads((run_dir / "metrics.json").read_text())
    cfg = config_from_dict(saved["config"])
    method = method_spec(cfg.method)
    checkpoint, tables = stages.trained_model(cfg)
    model, _ = load_model(checkpoint, method.build_model, "cpu")
    model.eval()
    data_dir = stages.data(cfg)
    valid = load_eval_set(data_dir, "valid").subsample(users, cfg.seed)
    num_items = int(json.loads((data_dir / "manifest.json").read_text())["num_items"])
    codes = ItemCodes.load(tables, num_items, model.config.codebook_size)
    ranker = method.ranker(cfg, codes, tables)
    if not isinstance(ranker, BeamSearchRanker):
        raise SystemExit(f"{cfg.method} does not decode by beam search: nothing to diagnose")
    table = codes.group(0)
    correct, first_ranks, oracle, beam_ranks = 0, [], [], {k: [] for k in beams}
    widest, weighted = max(beams), {w: [] for w in weights}
    for rows, batch in eval_batches(valid, codes, cfg.evaluate.batch_size, desc="diagnose"):
        levels, ranks = teacher_forced(model, batch)
        correct = correct + levels
        first_ranks.append(ranks.numpy())
        oracle.append(oracle_ranks(model, batch, table))
        for k in beams:
            items = ranker.top_k(model, batch, k)[0].numpy()
            beam_ranks[k].append(ranks_in_lists(items, valid.targets[rows]))
        for w in weights:
            items = replace(ranker, first_code_weight=w).top_k(model, batch, widest)[0].numpy()
            weighted[w].append(ranks_in_lists(items, valid.targets[rows]))
    sasrec = {} if sasrec_dir is None else {"sasrec": sasrec_levels(sasrec_dir, valid, table)}
    first_ranks = np.concatenate(first_ranks)
    return {
        "run_dir": str(run_dir),
        "method": cfg.method,
        "validation_users": int(valid.targets.size),
        "code_accuracy": (correct.float() / valid.targets.size).tolist(),
        "first_code": recalls(first_ranks),
        "oracle_first_code": recalls(np.concatenate(oracle)),
        "beam": {
            k: ranking_metrics(np.concatenate(r), (10,)) for k, r in sorted(beam_ranks.items())
        },
        "by_first_code": by_first_code(first_ranks, np.concatenate(beam_ranks[widest])),
        "first_code_weight": {
            w: ranking_metrics(np.concatenate(r), (10,)) for w, r in sorted(weighted.items())
        },
        "collisions": collisions(table),
        **sasrec,
        "code": code_version(),
    }


def listed(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def bands(split: dict[str, dict[str, float]]) -> str:
    return "by the first code's rank: " + "  ".join(
        f"{name} ({band['users']:.1%} of users) recall@10 {band['recall@10']:.4f}"
        for name, band in split.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--users", type=int, default=2000, help="validation users (0: all)")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument(
        "--first-code-weights",
        type=float,
        nargs="*",
        default=[],
        help="rank again at the widest beam with these weights on the first code's log-prob",
    )
    parser.add_argument("--sasrec", type=Path, help="a trained SASRec's folder on the same data")
    args = parser.parse_args()
    result = diagnose(
        args.run_dir.resolve(), args.users, args.beams, args.first_code_weights, args.sasrec
    )
    write_json(args.run_dir / "diagnosis.json", result)
    levels = ", ".join(f"{a:.3f}" for a in result["code_accuracy"])
    print(f"{result['method']} on {result['validation_users']} validation users")
    print(f"teacher-forced code accuracy per level: {levels}")
    print(f"the target's first code among the first codes: {listed(result['first_code'])}")
    print(f"oracle (true first code) {listed(result['oracle_first_code'])}")
    for k, metrics in result["beam"].items():
        print(f"beam {k:>3}: recall@10 {metrics['recall@10']:.4f} ndcg@10 {metrics['ndcg@10']:.4f}")
    print(f"beam {max(args.beams)} " + bands(result["by_first_code"]))
    for w, metrics in result["first_code_weight"].items():
        print(
            f"beam {max(args.beams)}, first code weighted {w:g}: "
            f"recall@10 {metrics['recall@10']:.4f} ndcg@10 {metrics['ndcg@10']:.4f}"
        )
    print("collisions: " + ", ".join(f"{k} {v:g}" for k, v in result["collisions"].items()))
    if "sasrec" in result:
        sasrec = result["sasrec"]
        ranking = sasrec["ranking"]
        print(f"sasrec: the target's first code: {listed(sasrec['first_code'])}")
        print(f"sasrec: oracle {listed(sasrec['oracle_first_code'])}")
        print(f"sasrec: recall@10 {ranking['recall@10']:.4f} ndcg@10 {ranking['ndcg@10']:.4f}")
        print("sasrec: " + bands(sasrec["by_first_code"]))
    print(f"\ncommand: python {' '.join(sys.argv)}\nresults: {args.run_dir / 'diagnosis.json'}")


if __name__ == "__main__":
    main()
