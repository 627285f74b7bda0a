"""Artifacts are written whole or not at all, by one writer."""

import pytest

from genrec.provenance import atomic_file, write_json


def test_a_failed_write_keeps_the_previous_file_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "report.json"
    write_json(path, {"version": 1})
    with pytest.raises(RuntimeError), atomic_file(path) as tmp:
        tmp.write_text('{"version": 2, "half')
        raise RuntimeError("killed mid-write")
    assert path.read_text() == '{\n  "version": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with atomic_file(path) as tmp:
        tmp.write_text("{}")
    assert path.read_text() == "{}" and len(list(tmp_path.iterdir())) == 1
