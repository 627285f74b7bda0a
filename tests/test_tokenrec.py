"""TokenRec: the user's tokens in the encoder, the preference vector, its losses, retrieval
over the item vectors, and the checks made before training or evaluation, with real Ray and
DeepSpeed where they are involved."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec import artifacts, stages
from genrec.cf.lightgcn import propagated, unseen_users
from genrec.config import load_config
from genrec.data_pipeline.prepared import load_prepared
from genrec.errors import ConfigError, DataError
from genrec.methods.tokenrec.preference import (
    Catalogue,
    HistoryCoder,
    RetrievalLossFn,
    RetrievalRanker,
    UserTable,
    check_head,
    load_catalogue,
    tokenizer_dir,
)
from genrec.trainer.config import RetrievalLoss, UserTokens
from genrec.trainer.evaluate import eval_batches
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import GenerativeRecommender, ModelConfig
from genrec.trainer.objective import Batch
from genrec.trainer.retrieval import (
    ApproximateIndex,
    ExactIndex,
    Search,
    Similarity,
    recall_against_exact,
)
from tests.conftest import on_train_workers

TINY = [
    "method=tokenrec",
    "data.synthetic.num_users=400",
    "data.synthetic.num_items=120",
    # The first-order data these bars were measured on: no user taste, which lifts popularity
    # above what retrieval reaches on 400 users.
    "data.synthetic.p_taste=0",
    "data.synthetic.p_successor=0.45",
    "data.synthetic.p_same_subcategory=0.25",
    "data.synthetic.p_same_category=0.2",
    "data.users_per_shard=50",
    "lightgcn.epochs=10",
    "sasrec.epochs=2",
    "tokenizer.epochs=10",
    "tokenizer.codebook_size=16",
    "tokenizer.hidden_dims=[32]",
    "tokenizer.latent_dim=16",
    "trainer.epochs=2",
    "trainer.batch_size=64",
    "trainer.eval_every=20",
    "trainer.warmup_steps=5",
]


def small_model(user_levels: int = 3, dim: int = 16, **overrides) -> GenerativeRecommender:
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "tiny",
        num_levels=3,
        codebook_size=8,
        dedup_size=4,
        max_history_items=10,
        user_code_levels=user_levels,
        user_codebook_size=8 if user_levels else 0,
        embedding_adapter_dim=dim,
        **overrides,
    )
    return GenerativeRecommender(config, debug=True)


def history(batch: int = 4, items: int = 5) -> torch.Tensor:
    codes = torch.randint(0, 4, (batch, items, 4))
    codes[0, :2] = -1  # padding before the oldest item
    return codes


def test_another_users_tokens_change_the_preference():
    model = small_model().eval()
    codes = history()
    mine = torch.randint(0, 8, (4, 3))
    other = (mine + 1) % 8
    with torch.no_grad():
        a, b = model(codes, None, mine), model(codes, None, other)
        again = model(codes, None, mine)
    assert a.shape == (4, 16)
    assert torch.equal(a, again)
    assert (a - b).abs().max() > 1e-4


def test_the_pooled_head_is_the_mean_encoder_state_through_the_adapter():
    model = small_model(user_levels=0, preference_head="pooled").eval()
    codes = history()
    with torch.no_grad():
        memory, mask = model.encode(codes)
        weights = mask[..., None].float()
        mean = (memory * weights).sum(1) / weights.sum(1)
        torch.testing.assert_close(model(codes, None), model.embedding_adapter(mean))
    with pytest.raises(ConfigError, match=r"'trainer\.tokenrec\.head' must be one of"):
        load_config([], ["method=tokenrec", "trainer.tokenrec.head=last"])


def test_a_model_reading_user_tokens_refuses_ids_and_a_model_without_ignores_them():
    model = small_model()
    with pytest.raises(ValueError, match=r"users' codes: an int64 tensor of shape \[4, 3\]"):
        model(history(), None, torch.arange(4))
    plain = small_model(user_levels=0).eval()
    with torch.no_grad():
        assert plain(history(), None, None).shape == (4, 16)
    with pytest.raises(ValueError, match="both read the user"):
        ModelConfig(user_code_levels=3, user_codebook_size=8, num_user_buckets=4)


def test_retrieval_ranks_like_scoring_every_item():
    model = small_model().eval()
    items = torch.randn(50, 16)
    users = torch.randint(0, 8, (10, 3))
    catalogue = Catalogue(items, UserTable(users))
    batch = _batch(torch.tensor([4, 8, 15, 16]), history(), user=torch.tensor([3, 1, 7, 0]))
    for similarity in Similarity:
        ranker = RetrievalRanker(catalogue, ExactIndex(items, similarity))
        top, top_scores = ranker.top_k(model, batch, 10)
        with torch.no_grad():
            query = model(batch.history_codes, None, users[batch.user])
        if similarity is Similarity.cosine:
            scores = torch.nn.functional.normalize(query, dim=-1) @ (
                torch.nn.functional.normalize(items, dim=-1).T
            )
        else:
            scores = query @ items.T
        expected = scores.topk(10, dim=1)
        assert torch.equal(top, expected.indices)
        assert torch.allclose(top_scores, expected.values, atol=1e-5)


def test_hnsw_search_finds_what_exact_retrieval_finds():
    """`trainer.tokenrec.search=hnsw` ranks through the faiss index: on a small catalogue its
    top-10 is the exact one."""
    model = small_model().eval()
    items = torch.randn(400, 16)
    catalogue = Catalogue(items, UserTable(torch.randint(0, 8, (10, 3))))
    batch = _batch(torch.arange(4), history(), user=torch.tensor([3, 1, 7, 0]))
    exact = RetrievalRanker(catalogue, ExactIndex(items)).top_k(model, batch, 10)[0]
    index = ApproximateIndex(items.numpy(), Similarity.cosine)
    found = RetrievalRanker(catalogue, index).top_k(model, batch, 10)[0]
    assert recall_against_exact(found, exact) >= 0.95
    cfg = load_config([], ["method=tokenrec", "trainer.tokenrec.search=hnsw"])
    assert cfg.trainer.tokenrec.search is Search.hnsw


def _batch(
    targets: torch.Tensor, codes: torch.Tensor | None = None, user: torch.Tensor | None = None
) -> Batch:
    size = len(targets)
    codes = torch.zeros(size, 2, 4, dtype=torch.long) if codes is None else codes
    return Batch(
        user=torch.arange(size) if user is None else user,
        history=codes[:, :, 0],
        target=targets,
        group=torch.zeros(size, dtype=torch.long),
        history_codes=codes,
        target_codes=codes[:, 0],
    )


@pytest.mark.parametrize("loss", list(RetrievalLoss))
def test_losses_are_lowest_for_the_target_vector(loss):
    torch.manual_seed(0)
    items = torch.randn(200, 16)
    targets = torch.tensor([5, 17, 40, 99])
    catalogue = Catalogue(items)
    fn = RetrievalLossFn(
        catalogue, loss, 32, 0.1, 0.0, Similarity.cosine, torch.Generator().manual_seed(0)
    )

    def answering(vectors):
        return lambda history_codes, target_codes, user, prefixes: vectors

    right, _ = fn(answering(items[targets]), _batch(targets))
    fn.generator.manual_seed(0)  # the same negatives
    wrong, _ = fn(answering(items[targets + 1]), _batch(targets))
    assert right.item() < wrong.item()
    assert right.item() >= 0


def _loss_fn(items: torch.Tensor, loss: RetrievalLoss, negatives: int, seed: int = 0):
    return RetrievalLossFn(
        Catalogue(items),
        loss,
        negatives,
        0.1,
        0.0,
        Similarity.cosine,
        torch.Generator().manual_seed(seed),
    )


def _loss_and_gradient(fn, query: torch.Tensor, targets: torch.Tensor):
    """The loss of `fn` for the preference vectors `query`, and its gradient in them."""
    query = query.clone().requires_grad_()
    loss, _ = fn(lambda history_codes, target_codes, user, prefixes: query, _batch(targets))
    loss.backward()
    return loss.detach(), query.grad


@pytest.mark.parametrize("loss", list(RetrievalLoss))
def test_a_descent_step_moves_the_preference_away_from_a_negative(loss):
    """Target and negative are placed so that pulling the query toward the target leaves its
    cosine with the negative unchanged (to first order): what moves it is the negative's own
    term, and a step down the gradient must lower that cosine."""
    unit = torch.eye(16)
    query = unit[0][None]
    target = (unit[0] + unit[1]) / 2**0.5  # cosine 0.71 with the query
    negative = (unit[0] + unit[2]) / 2**0.5  # cosine 0.71 with the query, 0.5 with the target
    items = torch.cat([target[None], negative.expand(999, -1)])
    fn = _loss_fn(items, loss, 8)
    drawn = torch.randint(len(items), (8,), generator=torch.Generator().manual_seed(0))
    assert (drawn > 0).all()  # no draw is the target: every one is the negative
    _, gradient = _loss_and_gradient(fn, query, torch.tensor([0]))
    at = query[0].clone().requires_grad_()
    towards = [  # d cos(query, v) / d query
        torch.autograd.grad(torch.cosine_similarity(at, v, dim=0), at)[0]
        for v in (target, negative)
    ]
    assert torch.dot(towards[0], towards[1]).abs() < 1e-6
    assert torch.dot(gradient[0], towards[1]) > 1e-3  # descent lowers the cosine
    assert torch.dot(gradient[0], negative) > 1e-3
    assert torch.dot(gradient[0], towards[0]) < -1e-3  # and raises the target's


@pytest.mark.parametrize("loss", list(RetrievalLoss))
def test_a_negative_drawn_equal_to_the_target_is_masked(loss):
    """Two examples (targets 0 and 1) share draws from a 3-item catalogue, so some draws are
    one example's target and not the other's: the loss and its gradient are those that leave
    each example's own collisions out (a masked hinge term counts as 0 in the mean). Every
    cosine is positive, so every hinge term is active."""
    torch.manual_seed(0)
    items, query = torch.randn(3, 16) + 1, torch.randn(2, 16) + 1
    targets, k = torch.tensor([0, 1]), 12
    drawn = torch.randint(3, (k,), generator=torch.Generator().manual_seed(0))
    for target in targets:
        assert (drawn == target).any() and (drawn != target).any()
    loss_value, gradient = _loss_and_gradient(_loss_fn(items, loss, k), query, targets)

    expected_query = query.clone().requires_grad_()
    cosine = torch.cosine_similarity(expected_query[:, None], items[None], dim=-1)  # [2, 3]
    assert (cosine > 0.1).all()
    rows = []
    for row, target in enumerate(targets):
        kept = cosine[row, drawn[drawn != target]]
        if loss is RetrievalLoss.softmax:
            logits = torch.cat([cosine[row, target][None], kept]) / 0.1
            rows.append(-torch.log_softmax(logits, 0)[0])
        else:
            rows.append(1 - cosine[row, target] + kept.clamp(min=0).sum() / k)
    expected = torch.stack(rows).mean()
    expected.backward()
    torch.testing.assert_close(loss_value, expected.detach())
    torch.testing.assert_close(gradient, expected_query.grad)


def test_head_and_catalogue_mismatches_are_clear_errors():
    model = small_model(dim=16)
    with pytest.raises(ValueError, match="projects into 16 dimensions, the item vectors have 8"):
        check_head(model, Catalogue(torch.randn(20, 8)))
    catalogue = Catalogue(torch.randn(20, 16), UserTable(torch.zeros(5, 3, dtype=torch.long)))
    with pytest.raises(DataError, match="user 9 has no MQ tokens"):
        catalogue.user_codes(_batch(torch.tensor([0, 0]), user=torch.tensor([1, 9])))
    ranker = RetrievalRanker(catalogue, ExactIndex(catalogue.items))
    with pytest.raises(ValueError, match="top-k of 30 asked of a catalogue of 20 items"):
        ranker.top_k(model.eval(), _batch(torch.arange(4), history()), 30)


def test_tokenrec_needs_the_mq_tokenizer():
    with pytest.raises(ConfigError, match=r"'tokenizer\.name' is rqvae; TokenRec reads MQ"):
        load_config([], ["method=tokenrec", "tokenizer.name=rqvae"])
    with pytest.raises(ConfigError, match=r"'trainer\.tokenrec\.negatives' must be >= 1"):
        load_config([], ["method=tokenrec", "trainer.tokenrec.negatives=0"])


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """Tiny data with 15% of its users held out of training, LightGCN and MQ tokens."""
    folder = tmp_path_factory.mktemp("tokenrec")
    cfg = load_config([], [f"run_dir={folder / 'run'}", *TINY, "data.holdout_users=0.15"])
    stages.tokenize(cfg)
    return cfg, folder


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_tokenrec_runs_end_to_end_and_ranks_unseen_users(tokenized):
    """`genrec run method=tokenrec` on tiny data: retrieval beats popularity on test and on
    users held out of training (their tokens come from their histories, no retraining); a
    missing users table is named before training."""
    cfg, folder = tokenized
    stages.evaluate(cfg)
    metrics = json.loads((folder / "run" / artifacts.METRICS).read_text())
    popular = metrics["baselines"]["popularity"]
    for split in ("test", "holdout"):
        ours = metrics[split]["ndcg@10"]
        print(f"{split}: tokenrec {ours:.4f} vs popularity {popular[split]['ndcg@10']:.4f}")
        assert ours > popular[split]["ndcg@10"]
    assert metrics["method"] == "tokenrec"

    data = load_prepared(stages.data(cfg))
    trained, unseen = data.num_users, data.holdout.users.size
    assert unseen == round(0.15 * (trained + unseen)) and data.holdout.users.min() == trained
    tables = stages.id_tables(cfg)
    codes = ItemCodes.load(tables, data.num_items, cfg.tokenizer.codebook_size)
    catalogue = load_catalogue(cfg, codes, tables)
    assert isinstance(catalogue.users, HistoryCoder)
    assert catalogue.items.shape == (data.num_items, cfg.lightgcn.dim)
    # Coded from their histories, unseen users get the codes the users' table gave them.
    table = load_catalogue(with_user_tokens(cfg, "table"), codes, tables).users
    assert len(table.codes) == trained + unseen
    _, batch = next(eval_batches(data.holdout, codes, 64))
    assert torch.equal(catalogue.user_codes(batch), table(batch))
    users = tables[0].parent.parent / "users"
    shutil.copytree(users, folder / "users-kept")
    shutil.rmtree(users)
    try:
        with pytest.raises(DataError, match=r"users/tokenizer.pt.*TokenRec reads"):
            load_catalogue(cfg, codes, tables)
        with pytest.raises(DataError, match=r"users/semantic_ids.parquet.*TokenRec reads"):
            load_catalogue(with_user_tokens(cfg, "table"), codes, tables)
    finally:
        shutil.copytree(folder / "users-kept", users)


@pytest.mark.slow
def test_the_users_mq_is_fitted_on_the_history_vectors_it_codes(tokenized):
    """The users' MQ is fitted on the trained users' history vectors (LightGCN's exported user
    vectors: one propagation step of each validation history), not on LightGCN's trained user
    embeddings: a trained user's validation example reads, through the coder that also codes
    every training example's history, exactly the vector the MQ was fitted on, and so its
    codes in the users' table."""
    cfg, folder = tokenized
    data = load_prepared(stages.data(cfg))
    tables = stages.id_tables(cfg)
    report = json.loads((tokenizer_dir(tables) / artifacts.TOKENIZER_REPORT).read_text())
    fitted_on = folder / "run" / report["inputs"]["users"]
    assert fitted_on == stages.lightgcn(cfg) / artifacts.USER_EMBEDDINGS
    fitted = torch.from_numpy(np.load(fitted_on))
    assert len(fitted) == data.num_users and report["users"]["unseen"] == data.holdout.users.size
    codes = ItemCodes.load(tables, data.num_items, cfg.tokenizer.codebook_size)
    coder = load_catalogue(cfg, codes, tables).users
    table = load_catalogue(with_user_tokens(cfg, "table"), codes, tables).users.codes
    seen = 0
    for _, batch in eval_batches(data.valid, codes, 128):
        vectors = propagated(batch.history, coder.items, coder.degree)
        torch.testing.assert_close(vectors, fitted[batch.user], rtol=1e-5, atol=1e-6)
        assert torch.equal(coder(batch), table[batch.user])
        assert torch.equal(coder.tokenizer.encode(fitted[batch.user]), table[batch.user])
        seen += len(batch.user)
    assert seen == data.num_users


