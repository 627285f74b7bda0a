"""ETEGRec: the alignment losses, the alternation of two DeepSpeed engines, re-coding, resume
and the checks made before Ray starts, with real Ray and DeepSpeed where they are involved."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from genrec import stages
from genrec.cluster.train_job import train
from genrec.config import load_config
from genrec.errors import ConfigError, DataError
from genrec.methods import method_spec
from genrec.methods.etegrec.end_to_end import (
    EndToEnd,
    Phase,
    first_occurrences,
    gather_rows,
    info_nce,
    level_logits,
    phase_of,
    symmetric_kl,
)
from genrec.provenance import file_digest
from genrec.trainer.evaluate import evaluate_checkpoint
from tests.conftest import on_train_workers

TINY = [
    "method=etegrec",
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=90",
    "data.users_per_shard=25",
    "sasrec.epochs=2",
    "tokenizer.epochs=8",
    "tokenizer.codebook_size=16",
    "tokenizer.hidden_dims=[64]",
    "tokenizer.latent_dim=16",
    "trainer.epochs=3",
    "trainer.etegrec.warmup_epochs=0",
    "trainer.etegrec.stop_when_stable=false",
    "trainer.batch_size=64",
    "trainer.eval_every=16",
    "trainer.warmup_steps=5",
    "finetune.epochs=1",
]


def test_sia_is_zero_for_identical_distributions_and_symmetric():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, 16), torch.randn(5, 3, 16)
    assert symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert symmetric_kl(a, b).item() > 0.1
    assert symmetric_kl(a, b).item() == pytest.approx(symmetric_kl(b, a).item(), rel=1e-6)
    # Logits that differ by a constant per row are the same distribution.
    assert symmetric_kl(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)


def test_psa_matches_a_hand_computed_infonce():
    query = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    keys = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    tau, r = 0.5, 1 / math.sqrt(2)
    # Cosines: q0.k0 = 1, q0.k1 = r, q1.k0 = 0, q1.k1 = r.
    rows = -(1 / tau - math.log(math.exp(1 / tau) + math.exp(r / tau)))
    rows -= r / tau - math.log(math.exp(0) + math.exp(r / tau))
    cols = -(1 / tau - math.log(math.exp(1 / tau) + math.exp(0)))
    cols -= r / tau - math.log(math.exp(r / tau) + math.exp(r / tau))
    assert info_nce(query, keys, tau).item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_sia_reaches_the_latent_through_every_level_or_the_first_only():
    torch.manual_seed(0)
    codebooks = [torch.randn(8, 4) for _ in range(3)]
    for through_all, later_levels_reach in ((True, True), (False, False)):
        latent = torch.randn(6, 4, requires_grad=True)
        logits = level_logits(codebooks, latent, 1.0, through_all)
        assert logits.shape == (6, 3, 8)
        # Level 0's logits are -squared distances to the codewords.
        distance = torch.cdist(latent, codebooks[0]) ** 2
        assert torch.allclose(logits[:, 0], -distance, atol=1e-4)
        (grad,) = torch.autograd.grad(logits[:, 1:].sum(), latent, allow_unused=True)
        reached = grad is not None and bool(grad.abs().sum() > 0)
        assert reached == later_levels_reach


def test_each_cycle_trains_the_tokenizer_first_and_the_ablation_trains_both():
    t, r, j = Phase.tokenizer, Phase.recommender, Phase.joint
    assert [phase_of(e, 2, True) for e in range(5)] == [t, r, t, r, t]
    assert [phase_of(e, 3, True) for e in range(6)] == [t, r, r, t, r, r]
    assert [phase_of(e, 2, False) for e in range(3)] == [j, j, j]


def validations(steps: list[tuple[Phase, Phase | None, bool]]) -> list[int]:
    """The steps ETEGRec validates after, given each step's (phase it trained, next step's
    phase, whether the loop's cadence was due)."""
    plugin = EndToEnd.__new__(EndToEnd)
    plugin.owed = False
    validated = []
    for step, (plugin.finished, plugin.phase, due) in enumerate(steps):
        if plugin.validate_now(due):
            validated.append(step)
    return validated


