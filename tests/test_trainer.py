"""The training loop's parts: engine settings, schedule, loss, batching and evaluation inputs."""

import math
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from genrec.config import load_config
from genrec.data_pipeline.example_arrays import Sequences, cut_prefixes, length_grouped, pools
from genrec.data_pipeline.prepared import EvalSet
from genrec.data_pipeline.streaming import length_batches
from genrec.errors import ConfigError, DataError
from genrec.trainer.config import batch_plan, validation_steps
from genrec.trainer.engine import deepspeed_config, warmup_cosine
from genrec.trainer.evaluate import left_padded
from genrec.trainer.hooks import Plugin
from genrec.trainer.item_codes import ItemCodes
from genrec.trainer.model import code_cross_entropy
from genrec.trainer.train import Progress, wants_validation


def test_global_batch_is_split_into_accumulation_steps():
    cfg = load_config([], ["trainer.batch_size=256", "trainer.micro_batch_size=32"])
    assert batch_plan(cfg.trainer, workers=1) == (32, 8)
    assert batch_plan(cfg.trainer, workers=2) == (32, 4)
    ds = deepspeed_config(cfg.trainer, 2, torch.device("cpu"))
    assert ds["train_batch_size"] == 256 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_micro_batch_size_per_gpu"] == 32 and ds["bf16"]["enabled"] is False
    with pytest.raises(ConfigError, match=r"'batch_size' \(256\) must be divisible by"):
        batch_plan(cfg.trainer, workers=3)


@pytest.mark.parametrize(
    ("batch", "workers", "cap", "plan"),
    [
        (256, 1, 256, (256, 1)),
        (256, 2, 256, (128, 1)),
        (256, 16, 256, (16, 1)),
        (1024, 2, 256, (256, 2)),
        (768, 1, 200, (192, 4)),
        (7, 1, 4, (1, 7)),
    ],
)
def test_default_micro_batch_follows_the_global_batch_and_workers(batch, workers, cap, plan):
    """A null micro-batch is the worker's share, cut into the fewest micro-steps that keep
    it within the cap; the global batch is the same for any worker count."""
    cfg = load_config(
        [],
        [
            f"trainer.batch_size={batch}",
            f"trainer.max_micro_batch_size={cap}",
            f"cluster.num_workers={workers}",
        ],
    )
    micro, steps = batch_plan(cfg.trainer, workers)
    assert (micro, steps) == plan and micro * steps * workers == batch


def test_bf16_follows_precision_and_device():
    cfg = load_config([], ["trainer.precision=bf16"])
    assert deepspeed_config(cfg.trainer, 1, torch.device("cpu"))["bf16"]["enabled"] is True
    auto = load_config([]).trainer
    assert deepspeed_config(auto, 1, torch.device("cuda"))["bf16"]["enabled"] is True


def test_the_cpu_backend_never_builds_deepspeeds_shared_memory_op():
    """A fresh install's first CPU run would compile it (25-40 s) for inference kernels that
    training never calls. In a subprocess: the test process keeps no process group."""
    probe = (
        "import torch\n"
        "from genrec.trainer.engine import init_distributed\n"
        "init_distributed(torch.device('cpu'))\n"
        "from deepspeed.comm import comm\n"
        "print(comm.cdb.shm_comm_op)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "None"
    assert "built successfully" not in out.stdout + out.stderr


def test_warmup_then_cosine_to_the_floor():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)


def test_ranking_guided_loss_is_cross_entropy_of_sharpened_logits():
    logits = torch.tensor([[[2.0, 0.0, float("-inf")], [1.0, 1.0, 0.0]]])
    target = torch.tensor([[0, 2]])
    plain = (-math.log(math.e**2 / (math.e**2 + 1)) - math.log(1 / (2 * math.e + 1))) / 2
    assert code_cross_entropy(logits, target).item() == pytest.approx(plain)
    sharp = (-math.log(math.e**4 / (math.e**4 + 1)) - math.log(1 / (2 * math.e**2 + 1))) / 2
    assert code_cross_entropy(logits, target, temperature=0.5).item() == pytest.approx(sharp)


