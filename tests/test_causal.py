"""The causal encoder: every prefix of a window trained in one pass, equal to the per-prefix
computation, no target seeing a later item, cached decoding, and the stream's windows."""

import numpy as np
import pytest
import torch

from genrec.config import load_config
from genrec.data_pipeline.example_arrays import Sequences, cut_windows, sequences_table
from genrec.data_pipeline.ray_ingest import PositionTracker, stream_batches
from genrec.data_pipeline.streaming import collate, prefix_examples
from genrec.errors import ConfigError
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Batch, CodeGeneration
from tests.test_model import LEVELS, D, K, tiny_model

ITEMS = 40


def causal_model(**overrides) -> GenerativeRecommender:
    return tiny_model(debug=True, encoder="causal", **overrides)


def item_codes() -> ItemCodes:
    generator = torch.Generator().manual_seed(3)
    levels = torch.randint(0, K, (ITEMS, LEVELS), generator=generator)
    dedup = torch.randint(0, D, (ITEMS, 1), generator=generator)
    return ItemCodes(torch.cat([levels, dedup], dim=1)[None], K)


def sequences() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, ITEMS, size=n) for n in (2, 5, 9, 17, 23)]


def window_examples(user: int, seq: np.ndarray, max_history: int, stride: int) -> list[dict]:
    """One sequence's windows (`cut_windows`) as dicts, history and target cut to length."""
    cut = cut_windows(Sequences.of_lists([seq], np.array([user])), max_history, stride, seed=0)
    return [
        {"user": user, "history": cut.history[i, -n:], "target": cut.target[i, -n:]}
        for i, n in enumerate(cut.length.tolist())
    ]


def batch_of(examples: list[dict], codes: ItemCodes) -> Batch:
    rows = collate(examples) | {"group": torch.zeros(len(examples), dtype=torch.long)}
    return Batch.coded(rows, codes, "cpu")


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def window_and_prefix_batches(codes: ItemCodes) -> tuple[Batch, Batch]:
    """The windows of `sequences()` in one batch, and every trained prefix of them in another,
    in the order of the model's outputs."""
    windows = [w for user, s in enumerate(sequences()) for w in window_examples(user, s, 8, 3)]
    prefixes = [
        {"user": w["user"], "history": w["history"][: j + 1], "target": w["target"][j]}
        for w in windows
        for j in np.flatnonzero(w["target"] >= 0)
    ]
    return batch_of(windows, codes), batch_of(prefixes, codes)


