"""Tokenizers on Amazon 2014 Beauty: fit time, items/s tokenized, collisions, code usage.

Command:
    python benchmarks/tokenizer_fit.py [--run-dir runs/bench-beauty] [key=value ...]

RQ-VAE and RQ-KMeans tokenize MiniLM title embeddings; LETTER also aligns to SASRec's item
embeddings. SASRec's own Recall/NDCG@10 is printed next to the published figures. Extra
`key=value` arguments override the config (e.g. tokenizer.epochs=50 tokenizer.device=cuda).
"""

import argparse
import json
import sys
from pathlib import Path

from genrec import stages
from genrec.config import load_config
from genrec.data_pipeline.prepare import load_manifest
from genrec.tokenizers.tokenize import tokenize

PRESET = Path(__file__).resolve().parents[1] / "configs" / "datasets" / "amazon14_beauty.yaml"
PUBLISHED = {"SASRec (TIGER paper)": (0.0605, 0.0318), "SASRec (tuned)": (0.0740, 0.0423)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--run-dir", default="runs/bench-beauty")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config([PRESET], [f"run_dir={args.run_dir}", *args.overrides])
    fingerprint = load_manifest(stages.data(cfg))["fingerprint"]
    text = stages.text_features(cfg) / "embeddings.npy"
    sasrec = stages.sasrec(cfg)
    rows = []
    for name in ("rqvae", "rqkmeans", "letter"):
        run = load_config(
            [PRESET], [f"run_dir={args.run_dir}", *args.overrides, f"tokenizer.name={name}"]
        )
        inputs = {
            "items": text,
            **({"cf": sasrec / "item_embeddings.npy"} if name == "letter" else {}),
        }
        out = tokenize(run, fingerprint, inputs, Path(args.run_dir) / f"tokenizer-{name}")
        rows.append((name, json.loads((out / "report.json").read_text())["items"]))
    print("command: python benchmarks/tokenizer_fit.py", " ".join(sys.argv[1:]))
    header = f"{'tokenizer':10} {'fit s':>8} {'items/s':>10} {'coll. before':>12} {'after':>6}"
    print(header, " usage per level")
    for name, r in rows:
        usage = " ".join(f"{lv['usage']:.3f}" for lv in r["levels"])
        print(
            f"{name:10} {r['fit_seconds']:8.1f} {r['encode_per_second']:10.0f} "
            f"{r['collision_rate_before']:12.4f} {r['collision_rate_after']:6.3f}  {usage}"
        )
    metrics = json.loads((sasrec / "metrics.json").read_text())["test"]
    print(f"SASRec (genrec) test R@10 {metrics['recall@10']:.4f}  N@10 {metrics['ndcg@10']:.4f}")
    for label, (recall, ndcg) in PUBLISHED.items():
        print(f"{label:24} R@10 {recall:.4f}  N@10 {ndcg:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
