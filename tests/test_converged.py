"""benchmarks/converged.py's accounting: curves run on across training stages, a run at its
epoch cap is marked, and each method's row is its seeds' mean with their spread."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("converged", REPO / "benchmarks" / "converged.py")
converged = importlib.util.module_from_spec(spec)
spec.loader.exec_module(converged)


def _stage(folder: Path, epochs: float, best_step: int, validations: list[tuple]) -> None:
    """A train.json with (samples, train seconds, validation seconds, ndcg@10) validations."""
    records = [
        {"samples": s, "train_seconds": t, "valid_seconds": v, "ndcg@10": n}
        for s, t, v, n in validations
    ]
    summary = {
        "validations": records,
        "samples": records[-1]["samples"],
        "train_seconds": records[-1]["train_seconds"],
        "epochs": epochs,
        "best_step": best_step,
    }
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(summary))


def test_fine_tuning_continues_the_pre_training_curve(tmp_path):
    _stage(tmp_path / "train", 4.0, 20, [(100, 10.0, 1.0, 0.1), (200, 20.0, 1.0, 0.2)])
    _stage(tmp_path / "finetune", 2.0, 5, [(50, 4.0, 2.0, 0.3)])
    record = converged.training_record(tmp_path, cap=4)
    assert [p["samples"] for p in record["curve"]] == [100, 200, 250]
    assert [p["seconds"] for p in record["curve"]] == [11.0, 22.0, 28.0]
    assert record["samples"] == 250 and record["seconds"] == 28.0 and record["epochs"] == 6.0
    assert record["best"] == {"stage": "finetune", "step": 5}
    assert record["hit_cap"]  # pre-training ran its 4 epochs: the cap
    assert not converged.training_record(tmp_path, cap=5)["hit_cap"]


def _run(name: str, recall: float, hit_cap: bool = False) -> dict:
    test = {"recall@5": recall / 2, "recall@10": recall, "ndcg@5": 0.1, "ndcg@10": 0.2}
    training = {
        "best": {"stage": "train", "step": 7},
        "epochs": 3.0,
        "hit_cap": hit_cap,
        "samples": 100,
        "seconds": 9.0,
        "seconds_per_epoch": 3.0,
        "seconds_per_validation": 1.0,
    }
    popularity = {"test": dict.fromkeys(test, 0.01), "valid": {"ndcg@10": 0.01}}
    return {
        "name": name,
        "test": test,
        "valid": {"ndcg@10": 0.3},
        "training": training,
        "popularity": popularity,
    }


def test_rows_average_seeds_and_measure_gains_against_tiger():
    runs = [
        _run("tiger-s0", 0.10),
        _run("tiger-s1", 0.12),
        _run("letter-s0", 0.121, hit_cap=True),
        _run("letter-small-s0", 0.099),
    ]
    point = {"lr": 0.001, "dropout": 0.5, "hidden": 64, "max_len": 20}
    test = {"recall@5": 0.1, "recall@10": 0.2, "ndcg@5": 0.1, "ndcg@10": 0.1, "recall@20": 0.3}
    sasrec = {"best": {"point": point, "test": test, "valid": {"ndcg@10": 0.4}}}
    rows = {row["model"]: row for row in converged.table_rows(runs, sasrec)}
    tiger, letter = rows["genrec tiger"], rows["genrec letter"]
    assert tiger["seeds"] == 2 and tiger["recall@10"] == pytest.approx(0.11)
    assert tiger["recall@10 spread"] == pytest.approx(0.02)
    assert letter["gain over tiger"] == pytest.approx(0.10) and letter["hit cap"]
    assert rows["genrec letter-small"]["gain over tiger"] == pytest.approx(-0.10)
    assert rows["SASRec tuned (lr0.001-dropout0.5-hidden64-max_len20)"]["recall@10"] == 0.2
    assert "recall@20" not in rows["SASRec tuned (lr0.001-dropout0.5-hidden64-max_len20)"]
    assert rows["popularity"]["valid ndcg@10"] == 0.01
    table = converged.markdown(list(rows.values()))
    assert "+10.0%" in table and "-10.0%" in table


def test_the_curriculum_is_scaled_to_tigers_plateau(tmp_path):
    """MTGRec's stages keep the official 60 + 6 x 20 shape over the epochs TIGER took."""
    with pytest.raises(SystemExit, match="run --methods tiger --seeds 1 first"):
        converged.tiger_best_epoch(tmp_path, 1, per_epoch=1000, batch_size=100)
    record = tmp_path / "runs" / "tiger-s1" / converged.RUN_RECORD
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"training": {"best": {"stage": "train", "step": 400}}}))
    plateau = converged.tiger_best_epoch(tmp_path, 1, per_epoch=1000, batch_size=100)
    assert plateau == 40.0
    assert converged.curriculum_stages(plateau) == [12, 4, 4, 4, 4, 4, 4]
    assert converged.curriculum_stages(200) == [60, 20, 20, 20, 20, 20, 20]