def test_method_defaults_sit_under_user_settings():
    letter = load_config([], ["method=letter"])
    assert letter.tokenizer.name.name == "letter"
    assert letter.tokenizer.collisions.name == "sinkhorn"
    assert letter.trainer.temperature == 0.8
    mine = load_config([], ["trainer.temperature=1.1", "method=letter"])
    assert mine.trainer.temperature == 1.1 and mine.tokenizer.name.name == "letter"
    assert load_config([]).tokenizer.name.name == "rqvae"
    with pytest.raises(ConfigError, match="config key 'method' is 'hstu'; choose one of"):
        load_config([], ["method=hstu"])


def test_length_grouped_batches_cut_padding_and_keep_every_example():
    """Pools of whole sequences drawn from the stream, each leaving the shuffle buffer's
    examples behind, sorted by length and cut into batches of 16 targets: every example leaves
    once, a sequence's examples in one pool, with far less padding than random batches of 16."""
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 100, n) for n in rng.integers(2, 50, 200)]
    user = np.arange(len(seqs))
    block = Sequences.of_lists(seqs, user)
    examples = cut_prefixes(block, 50, seed=0)
    parts = (cut_prefixes(block.take(np.arange(i, i + 10)), 50, seed=0) for i in range(0, 200, 10))
    drawn = list(pools(parts, 16 * 8, 100, rng))
    assert all(len(held) - len(pool) >= 100 for held, pool in drawn[:-1])  # the buffer stays
    pooled_rows = [set(held.row[pool].tolist()) for held, pool in drawn]
    assert sum(map(len, pooled_rows)) == len(set().union(*pooled_rows)) == 200  # whole rows
    batches = [b for held, pool in drawn for b in length_grouped(held, pool, 16, rng)]
    short = [len(b) for b in batches if len(b) != 16]
    assert len(short) <= len(drawn) and all(0 < n < 16 for n in short)  # a pool's last
    key = np.concatenate([b.row * 100 + b.length for b in batches])
    assert sorted(key.tolist()) == sorted((examples.row * 100 + examples.length).tolist())
    pad = sum(len(b) * b.length.max() for b in batches)
    shuffled = rng.permutation(examples.length)
    random_pad = sum(16 * shuffled[i : i + 16].max() for i in range(0, len(examples), 16))
    assert pad < 0.7 * random_pad
    rows = np.concatenate([b.row for b in batches])
    assert not np.array_equal(np.sort(rows), rows)  # shuffled, not in arrival order


def test_length_batches_keep_every_example_within_the_item_budget():
    lengths = np.random.default_rng(0).integers(0, 50, 300)
    examples = [{"history": np.arange(n), "target": i} for i, n in enumerate(lengths)]
    batches = list(length_batches(examples, 128))
    assert sorted(ex["target"] for b in batches for ex in b) == list(range(300))
    for batch in batches:
        width = max(max(len(ex["history"]) for ex in batch), 1)
        assert len(batch) * width <= 128
    widths = [len(b[-1]["history"]) for b in batches]
    assert widths == sorted(widths)
    (whole,) = length_batches(examples, 10**6)
    assert len(whole) == 300
    assert [len(b) for b in length_batches(examples[:3], 1)] == [1, 1, 1]


def test_left_padded_keeps_the_newest_item_last():
    offsets, values = np.array([0, 3, 3, 4]), np.array([5, 6, 7, 9])
    padded = left_padded(offsets, values, np.array([0, 2, 1]))
    assert padded.tolist() == [[5, 6, 7], [-1, -1, 9], [-1, -1, -1]]


