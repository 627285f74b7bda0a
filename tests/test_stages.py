"""Stage wiring: each tokenizer pulls the features it needs; `genrec run` runs end to end."""

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from genrec import stages
from genrec.config import load_config

TINY = [
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=90",
    "sasrec.epochs=2",
    "sasrec.eval_every=1",
    "lightgcn.epochs=2",
    "tokenizer.epochs=3",
    "tokenizer.codebook_size=16",
    "tokenizer.hidden_dims=[64]",
    "tokenizer.latent_dim=16",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stages")


def test_letter_uses_sasrec_embeddings(run_dir):
    cfg = load_config([], [f"run_dir={run_dir}", *TINY, "tokenizer.name=letter"])
    out = stages.tokenize(cfg)
    report = json.loads((out / "report.json").read_text())
    assert report["inputs"]["cf"].endswith("sasrec/item_embeddings.npy")
    assert report["items"]["collision_rate_after"] == 0


def test_mq_tokenizes_users_and_items_from_lightgcn(run_dir):
    cfg = load_config([], [f"run_dir={run_dir}", *TINY, "tokenizer.name=mq"])
    out = stages.tokenize(cfg)
    users = pq.read_table(out / "users" / "semantic_ids.parquet")
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert users.num_rows == manifest["num_users"]
    assert json.loads((out / "report.json").read_text())["inputs"]["items"].endswith(
        "lightgcn/item_embeddings.npy"
    )


def test_genrec_run_end_to_end(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "genrec", "run", f"run_dir={tmp_path}", *TINY],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "tokenizer rqvae: code usage per level" in done.stdout
    assert (tmp_path / "tokenizer" / "items" / "semantic_ids.parquet").is_file()
