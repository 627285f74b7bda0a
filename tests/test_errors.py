"""genrec's errors survive Ray: they pickle back to themselves, and the one a user can act on is
found inside whatever Ray wrapped it in."""

import pickle

import pytest
import ray
from ray.train import WorkerGroupError

from genrec.errors import ConfigError, DataError, TrainingFailed, user_error
from genrec.schema import Invalid

ERRORS = [
    ConfigError("config key 'trainer.batch_size' (256) must be divisible by 3"),
    DataError("/data/shards/train-000000.tar", "checksum mismatch"),
    TrainingFailed("training stopped: worker 1 was lost"),
    Invalid("zero_stage", "must be 0, 1, 2 or 3, got 4"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_round_trips_through_pickle(error):
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is type(error) and str(again) == str(error)
    assert vars(again) == vars(error)


@ray.remote(max_retries=0)
def _read_damaged_shard() -> None:
    raise DataError("/data/shards/train-000000.tar", "checksum mismatch")


def test_the_cause_is_found_inside_a_ray_task_error(ray_cluster):
    """Ray re-raises a task's DataError in the caller (deserialised, not 'Failed to
    deserialize exception'); the wrapper prints a traceback, the cause is the one line."""
    with pytest.raises(DataError) as raised:
        ray.get(_read_damaged_shard.remote())
    cause = user_error(raised.value)
    assert type(cause) is DataError
    assert str(cause) == "/data/shards/train-000000.tar: checksum mismatch"


def test_the_cause_is_found_inside_a_worker_group_error():
    failure = WorkerGroupError("rank 1 failed", {0: RuntimeError("peer"), 1: ERRORS[1]})
    try:
        try:
            raise failure
        except WorkerGroupError as err:
            raise RuntimeError("wrapped") from err
    except RuntimeError as err:
        assert user_error(err) is ERRORS[1]
    assert user_error(WorkerGroupError("lost", {0: RuntimeError("peer")})) is None
