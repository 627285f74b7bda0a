"""Learned tokenizers (RQ-VAE, LETTER, MQ) on planted structure, checkpoints and the stage."""

import json
from itertools import pairwise

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from genrec.config import load_config
from genrec.errors import ConfigError, DataError
from genrec.tokenizers import training
from genrec.tokenizers.checkpoints import build_tokenizer, load_tokenizer, save_tokenizer
from genrec.tokenizers.config import TokenizerConfig, catalogue_codebook_size
from genrec.tokenizers.quantizer import Codebook, rotate_to
from genrec.tokenizers.tokenize import tokenize

CLUSTERS = 8


def small_config(**overrides) -> TokenizerConfig:
    base = {
        "codebook_size": CLUSTERS,
        "epochs": 15,
        "batch_size": 128,
        "hidden_dims": [64, 32],
        "latent_dim": 16,
        "keep_epochs": 1,
    }
    return OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(TokenizerConfig), {**base, **overrides})
    )


def planted(n=800, dim=48, seed=0, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(CLUSTERS, dim, generator=g) * 3
    labels = torch.arange(n) % CLUSTERS
    return centers[labels] + torch.randn(n, dim, generator=g) * spread, labels


def purity(codes: torch.Tensor, labels: torch.Tensor) -> float:
    return sum(int(torch.bincount(labels[codes == c]).max()) for c in codes.unique()) / len(labels)


@pytest.mark.parametrize(
    ("settings", "min_purity"),
    [
        ({"name": "rqvae"}, 0.6),  # straight-through codebooks lag the encoder (chance: 1/8)
        ({"name": "rqvae", "ema": True}, 0.95),
        # On some CPUs two of the 8 clusters share a code after 15 epochs (purity 0.875).
        ({"name": "rqvae", "rotation_trick": True}, 0.85),
        ({"name": "mq"}, 0.6),  # parallel codebooks share the information between them
        ({"name": "rqkmeans"}, 0.95),
    ],
    ids=["rqvae", "rqvae-ema", "rqvae-rotation", "mq", "rqkmeans"],
)
def test_first_level_recovers_planted_clusters(settings, min_purity):
    x, labels = planted()
    tok = build_tokenizer(small_config(**settings), x.shape[1], seed=0)
    tok.fit(x)
    codes = tok.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == torch.long
    assert purity(codes[:, 0], labels) > min_purity
    assert torch.equal(codes, tok.encode(x))


def test_rotation_trick_keeps_value_and_passes_gradient():
    x = torch.randn(6, 5, requires_grad=True)
    q = torch.randn(6, 5)
    out = rotate_to(x, q)
    assert torch.allclose(out, q, atol=1e-5)
    out.pow(2).sum().backward()
    assert x.grad.abs().sum() > 0


def test_codebook_gradient_is_deterministic_on_two_threads():
    """The codewords' gradient over a large batch is the same twice with 2 torch threads
    (F.embedding's backward; indexing's adds in thread order and differs run to run)."""
    torch.manual_seed(0)
    codebook = Codebook(64, 8, ema=False, ema_decay=0.99, rotation_trick=False)
    x = torch.randn(16384, 8)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = []
        for _ in range(3):
            codebook.zero_grad()
            codebook(x)[2].sum().backward()
            grads.append(codebook.weight.grad.clone())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(grads[0], g) for g in grads[1:])


@pytest.mark.parametrize("name", ["rqvae", "mq"])
def test_full_catalogue_passes_read_a_chunk_at_a_time(name, monkeypatch):
    """Fitting, encoding and the report never run a network over more than PASS_CHUNK rows,
    and give what one pass over all rows gives."""
    x, _ = planted(n=200)
    settings = small_config(name=name, epochs=2)
    whole = build_tokenizer(settings, x.shape[1], seed=0)
    whole.fit(x)
    monkeypatch.setattr(training, "PASS_CHUNK", 64)
    tok = build_tokenizer(settings, x.shape[1], seed=0)
    rows = []
    for module in tok.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda _, args: rows.append(len(args[0])))
    tok.fit(x)
    rows.clear()
    codes, distances = tok.encode(x), tok.last_level_distances(x)
    error = tok.reconstruction_error(x)
    assert rows and max(rows) <= 64
    assert torch.equal(codes, whole.encode(x))
    assert torch.allclose(distances, whole.last_level_distances(x), atol=1e-4)
    assert error == pytest.approx(whole.reconstruction_error(x), rel=1e-5)