def test_a_validation_falls_at_the_end_of_a_recommender_phase_never_after_a_recoding():
    """A cadence of one cycle whose due steps drift onto tokenizer steps (or just after a
    re-coding) still validates once a cycle, each time the recommender has trained on the
    latest IDs; a run without alternation validates when due."""
    t, r, j = Phase.tokenizer, Phase.recommender, Phase.joint
    cycle = [
        (t, t, False),
        (t, t, False),
        (t, r, False),
        (r, r, False),
        (r, r, False),
        (r, t, False),
    ]

    def with_due(*steps: int) -> list[tuple[Phase, Phase | None, bool]]:
        run = cycle * 3
        return [(f, n, i in steps) for i, (f, n, _) in enumerate(run)]

    assert validations(with_due(0, 6, 12)) == [5, 11, 17]  # due on the tokenizer's first step
    assert validations(with_due(3, 9, 15)) == [5, 11, 17]  # due on the first after re-coding
    assert validations(with_due(5, 11, 17)) == [5, 11, 17]  # due where it is meaningful
    assert validations(with_due(0)) == [5]  # one owed validation, made once
    assert validations(with_due()) == []
    assert validations([(j, j, False), (j, j, True), (j, None, True)]) == [1, 2]


def test_unique_targets_are_first_occurrences_and_one_rank_gathers_itself():
    items = torch.tensor([5, 3, 5, 7, 3, 9])
    assert first_occurrences(items).tolist() == [1, 0, 3, 5]
    x = torch.randn(4, 2, requires_grad=True)
    assert gather_rows(x) is x


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.etegrec.cycle=1", "cycle"),
        ("trainer.etegrec.sia_weight=-1", "sia_weight"),
        ("trainer.etegrec.psa_weight=-0.5", "psa_weight"),
        ("tokenizer.name=rqkmeans", "tokenizer.name"),
        ("trainer.zero_stage=3", "trainer.zero_stage"),
    ],
)
def test_bad_keys_fail_when_the_config_is_loaded(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config([], ["method=etegrec", override])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Data, SASRec item embeddings and the pre-trained RQ-VAE, shared by the tests below."""
    folder = tmp_path_factory.mktemp("etegrec")
    cfg = load_config([], [f"run_dir={folder}", *TINY])
    return cfg, stages.data(cfg), stages.id_tables(cfg)


def test_a_missing_tokenizer_input_fails_before_ray_starts(run, tmp_path):
    cfg, data_dir, (table,) = run
    for missing in ("tokenizer.pt", "vectors"):
        items = tmp_path / missing / "tokenizer" / "items"
        shutil.copytree(table.parent.parent, items.parent)
        report = json.loads((items.parent / "report.json").read_text())
        if missing == "vectors":
            report["inputs"]["items"] = str(tmp_path / "gone.npy")
            (items.parent / "report.json").write_text(json.dumps(report))
        else:
            (items / "tokenizer.pt").unlink()
        out = tmp_path / missing / "train"
        with pytest.raises(DataError, match=r"tokenizer\.pt|gone\.npy"):
            train(cfg, data_dir, [items / "semantic_ids.parquet"], out)
        assert not out.exists()


def _distinct_target_batches(data_dir: Path, count: int, size: int) -> list[dict]:
    """Batches whose targets are all different, so 'the unique targets' are every row in any
    order of the rows (one worker's or two workers' gathered)."""
    from genrec.data_pipeline.streaming import TrainExamples, collate

    examples = iter(TrainExamples(data_dir, max_history=50, shuffle_buffer=0))
    batches = []
    for _ in range(count):
        rows, seen = [], set()
        while len(rows) < size:
            example = next(examples)
            if int(example["target"]) not in seen:
                seen.add(int(example["target"]))
                rows.append(example)
        batch = collate(rows)
        batches.append(batch | {"group": torch.zeros(size, dtype=torch.long)})
    return batches


def _alternate(
    cfg, data_dir: Path, tables: list[Path], storage: Path, workers: int, stage: int
) -> dict:
    """Two tokenizer steps, the end of that epoch, two recommender steps, on `workers` Ray
    Train + DeepSpeed ranks at ZeRO `stage` (rank r trains rows r, r + workers, ... of each
    batch); what rank 0 saw of the parameters, codes and losses, and under "weights" the
    model's and the tokenizer's parameters after the tokenizer steps and after the
    recommender steps."""
    batches = _distinct_target_batches(data_dir, 4, 48)
    out = storage / f"alternate-{workers}-{stage}.json"
    weights_out = out.with_suffix(".pt")

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        from genrec.config import config_from_dict
        from genrec.methods.etegrec.end_to_end import Phase
        from genrec.trainer.train import Loop
        from genrec.trainer.trie import ItemTrie

        torch.set_num_threads(1)
        cfg = config_from_dict(config["cfg"])
        tables = [Path(t) for t in config["tables"]]
        loop = Loop(cfg, Path(config["data"]), tables, "alternate", method_spec("etegrec"))
        (joint,), rank, world = loop.plugins, loop.rank, loop.world_size

        def weights(module):
            return {k: v.detach().clone() for k, v in module.state_dict().items()}

        def same(a, b):
            return all(torch.equal(a[k], b[k]) for k in a)

        def steps(rows_list):
            losses = []
            for rows in rows_list:
                terms = loop.micro_step({k: v[rank::world] for k, v in rows.items()})
                joint.step_end(None)
                losses.append({k: float(v) for k, v in terms.items() if k != "loss"})
            return losses

        seen = {"phases": [joint.upcoming().value]}
        model0, tok0 = weights(loop.engine.module), weights(joint.tokenizer)
        seen["tokenizer_losses"] = steps(batches[:2])
        model1, tok1 = weights(loop.engine.module), weights(joint.tokenizer)
        seen["model_frozen"], seen["tokenizer_moved"] = same(model0, model1), not same(tok0, tok1)
        loop.progress.samples = loop.examples_per_epoch  # the tokenizer epoch ends here
        before = loop.codes.group(0).cpu().numpy()
        joint.step_end(None)
        seen["phases"].append(joint.upcoming().value)
        fresh = joint.fresh_ids()
        table = loop.codes.group(0).cpu().numpy()
        trie, expected = loop.ranker.trie, ItemTrie.from_codes(fresh)
        seen["codes_fresh"] = bool(np.array_equal(table, fresh))
        seen["trie_fresh"] = all(
            torch.equal(a, b)
            for a, b in zip(
                [*trie.child_start, *trie.code, trie.leaf_item.cpu()],
                [*expected.child_start, *expected.code, expected.leaf_item],
                strict=True,
            )
        )
        seen["ids_changed"] = float((table != before).any(1).mean())
        seen["recommender_losses"] = steps(batches[2:])
        model2, tok2 = weights(loop.engine.module), weights(joint.tokenizer)
        seen["tokenizer_frozen"], seen["model_moved"] = same(tok1, tok2), not same(model1, model2)
        seen["recommender_phase"] = joint.phase is Phase.recommender
        if rank == 0:
            out.write_text(json.dumps(seen))
            after = {"tokenizer_steps": (model1, tok1), "recommender_steps": (model2, tok2)}
            parts = {
                f"{when}/{part}": state
                for when, states in after.items()
                for part, state in zip(("model", "tokenizer"), states, strict=True)
            }
            torch.save(parts, weights_out)

    on_train_workers(loop_per_worker, cfg, data_dir, tables, stage, workers, storage, "alternate")
    return json.loads(out.read_text()) | {"weights": torch.load(weights_out, weights_only=True)}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_each_phase_trains_its_part_only_recodes_and_two_workers_agree(run, tmp_path):
    """Tokenizer steps leave the recommender bit-identical and the other way round; after the
    tokenizer epoch the loop's table and trie are a fresh encode + collision resolution; on 1
    worker and on 2 at ZeRO 2, with the same global batch, the model and the tokenizer train to
    the same parameters (gathered PSA negatives)."""
    _, data_dir, tables = run
    cfg = load_config([], [f"run_dir={tmp_path}", *TINY, "trainer.batch_size=48"])
    settings = ((1, 0), (2, 2))  # (workers, ZeRO stage)
    results = [_alternate(cfg, data_dir, tables, tmp_path, *setting) for setting in settings]
    for seen in results:
        assert seen["phases"] == ["tokenizer", "recommender"]
        assert seen["model_frozen"] and seen["tokenizer_moved"]
        assert seen["tokenizer_frozen"] and seen["model_moved"] and seen["recommender_phase"]
        assert seen["codes_fresh"] and seen["trie_fresh"] and 0 < seen["ids_changed"] < 1
    one, two = results
    assert set(one["tokenizer_losses"][0]) == {"vq", "sia", "psa"}
    assert set(one["recommender_losses"][0]) == {"generation", "sia", "psa"}
    assert one["weights"].keys() == two["weights"].keys()
    for part, state in one["weights"].items():
        assert state.keys() == two["weights"][part].keys()
        for name, value in state.items():
            # Summation order differs (all-reduce, per-rank rows): float noise only.
            torch.testing.assert_close(
                two["weights"][part][name],
                value,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, where=f"{part} {name}": f"{where}: {m}",
            )
    assert two["ids_changed"] == pytest.approx(one["ids_changed"])


# A tokenizer trained until its latents lie among their codewords as a default run's do (the
# target's first-level code distribution peaked): TINY's pre-training barely moves them from
# k-means of an untrained encoder, so every code distribution is near uniform and SIA near zero
# whatever its weight.
TRAINED_TOKENIZER = [
    "tokenizer.epochs=150",
    "tokenizer.hidden_dims=[128]",
    "tokenizer.latent_dim=32",
    "tokenizer.lr=5e-3",
]


@pytest.fixture(scope="module")
def alignment(run, tmp_path_factory, ray_cluster):
    """At the default weights, on one Ray Train + DeepSpeed rank, from a freshly built loop:
    the norm of the gradient w.r.t. the tokenizer of each weighted term of its loss, on two
    batches ("tokenizer_grads"); that of the recommender loss w.r.t. each alignment adapter
    ("adapter_grads"); and one tokenizer step from the same start on the same batch with the
    default weights, without SIA and without PSA ("steps": each loop's parameters before and
    after)."""
    fixture_cfg, _, _ = run
    folder = tmp_path_factory.mktemp("etegrec-aligned")
    for stage in ("data", "features"):  # reused: only the tokenizer trains again
        shutil.copytree(Path(fixture_cfg.run_dir) / stage, folder / stage)
    overrides = [*TINY, *TRAINED_TOKENIZER, "trainer.batch_size=48"]
    cfg = load_config([], [f"run_dir={folder}", *overrides])
    data_dir, tables = stages.data(cfg), stages.id_tables(cfg)
    batches = _distinct_target_batches(data_dir, 3, 48)
    out = folder / "alignment.pt"

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        import copy

        from genrec.config import config_from_dict
        from genrec.trainer.objective import Batch
        from genrec.trainer.train import Loop

        torch.set_num_threads(1)
        tables = [Path(t) for t in config["tables"]]

        def loop_with(**weights):
            plain = copy.deepcopy(config["cfg"])
            plain["trainer"]["etegrec"] |= weights
            cfg = config_from_dict(plain)
            return Loop(cfg, Path(config["data"]), tables, "aligned", method_spec("etegrec"))

        def norm(loss, params):
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            return float(torch.cat([g.flatten() for g in grads if g is not None]).norm())

        def tokenizer_grads(joint, batch):
            """The gradient norm of each term, the others' weights set to 0 for the call."""
            options, terms = joint.options, ("vq", "sia", "psa")
            weights = {term: options[f"{term}_weight"] for term in terms}
            params = [p for p in joint.tokenizer.parameters() if p.requires_grad]
            norms = {}
            for term in terms:
                for other in terms:
                    options[f"{other}_weight"] = weights[term] if other == term else 0.0
                norms[term] = norm(joint.tokenizer_loss(batch)[0], params)
            for term in terms:
                options[f"{term}_weight"] = weights[term]
            return norms

        seen = {}
        loop = loop_with()
        (joint,) = loop.plugins
        coded = [Batch.coded(rows, loop.codes, loop.device) for rows in batches]
        seen["tokenizer_grads"] = [tokenizer_grads(joint, batch) for batch in coded[:2]]
        loss, _ = joint.recommender_loss(coded[0])
        loop.engine.backward(loss)  # DeepSpeed's hooks refuse autograd.grad through the model
        seen["adapter_grads"] = {
            name: sum(
                float(p.grad.norm() ** 2)
                for p in getattr(loop.engine.module, name).parameters()
                if p.grad is not None
            )
            ** 0.5
            for name in ("latent_adapter", "embedding_adapter")
        }
        seen["steps"] = {}
        variants = {"all": {}, "no_sia": {"sia_weight": 0.0}, "no_psa": {"psa_weight": 0.0}}
        for name, weights in variants.items():
            loop = loop_with(**weights)  # fresh: the same start and random draws
            tokenizer = loop.plugins[0].tokenizer
            before = {k: v.detach().clone() for k, v in tokenizer.state_dict().items()}
            loop.micro_step(batches[2])
            after = {k: v.detach().clone() for k, v in tokenizer.state_dict().items()}
            seen["steps"][name] = {"before": before, "after": after, "steps": loop.engine_steps()}
        torch.save(seen, out)

    on_train_workers(loop_per_worker, cfg, data_dir, tables, 0, 1, folder, "aligned")
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_sia_and_psa_at_the_paper_weights_are_a_real_share_of_the_tokenizer_gradient(alignment):
    """The tokenizer's VQ loss is scaled as in the official code (means over dimensions and
    levels): against it, SIA and PSA at their default weights each give a few percent or more
    of the tokenizer's gradient norm (well under 1% each against the summed RQ-VAE loss of
    `genrec tokenize`), and neither outweighs the VQ term."""
    for norms in alignment["tokenizer_grads"]:
        for term in ("sia", "psa"):
            share = norms[term] / norms["vq"]
            assert 0.025 < share < 1.0, (term, norms)


@pytest.mark.slow
def test_the_recommender_loss_trains_both_alignment_adapters(alignment):
    """The latent adapter feeds SIA only, the embedding adapter PSA only: each gets a gradient
    from the recommender's loss."""
    grads = alignment["adapter_grads"]
    assert grads["latent_adapter"] > 0 and grads["embedding_adapter"] > 0, grads


@pytest.mark.slow
def test_sia_and_psa_each_change_the_tokenizer_step(alignment):
    """From the same start on the same batch, the tokenizer's step with SIA and PSA differs
    from its step without SIA, and from that without PSA."""
    steps = alignment["steps"]
    start, full = steps["all"]["before"], steps["all"]["after"]

    def move(after):
        return torch.cat([(after[k] - start[k]).flatten() for k in start])

    for name, step in steps.items():
        assert step["steps"] == 1, name  # one optimizer step, of the tokenizer's engine
        assert all(torch.equal(step["before"][k], start[k]) for k in start), name
        assert move(step["after"]).norm() > 0, name
    for name in ("no_sia", "no_psa"):
        change = (move(steps[name]["after"]) - move(full)).norm() / move(full).norm()
        assert change > 1e-3, (name, float(change))


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_without_alternation_every_step_trains_both_parts(run, tmp_path):
    """The paper's ablation: each optimizer step updates the tokenizer and the recommender,
    each with its own engine, from the same batch."""
    _, data_dir, tables = run
    cfg = load_config([], [f"run_dir={tmp_path}", *TINY, "trainer.etegrec.alternate=false"])
    batches = _distinct_target_batches(data_dir, 2, 64)
    out = tmp_path / "joint.json"

    def loop_per_worker(config: dict) -> None:  # a closure: Ray ships it by value
        from genrec.config import config_from_dict
        from genrec.trainer.train import Loop

        torch.set_num_threads(1)
        cfg = config_from_dict(config["cfg"])
        tables = [Path(t) for t in config["tables"]]
        loop = Loop(cfg, Path(config["data"]), tables, "joint", method_spec("etegrec"))
        model = {k: v.clone() for k, v in loop.engine.module.state_dict().items()}
        tokenizer = {k: v.clone() for k, v in loop.plugins[0].tokenizer.state_dict().items()}
        terms = [sorted(loop.micro_step(rows)) for rows in batches]
        moved = [
            any(not torch.equal(before[k], after[k]) for k in before)
            for before, after in (
                (model, loop.engine.module.state_dict()),
                (tokenizer, loop.plugins[0].tokenizer.state_dict()),
            )
        ]
        out.write_text(json.dumps({"terms": terms, "moved": moved, "steps": loop.engine_steps()}))

    on_train_workers(loop_per_worker, cfg, data_dir, tables, 0, 1, tmp_path, "joint")
    seen = json.loads(out.read_text())
    assert seen["moved"] == [True, True] and seen["steps"] == 4  # 2 batches x 2 engines
    assert seen["terms"][0] == ["generation", "loss", "psa", "sia", "vq"]


@pytest.mark.slow
@pytest.mark.usefixtures("ray_cluster")
def test_a_run_killed_in_a_tokenizer_epoch_resumes_there_and_keeps_its_ids(
    run, tmp_path, monkeypatch
):
    """`genrec run method=etegrec` with a worker killed inside the second tokenizer epoch: the
    restarted run resumes from that epoch's checkpoint and re-codes after it; the selected
    model evaluates with the IDs written beside it and refuses the pre-trained ones; the
    fine-tuning stage trains on those IDs. The run folder is relative, as README's is: the
    workers, which run elsewhere, find every input."""
    fixture_cfg, data_dir, tables = run
    monkeypatch.chdir(tmp_path)
    run_dir = Path("run")
    for stage in ("data", "features", "tokenizer"):
        shutil.copytree(Path(fixture_cfg.run_dir) / stage, run_dir / stage)
    # Prefix examples, whose steps an epoch the manifest's count gives.
    examples = json.loads((data_dir / "manifest.json").read_text())["num_train_examples"]
    steps_per_epoch = math.ceil(examples / 64)
    fail_at = 2 * steps_per_epoch + steps_per_epoch // 2 + 1
    drill = [
        "cluster.num_workers=2",
        "cluster.max_failures=1",
        "trainer.checkpoint_every=5",
        "trainer.shuffle_buffer=64",  # few rows in flight to read again (see DataPosition)
        f"cluster.fail_at_step={fail_at}",
        "trainer.model.encoder=bidirectional",
    ]
    cfg = load_config([], [f"run_dir={run_dir}", *TINY, *drill])
    results = json.loads(stages.evaluate(cfg).read_text())
    assert results["method"] == "etegrec" and results["test"]["recall@10"] > 0
    out = run_dir / "train"
    summary = json.loads((out / "train.json").read_text())
    _, second = summary["attempts"]
    assert 2 * steps_per_epoch <= second["step"] < fail_at  # resumed inside epoch 2
    assert [round(change["epoch"]) for change in summary["recoded"]] == [1, 3]
    phases = [(e["epoch"], e["phase"]) for e in summary["phase_epochs"]]
    assert phases == [(0, "tokenizer"), (1, "recommender"), (2, "tokenizer")]
    learned = out / "semantic_ids.parquet"
    choice = json.loads((run_dir / "finetune" / "choice.json").read_text())
    assert Path(choice["table"]).absolute() == learned.absolute()
    tuned = torch.load(run_dir / "finetune" / "model.pt", weights_only=True)
    assert tuned["semantic_ids"] == [file_digest(learned)]
    method = method_spec("etegrec")
    model = out / "model.pt"
    metrics = evaluate_checkpoint(cfg, method, model, data_dir, [learned], {}, tmp_path / "m")
    for key, value in metrics["valid"].items():
        assert value == pytest.approx(summary["valid"][key], abs=1e-6), key
    with pytest.raises(DataError, match="semantic"):
        evaluate_checkpoint(cfg, method, model, data_dir, tables, {}, tmp_path / "x")