def test_subsample_is_fixed_and_consistent():
    split = EvalSet("valid", np.arange(5), np.array([0, 1, 3, 4, 6, 9]), np.arange(9), np.arange(5))
    a, b = split.subsample(3, seed=7), split.subsample(3, seed=7)
    assert np.array_equal(a.users, b.users) and a.users.size == 3
    for row, user in enumerate(a.users):
        own = split.history[split.offsets[user] : split.offsets[user + 1]]
        assert np.array_equal(a.history[a.offsets[row] : a.offsets[row + 1]], own)
    assert split.subsample(0, seed=7) is split


def test_item_codes_map_histories_and_reject_bad_tables(tmp_path):
    codes = ItemCodes(np.array([[1, 2, 0], [3, 0, 1]]), codebook_size=4)
    assert codes(torch.tensor([[-1, 1, 0]])).tolist() == [[[-1, -1, -1], [3, 0, 1], [1, 2, 0]]]
    assert (codes.num_levels, codes.dedup_size) == (2, 2)
    path = tmp_path / "semantic_ids.parquet"
    pq.write_table(pa.table({"item": [1, 0], "codes": [[1, 2, 0], [3, 0, 1]]}), path)
    with pytest.raises(DataError, match=r"semantic_ids.parquet.*items 0..1 in order"):
        ItemCodes.load([path], 2, 4)
    pq.write_table(pa.table({"item": [0, 1], "codes": [[1, 9, 0], [3, 0, 1]]}), path)
    with pytest.raises(DataError, match=r"codes must lie in \[0, 4\), max is 9"):
        ItemCodes.load([path], 2, 4)


def test_validation_runs_every_eval_every_steps_or_once_an_epoch():
    cfg = load_config([], ["trainer.eval_every=null", "trainer.batch_size=256"])
    assert validation_steps(cfg.trainer, 27_242) == 107  # ceil(27,242 / 256)
    assert validation_steps(cfg.trainer, 10) == 1
    cfg = load_config([], ["trainer.eval_every=40"])
    assert validation_steps(cfg.trainer, 27_242) == 40


def patience_run(curve: list[float], min_gain: float, patience: int = 2) -> tuple[int, int]:
    """(validations run, index of the best) when patience stops the curve's run."""
    progress = Progress()
    for index, value in enumerate(curve):
        progress.step = index
        progress.judge({"ndcg@10": value}, min_gain)
        if progress.stale >= patience:
            return index + 1, progress.best_step
    return len(curve), progress.best_step


class Deferring(Plugin):
    """Validates on odd steps only, keeping a due validation until then."""

    def __init__(self):
        self.step, self.owed = 0, False

    def validate_now(self, due: bool) -> bool:
        self.step, self.owed = self.step + 1, self.owed or due
        if self.step % 2 == 0:
            return False
        now, self.owed = self.owed, False
        return now


def test_the_loop_validates_when_due_unless_a_plugin_moves_it():
    due = [False, True, False, True, False, False]
    moved = [False, False, True, False, True, False]
    assert [wants_validation([], d) for d in due] == due
    assert [wants_validation([Plugin()], d) for d in due] == due
    alone = [Deferring()]
    assert [wants_validation(alone, d) for d in due] == moved
    both = [Plugin(), Deferring()]
    assert [wants_validation(both, d) for d in due] == moved


def test_patience_resets_on_a_gain_of_min_gain_and_the_best_is_kept_regardless():
    """A slow creep (1% a validation) keeps a run going at min_gain 0; at 2% it stops after
    `patience` validations that do not beat, by 2%, the one that last reset patience, and
    still selects the best validation it saw."""
    creep = [0.100, 0.200, 0.202, 0.204, 0.206, 0.208, 0.150]
    assert patience_run(creep, 0.0) == (len(creep), 5)
    assert patience_run(creep, 0.02) == (4, 3)
    assert patience_run([0.1, 0.3, 0.2, 0.25], 0.0) == (4, 1)
    with pytest.raises(ConfigError, match=r"trainer\.min_gain"):
        load_config([], ["trainer.min_gain=-0.1"])