def test_history_vectors_need_every_user_of_the_split_once():
    from genrec.data_pipeline.prepared import EvalSet

    items, degree = np.arange(8, dtype=np.float32).reshape(4, 2), np.ones(4, dtype=np.int64)
    split = EvalSet("valid", np.array([1, 0]), np.array([0, 1, 3]), np.array([2, 0, 1]), [3, 3])
    out = unseen_users(split, 0, items, degree, chunk=1)  # user 1 first, one user a chunk
    np.testing.assert_allclose(out, [(items[0] + items[1]) / np.sqrt(2), items[2]], rtol=1e-6)
    split.users = np.array([1, 3])
    with pytest.raises(DataError, match=r"valid: does not hold users 0\.\.1"):
        unseen_users(split, 0, items, degree)


def with_user_tokens(cfg, mode: str):
    cfg = cfg.copy()
    cfg.trainer.tokenrec.user_tokens = UserTokens(mode)
    return cfg


def test_history_user_tokens_read_the_history_alone():
    """The same history gives the same codes whoever the user and whatever the target, and
    another history other codes: no example's tokens can know its target."""
    from genrec.tokenizers.config import TokenizerConfig
    from genrec.tokenizers.mq import MaskedVQ

    torch.manual_seed(0)
    tokenizer = MaskedVQ(
        16, TokenizerConfig(num_levels=3, codebook_size=8, hidden_dims=[16], latent_dim=8)
    )
    coder = HistoryCoder(torch.randn(30, 16), torch.randint(1, 5, (30,)), tokenizer)
    histories = torch.randint(0, 30, (6, 5, 4))
    a = coder(_batch(torch.arange(6), histories, user=torch.arange(6)))
    b = coder(_batch(torch.arange(6) + 10, histories, user=torch.arange(6) + 100))
    assert a.shape == (6, 3) and torch.equal(a, b)
    others = coder(_batch(torch.arange(6), (histories + 7) % 30))
    assert not torch.equal(a, others)