def test_mq_encoders_receive_gradient():
    x, _ = planted()
    tok = build_tokenizer(small_config(name="mq", epochs=3, kmeans_init=False), x.shape[1], seed=0)
    before = [encoder[0].weight.detach().clone() for encoder in tok.encoders]
    tok.fit(x)
    assert all(not torch.equal(b, e[0].weight) for b, e in zip(before, tok.encoders, strict=True))


def test_letter_alignment_follows_cf_structure():
    """Item text without structure, CF embeddings in 4 groups: alignment makes codes follow CF."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 48, generator=g)
    cf_labels = torch.randint(0, 4, (len(x),), generator=g)
    cf = torch.randn(4, 16, generator=g)[cf_labels] * 3 + torch.randn(len(x), 16, generator=g) * 0.3

    def cf_agreement(name, weight):
        """Share of item pairs with the same first code that are also CF neighbours."""
        cfg = small_config(name=name, epochs=60, letter={"cf_weight": weight})
        tok = build_tokenizer(cfg, x.shape[1], seed=0, cf_dim=cf.shape[1])
        tok.fit(x, cf)
        first = tok.encode(x)[:, 0]
        same_code = first[:, None] == first[None, :]
        return float((cf_labels[:, None] == cf_labels[None, :])[same_code].float().mean())

    assert cf_agreement("letter", 10.0) > cf_agreement("rqvae", 0.0) + 0.1


def test_checkpoint_round_trip(tmp_path):
    x, _ = planted()
    for name in ("rqvae", "letter", "mq", "rqkmeans"):
        tok = build_tokenizer(small_config(name=name, epochs=2), x.shape[1], 0, cf_dim=4)
        tok.fit(x, torch.randn(len(x), 4))
        save_tokenizer(tok, tmp_path / f"{name}.pt")
        assert torch.equal(load_tokenizer(tmp_path / f"{name}.pt").encode(x), tok.encode(x))


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vectors")
    x, _ = planted(n=600)
    np.save(folder / "items.npy", x.numpy())
    return folder


def stage_config(tmp_path, *overrides):
    return load_config(
        [],
        [
            f"run_dir={tmp_path}",
            "tokenizer.codebook_size=8",
            "tokenizer.epochs=12",
            "tokenizer.hidden_dims=[64,32]",
            "tokenizer.latent_dim=16",
            "tokenizer.keep_epochs=3",
            *overrides,
        ],
    )


def test_stage_writes_unique_ids_report_and_epoch_checkpoints(tmp_path, vectors_dir):
    out = tokenize(
        stage_config(tmp_path),
        "data-fp",
        {"items": vectors_dir / "items.npy"},
        tmp_path / "tokenizer",
    )
    ids = pq.read_table(out / "items" / "semantic_ids.parquet").to_pydict()
    codes = np.array(ids["codes"])
    assert codes.shape == (600, 4) and len({tuple(r) for r in codes.tolist()}) == 600
    report = json.loads((out / "report.json").read_text())
    items = report["items"]
    assert items["collision_rate_before"] > 0 and items["collision_rate_after"] == 0
    assert len(items["levels"]) == 3 and all(0 < lv["usage"] <= 1 for lv in items["levels"])
    assert items["reconstruction_error"] > 0
    assert report["config"]["tokenizer"]["name"] == "rqvae" and "git_commit" in report["code"]
    kept = sorted((out / "items" / "checkpoints").iterdir())
    assert [p.name for p in kept] == ["epoch-00009.pt", "epoch-00010.pt", "epoch-00011.pt"]
    vectors = torch.from_numpy(np.load(vectors_dir / "items.npy"))
    codes = [load_tokenizer(p).encode(vectors) for p in kept]
    changed = [(a != b).any(1).double().mean().item() for a, b in pairwise(codes)]
    first = [(a[:, 0] != b[:, 0]).double().mean().item() for a, b in pairwise(codes)]
    changes = items["adjacent_epoch_changes"]
    assert [c["epochs"] for c in changes] == [[9, 10], [10, 11]]
    assert [c["id"] for c in changes] == pytest.approx(changed, abs=1e-9)
    assert [c["first_code"] for c in changes] == pytest.approx(first, abs=1e-9)
    assert sum(changed) > 0 and max(changed) < 0.5  # the IDs move, but stay mostly the same
    assert (out / "items" / "tb").is_dir()
    stamp = (out / "report.json").stat().st_mtime_ns
    tokenize(
        stage_config(tmp_path),
        "data-fp",
        {"items": vectors_dir / "items.npy"},
        tmp_path / "tokenizer",
    )
    assert (out / "report.json").stat().st_mtime_ns == stamp


def test_sinkhorn_collision_mode(tmp_path, vectors_dir):
    out = tokenize(
        stage_config(
            tmp_path,
            "tokenizer.collisions=sinkhorn",
            "tokenizer.codebook_size=64",
            "tokenizer.keep_epochs=1",
        ),
        "data-fp",
        {"items": vectors_dir / "items.npy"},
        tmp_path / "tokenizer",
    )
    codes = np.array(pq.read_table(out / "items" / "semantic_ids.parquet")["codes"].to_pylist())
    assert len({tuple(r) for r in codes[:, :3].tolist()}) == len(codes)
    assert (codes[:, 3] == 0).all()


def test_codebook_size_of_a_catalogue():
    """256 codes a level from 512 items; below, a power of two at most half the items."""
    sizes = {n: catalogue_codebook_size(n) for n in (2, 5, 147, 511, 512, 578, 12_101)}
    assert sizes == {2: 2, 5: 2, 147: 64, 511: 128, 512: 256, 578: 256, 12_101: 256}


def test_an_unset_codebook_is_sized_where_a_tokenizer_is_built(tmp_path):
    """Outside a run (no data stage): fitted on 50 items, 16 codes a level; built with no
    catalogue at all, TIGER's 256."""
    np.save(tmp_path / "few.npy", planted(n=50, dim=8)[0].numpy())
    cfg = load_config([], [f"run_dir={tmp_path}", "tokenizer.epochs=2", "tokenizer.keep_epochs=1"])
    assert cfg.tokenizer.codebook_size is None
    out = tokenize(cfg, "fp", {"items": tmp_path / "few.npy"}, tmp_path / "t")
    assert json.loads((out / "report.json").read_text())["items"]["codebook_size"] == 16
    assert build_tokenizer(cfg.tokenizer, 8, seed=0).quantizer.levels[0].size == 256