@pytest.mark.parametrize("buckets", [0, 7])
def test_one_pass_loss_and_gradients_equal_the_per_prefix_computation(buckets):
    """Windows of 5 sequences (left-padded in one batch, later windows' first targets not
    trained) against every prefix example of the same windows, one encoder pass each."""
    model, loss = causal_model(num_user_buckets=buckets), CodeGeneration()
    windows, prefixes = window_and_prefix_batches(item_codes())
    assert len(prefixes.target) == sum(len(s) - 1 for s in sequences())
    one_pass, _ = loss(model, windows)
    per_prefix, _ = loss(model, prefixes)
    torch.testing.assert_close(one_pass, per_prefix, atol=1e-5, rtol=1e-5)
    for a, b in zip(gradients(model, one_pass), gradients(model, per_prefix), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("head", ["decoder", "pooled"])
def test_every_prefix_views_equal_the_per_prefix_ones(head):
    """ETEGRec's aligned outputs and TokenRec's preference vectors, one pass against one
    prefix at a time: only trained prefixes come out, in the order of their targets."""
    model = causal_model(latent_adapter_dim=5, embedding_adapter_dim=6, preference_head=head)
    windows, prefixes = window_and_prefix_batches(item_codes())
    with torch.no_grad():
        one_pass = model(windows.history_codes, windows.target_codes, aligned=True)
        per_prefix = model(prefixes.history_codes, prefixes.target_codes, aligned=True)
        preference = model(windows.history_codes, None, prefixes=windows.prefixes)
        single = model(prefixes.history_codes, None)
    assert one_pass[0].size(0) == len(prefixes.target) < windows.target.numel()
    for a, b in zip(one_pass, per_prefix, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(preference, single, atol=1e-5, rtol=1e-5)


def test_no_target_attends_to_a_later_item():
    """Changing the items after position j changes no logit of the targets up to j, nor the
    encoder states of items up to j; it does change later ones."""
    model = causal_model().eval()
    codes = item_codes()
    generator = torch.Generator().manual_seed(5)
    items = torch.randint(0, ITEMS, (2, 8), generator=generator)
    changed = items.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % ITEMS
    targets = torch.randint(0, ITEMS, (2, 8), generator=generator)
    with torch.no_grad():
        a = model(codes(items), codes(targets)).view(2, 8, LEVELS + 1, -1)
        b = model(codes(changed), codes(targets)).view(2, 8, LEVELS + 1, -1)
        memory_a, _ = model.encode(codes(items))
        memory_b, _ = model.encode(codes(changed))
    width = LEVELS + 1
    torch.testing.assert_close(a[:, :5], b[:, :5], atol=1e-6, rtol=0)
    torch.testing.assert_close(memory_a[:, : 5 * width], memory_b[:, : 5 * width])
    assert (a[:, 5:] - b[:, 5:]).nan_to_num(0).abs().max() > 1e-3


def test_cached_decoding_equals_teacher_forcing():
    """Beam search's path (encode once, one decoder step at a time) gives the logits teacher
    forcing gives the newest prefix."""
    model = causal_model().eval()
    codes = item_codes()
    history = codes(torch.tensor([[-1, -1, 3, 7, 9], [1, 2, 3, 4, 5]]))
    target = codes(torch.tensor([11, 12]))
    with torch.no_grad():
        full = model(history, target)
        every = model(history, codes(torch.tensor([[-1, -1, 0, 0, 11], [0, 0, 0, 0, 12]])))
        cache = model.init_cache(*model.encode(history))
        steps = [model.decode_step(cache, target[:, :step]) for step in range(LEVELS + 1)]
    for step, logits in enumerate(steps):
        size = D if step == LEVELS else K
        torch.testing.assert_close(logits, full[:, step, :size], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, every[[2, 7], step, :size], atol=1e-5, rtol=0)


def test_every_prefix_needs_the_causal_encoder():
    torch.manual_seed(0)
    config = ModelConfig.preset("tiny", num_levels=LEVELS, codebook_size=K, dedup_size=D)
    model = GenerativeRecommender(config)
    history = item_codes()(torch.tensor([[1, 2, 3]]))
    with pytest.raises(ValueError, match="needs the causal encoder"):
        model(history, history)
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="sideways")


@pytest.mark.parametrize("length", [1, 2, 5, 9, 10, 31, 64])
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_windows_train_every_target_once_with_enough_history(length, stride):
    seq = np.arange(100, 100 + length)
    windows = list(window_examples(7, seq, 8, stride))
    trained = [t for w in windows for t in w["target"][w["target"] >= 0]]
    assert trained == list(seq[1:])
    seen = []
    for w in windows:
        assert len(w["history"]) == len(w["target"]) <= 8
        assert 1 <= int((w["target"] >= 0).sum()) <= stride
        assert np.array_equal(w["target"][w["target"] >= 0], seq[np.isin(seq, w["target"])])
        seen += [j + 1 for j in np.flatnonzero(w["target"] >= 0)]
    # The first 8 targets see their whole history, as prefix examples do; later targets see at
    # least 8 - stride + 1 items.
    prefixes = [len(ex["history"]) for ex in prefix_examples(7, seq, 8)]
    assert seen[: min(length - 1, 8)] == prefixes[:8]
    assert all(n >= 8 - stride + 1 for n in seen[8:])


def test_window_batches_carry_a_source_per_target_and_mark_rows_trained():
    seqs = sequences()
    block = sequences_table(seqs, np.arange(len(seqs)))
    tracker = PositionTracker()
    rng = np.random.default_rng(0)
    batches = list(stream_batches([block], tracker, 8, 16, 0, rng, stride=3))
    targets = sum(int((b["target"] >= 0).sum()) for b in batches)
    assert targets == sum(len(s) - 1 for s in seqs)
    assert all(len(b["source"]) == int((b["target"] >= 0).sum()) for b in batches)
    assert all(b["target"].shape == b["history"].shape for b in batches)
    for b in batches:
        tracker.trained(b["source"])
    assert sorted(tracker.state()["rows"][0]) == list(range(len(seqs)))


def test_causal_settings_are_checked_when_the_config_loads():
    cfg = load_config([], ["trainer.model.encoder=causal"])
    assert cfg.trainer.model.encoder == "causal"
    with pytest.raises(ConfigError, match="encoder"):
        load_config([], ["trainer.model.encoder=sideways"])
    with pytest.raises(ConfigError, match=r"'trainer\.window_stride' \(60\) must be at most"):
        load_config([], ["trainer.model.encoder=causal", "trainer.window_stride=60"])


def _logits_after_training(cfg, inputs, storage, workers: int) -> list:
    """A probe's logits after 4 identical optimizer steps over windows on `workers` Ray Train
    + DeepSpeed ranks (rank r trains windows r, r + workers, ... of each global batch, its
    loss weighted by its share of the batch's targets, as the training loop weighs it)."""
    import json

    from genrec.data_pipeline.streaming import TrainExamples
    from tests.conftest import on_train_workers

    data_dir, tables = inputs
    reader = TrainExamples(data_dir, max_history=50, shuffle_buffer=0)
    windows = [w for user, seq in reader.sequences() for w in window_examples(user, seq, 6, 2)]
    batches = [collate(windows[i * 16 : (i + 1) * 16]) for i in range(4)]
    probe = collate(windows[64:72])
    out = storage / f"logits-{workers}.json"

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        from pathlib import Path

        from genrec.config import config_from_dict
        from genrec.methods import method_spec
        from genrec.trainer.train import Loop

        torch.set_num_threads(1)
        cfg = config_from_dict(config["cfg"])
        tables = [Path(t) for t in config["tables"]]
        loop = Loop(cfg, Path(config["data"]), tables, "causal", method_spec("tiger"))
        rank, world = loop.rank, loop.world_size
        for rows in batches:
            part = {k: v[rank::world] for k, v in rows.items()}
            part["group"] = torch.zeros(len(part["user"]), dtype=torch.long)
            total = int((rows["target"] >= 0).sum())
            loop.micro_step(part, world * int((part["target"] >= 0).sum()) / total)
        loop.eval_model.load_state_dict(loop.engine.module.state_dict())
        rows = probe | {"group": torch.zeros(len(probe["user"]), dtype=torch.long)}
        batch = Batch.coded(rows, loop.codes, loop.device)
        with torch.no_grad():
            logits = loop.eval_model.eval()(batch.history_codes, batch.target_codes)
        if rank == 0:
            out.write_text(json.dumps(logits.nan_to_num(0).tolist()))

    on_train_workers(loop_per_worker, cfg, data_dir, tables, 0, workers, storage, "causal")
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_two_workers_train_like_one(tmp_path):
    from genrec import stages

    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "data.synthetic.num_users=300",
        "data.synthetic.num_items=90",
        "data.users_per_shard=25",
        "tokenizer.epochs=3",
        "tokenizer.codebook_size=16",
        "tokenizer.hidden_dims=[64]",
        "tokenizer.latent_dim=16",
        "trainer.batch_size=16",
        "trainer.warmup_steps=1",
        "trainer.model.encoder=causal",
        "data.max_history=6",
    ]
    cfg = load_config([], overrides)
    inputs = stages.data(cfg), stages.id_tables(cfg)
    one, two = (
        np.array(_logits_after_training(cfg, inputs, tmp_path, workers)) for workers in (1, 2)
    )
    assert one.shape[1:] == (LEVELS + 1, cfg.tokenizer.codebook_size) and np.abs(one).max() > 0
    np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-4)