def _preferences_on(cfg, storage, workers: int) -> list[list[float]]:
    """Preference vectors of 8 users after 4 identical optimizer steps on `workers` Ray Train
    + DeepSpeed ranks (rank r trains rows r, r + workers, ... of each global batch)."""
    from genrec.data_pipeline.streaming import TrainExamples, collate

    data_dir, tables = stages.data(cfg), stages.id_tables(cfg)
    examples = iter(TrainExamples(data_dir, max_history=50, shuffle_buffer=0))
    batches = [collate([next(examples) for _ in range(64)]) for _ in range(4)]
    probe = collate([next(examples) for _ in range(8)])
    out = storage / f"preferences-{workers}.json"

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        from genrec.config import config_from_dict
        from genrec.methods import method_spec
        from genrec.trainer.train import Loop

        torch.set_num_threads(1)
        cfg = config_from_dict(config["cfg"])
        tables = [Path(t) for t in config["tables"]]
        loop = Loop(cfg, Path(config["data"]), tables, "tokenrec", method_spec("tokenrec"))
        rank, world = loop.rank, loop.world_size
        for rows in batches:
            for half in (slice(0, 32), slice(32, 64)):
                part = {k: v[half][rank::world] for k, v in rows.items()}
                part["group"] = torch.zeros_like(part["target"])
                loop.micro_step(part)
        loop.eval_model.load_state_dict(loop.engine.module.state_dict())
        loop.eval_model.eval()
        rows = probe | {"group": torch.zeros_like(probe["target"])}
        batch = Batch.coded(rows, loop.codes, loop.device)
        with torch.no_grad():
            users = loop.objective.catalogue.user_codes(batch)
            vectors = loop.eval_model(batch.history_codes, None, users)
        if rank == 0:
            out.write_text(json.dumps(vectors.tolist()))

    on_train_workers(loop_per_worker, cfg, data_dir, tables, 0, workers, storage, "tokenrec")
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_two_workers_train_like_one(tokenized, tmp_path):
    cfg, _ = tokenized
    one, two = (np.array(_preferences_on(cfg, tmp_path, workers)) for workers in (1, 2))
    assert one.shape == (8, cfg.lightgcn.dim) and np.abs(one).max() > 0
    np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-4)