def test_bad_vectors(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    x[7, 3] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match=r"nan\.npy: row 7 holds NaN"):
        tokenize(stage_config(tmp_path), "fp", {"items": tmp_path / "nan.npy"}, tmp_path / "t")
    np.save(tmp_path / "flat.npy", np.zeros(10, dtype=np.float32))
    with pytest.raises(DataError, match=r"flat\.npy: expected a non-empty \[items, dim\] matrix"):
        tokenize(stage_config(tmp_path), "fp", {"items": tmp_path / "flat.npy"}, tmp_path / "t")
    np.save(tmp_path / "few.npy", np.ones((5, 8), dtype=np.float32))
    with pytest.raises(ConfigError, match=r"'tokenizer\.codebook_size' \(8\) is larger"):
        tokenize(stage_config(tmp_path), "fp", {"items": tmp_path / "few.npy"}, tmp_path / "t")
    np.save(tmp_path / "ok.npy", x[:6] * 0 + 1)
    np.save(tmp_path / "cf.npy", np.ones((4, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"cf\.npy: has 4 rows but the dataset has 6 items"):
        tokenize(
            stage_config(tmp_path, "tokenizer.name=letter"),
            "fp",
            {"items": tmp_path / "ok.npy", "cf": tmp_path / "cf.npy"},
            tmp_path / "t",
        )
    assert not (tmp_path / "t").exists()
