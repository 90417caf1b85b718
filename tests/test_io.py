import json
import os

import pytest

from exgrpo_utils.infra.files import append_jsonl, atomic_write_json, iter_jsonl, read_log_jsonl


def test_interrupted_last_line_is_cut_and_earlier_records_kept(tmp_path):
    log = tmp_path / "log.jsonl"
    append_jsonl(log, [{"id": 1}, {"id": 2}])
    with open(log, "a") as fh:
        fh.write('{"id": 3, "comp')  # a write cut off by a kill
    assert read_log_jsonl(log) == [{"id": 1}, {"id": 2}]
    append_jsonl(log, [{"id": 3}])
    assert [r["id"] for r in read_log_jsonl(log)] == [1, 2, 3]


def test_complete_json_without_newline_counts_as_unfinished(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"id": 1}\n{"id": 2}')
    assert read_log_jsonl(log) == [{"id": 1}]
    assert log.read_text() == '{"id": 1}\n'


def test_corruption_before_the_last_line_is_an_error(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"id": 1}\nnot json\n{"id": 3}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: corrupt log line"):
        read_log_jsonl(log)


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    path = tmp_path / "a" / "b.json"
    atomic_write_json(path, {"x": 1})
    atomic_write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]  # no temporary left behind
    assert os.stat(path).st_mode & 0o044  # readable by others, like any file the user writes


def test_iter_jsonl_rejects_non_objects(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: expected a JSON object"):
        list(iter_jsonl(path))
