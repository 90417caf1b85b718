import json
import warnings
from pathlib import Path

import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.data import normalize, synthetic
from exgrpo_utils.data.answers import parse_number
from exgrpo_utils.data.datasets import DATASETS, LETTERS, DataError, DataNotFoundError, Example, parse_row
from exgrpo_utils.data.hub import HubSource
from exgrpo_utils.data.registry import DatasetSpec

LOCAL_SPLITS = [(n, s) for n, spec in DATASETS.items() if spec.role != "synthetic" for s in spec.splits]


def _load_quiet(name, split, data_dir, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.load(name, split, data_dir=data_dir, **kw)


@pytest.mark.parametrize("name,split", LOCAL_SPLITS)
def test_every_dataset_loads_with_manifest_counts_and_canonical_gold(name, split, data_dir):
    examples = _load_quiet(name, split, data_dir)
    defects = sum(1 for (n, s, _), _why in data.KNOWN_DEFECTS.items() if (n, s) == (name, split))
    assert len(examples) + defects == DATASETS[name].rows[split]
    assert len({e.id for e in examples}) == len(examples), "ids must be unique"
    kind = DATASETS[name].answer_type
    for e in examples:
        assert e.dataset == name and e.question.strip() and e.answer
        if kind == "yesno":
            assert e.answer in ("yes", "no")
        elif kind == "letter":
            assert e.choices and e.answer in LETTERS[: len(e.choices)]
            assert f"({e.answer}) {e.choices[LETTERS.index(e.answer)]}" in e.question
        elif kind == "number":
            assert normalize.canonical_number(e.answer) == e.answer and parse_number(e.answer) is not None
        elif e.choices:  # TabMWP multiple choice
            assert e.answer in e.choices
        else:
            assert "\\boxed" not in e.answer


def test_known_defects_are_skipped_with_a_warning_naming_the_line(data_dir):
    with pytest.warns(UserWarning, match=r"math/train.jsonl:5530: skipped known source defect"):
        data.load("math", "train", data_dir=data_dir, limit=1)


def test_date_options_are_shuffled_with_a_fixed_seed(data_dir):
    a = data.load("date_understanding", "test", data_dir=data_dir)
    b = data.load("date_understanding", "test", data_dir=data_dir)
    assert [e.question for e in a] == [e.question for e in b]
    counts = {L: sum(e.answer == L for e in a) for L in "ABCDEF"}
    assert max(counts.values()) < 0.4 * len(a), counts  # the source has the gold first in ~99% of rows


def test_arc_numeric_labels_become_letters(data_dir):
    raw = [json.loads(l) for l in open(data_dir / "arc_challenge" / "train.jsonl")]
    idx = next(i for i, r in enumerate(raw) if r["question"]["choices"][0]["label"] == "1")
    ex = data.load("arc_challenge", "train", data_dir=data_dir)[idx]
    key = int(raw[idx]["answerKey"])
    assert ex.answer == "ABCD"[key - 1]
    assert "(A) " in ex.question and "(1)" not in ex.question


def test_arc_test_and_boolq_other_layout(data_dir):
    arc = data.load("arc_challenge", "test", data_dir=data_dir, limit=1)[0]
    assert arc.answer == "C" and not arc.question.startswith("Question:")
    boolq = data.load("boolq", "test", data_dir=data_dir, limit=1)[0]
    assert boolq.answer == "no" and boolq.question.startswith("Passage:")


def test_gsm8k_answers_with_separators(data_dir):
    answers = {e.answer for e in data.load("gsm8k", "train", data_dir=data_dir)}
    assert "1080" in answers and not any("," in a for a in answers)
    ex = data.load("gsm8k", "test", data_dir=data_dir, limit=1)[0]
    assert ex.answer == "18" and "<<" not in ex.rationale


def test_nested_boxed():
    assert normalize.last_boxed(r"so $\boxed{\frac{1}{\sqrt{2}}}$ and") == r"\frac{1}{\sqrt{2}}"
    assert normalize.last_boxed(r"\boxed{1} then \boxed{\{1,2\}}") == r"\{1,2\}"
    assert normalize.last_boxed(r"\fbox{7}") == "7"
    assert normalize.last_boxed(r"\boxed{1} \fbox{2} \boxed  3.") == "3"
    assert normalize.last_boxed(r"\boxed{\frac{1}{2}") is None  # unbalanced
    assert normalize.last_boxed("no box") is None


@pytest.mark.parametrize("text,canonical", [
    ("1,080", "1080"), ("$18.00", "18"), ("-3", "-3"), ("3/8", "3/8"), ("0.50", "0.5"), (" 7. ", "7"), ("2e3", "2000"),
])
def test_canonical_number(text, canonical):
    assert normalize.canonical_number(text) == canonical


@pytest.mark.parametrize("text", ["", "three", "1/0", "1/x", "--1"])
def test_canonical_number_refuses_non_numbers(text):
    with pytest.raises((ValueError, ZeroDivisionError)):
        normalize.canonical_number(text)


def test_the_loaders_re_export_the_moved_helpers():
    """Old imports keep working: the helpers now live in normalize.py, parsers.py and registry.py."""
    from exgrpo_utils.data import parsers, registry

    assert data.canonical_number is normalize.canonical_number and data.last_boxed is normalize.last_boxed
    assert data.format_options is parsers.format_options and data.DATASETS is registry.DATASETS
    assert data.task_eval_sets("anli") == ["anli", "esnli"]


# ---------------------------------------------------------------------------------------------
# The registry: one DatasetSpec per dataset carries everything

@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_spec_has_a_parser_unless_generated(name):
    spec = DATASETS[name]
    if spec.role == "synthetic":  # generated by synthetic.py, nothing to parse
        assert spec.parser is None and spec.hub is None
    else:
        assert callable(spec.parser), f"{name} has no parser"
        assert set(spec.rows) == set(spec.splits)
    if spec.hub is not None:
        assert isinstance(spec.hub, HubSource) and spec.hf_id == spec.hub.hf_id
        assert set(spec.hub.splits) == set(spec.splits), f"{name}: hub splits differ from the dataset's"
        assert all(parts and all(isinstance(h, str) for _c, h in parts) for parts in spec.hub.splits.values())
        assert callable(spec.hub.adapter)
    else:
        assert spec.hf_id is None


def test_a_spec_read_from_files_must_have_a_parser():
    with pytest.raises(ValueError, match="needs a parser"):
        DatasetSpec("new", "held-in", "number", ("test",), {"test": 1})
    with pytest.raises(ValueError, match="synthetic one has none"):
        DatasetSpec("gen", "synthetic", "number", ("test",), {}, parser=lambda row, split, lineno: {})


def test_hub_sources_read_what_the_paper_uses():
    assert DATASETS["math"].hub.splits["test"][0] == ("algebra", "test") and len(DATASETS["math"].hub.splits["test"]) == 7
    assert DATASETS["anli"].hub.splits["dev"] == ((None, "dev_r1"), (None, "dev_r2"), (None, "dev_r3"))
    assert DATASETS["csqa"].hub.splits["test"] == ((None, "validation"),)
    assert DATASETS["tabmwp"].hub is None and DATASETS["gsm8k_rev"].hub is None


def test_tabmwp_choice_and_number_answers(data_dir):
    ex = data.load("tabmwp", "test", data_dir=data_dir)
    mc = [e for e in ex if e.choices]
    assert mc and all(e.answer in e.choices for e in mc)
    assert any(e.answer == "3/10" for e in ex)


def test_nli_label_mapping():
    anli = data.parse_row("anli", {"uid": "u1", "context": "P", "hypothesis": "H", "label": "c"}, "test", 1, "x")
    assert anli.answer == "C" and anli.choices == ("entailment", "neutral", "contradiction")
    esnli = data.parse_row("esnli", {"s1": "P", "s2": "H", "labels": "neutral"}, "test", 1, "x")
    assert esnli.answer == "B"


@pytest.mark.parametrize("name,row,message", [
    ("gsm8k", {"question": "q", "answer": "no hashes"}, "has no '####'"),
    ("gsm8k", {"answer": "x #### 3"}, "missing field 'question'"),
    ("strategyqa", {"input": "q", "target_scores": {"Yes": 1, "No": 1}}, "one-hot"),
    ("anli", {"context": "c", "hypothesis": "h", "label": "x"}, "not one of e/n/c"),
    ("csqa", {"answerKey": "F", "question": {"stem": "s", "choices": [{"label": "A", "text": "a"}]}}, "not among labels"),
    ("tabmwp", {"question": "q", "table": "t", "choices": ["a", "b"], "answer": "c"}, "not one of the choices"),
])
def test_malformed_rows_name_dataset_file_and_line(tmp_path, name, row, message):
    folder = tmp_path / name
    folder.mkdir()
    spec = DATASETS[name]
    split = spec.splits[-1]
    good = {"gsm8k": {"question": "q", "answer": "r #### 3"}}.get(name)
    lines = [json.dumps(good)] if good else []
    lines.append(json.dumps(row))
    (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        data.load(name, split, data_dir=tmp_path)
    text = str(err.value)
    assert name in text and f"{split}.jsonl:{len(lines)}" in text and message in text


def test_invalid_json_names_file_and_line(tmp_path):
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "test.jsonl").write_text('{"query": "Q?", "choices": ["no", "yes"], "gold": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"boolq/test.jsonl:2: not valid JSON"):
        data.load("boolq", "test", data_dir=tmp_path)


def test_offline_without_local_copy_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("EXGRPO_DATA_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="hub is disabled"):
        data.load("gsm8k", "test")
    with pytest.raises(DataNotFoundError, match="no Hugging Face hub source"):
        data.load("tabmwp", "test")
    with pytest.raises(DataNotFoundError, match="gsm8k/test.jsonl does not exist. A data directory was given, so the hub is not tried"):
        data.load("gsm8k", "test", data_dir=tmp_path)
    with pytest.raises(DataNotFoundError, match="not a directory"):
        data.load("gsm8k", "test", data_dir=tmp_path / "missing")


def test_hub_path_converts_hub_rows(monkeypatch, tmp_path):
    """The online path, with the hub replaced by rows in the hub's own layout."""
    hub_rows = {
        ("openai/gsm8k", "main", "test"): [{"question": "1+1?", "answer": "1+1=2\n#### 2"}],
        ("tau/commonsense_qa", None, "validation"): [{"id": "c1", "question": "Q?", "answerKey": "B",
                                                       "choices": {"label": ["A", "B"], "text": ["x", "y"]}}],
        ("facebook/anli", None, "test_r1"): [{"uid": "a", "premise": "P", "hypothesis": "H", "label": 2, "reason": ""}],
        ("facebook/anli", None, "test_r2"): [],
        ("facebook/anli", None, "test_r3"): [],
        ("google/boolq", None, "validation"): [{"question": "is it", "passage": "P", "answer": True}],
        ("esnli", None, "test"): [{"premise": "P", "hypothesis": "H", "label": 0, "explanation_1": "e"}],
        ("ChilleD/StrategyQA", None, "test"): [{"question": "Q?", "answer": False, "facts": ["f"]}],
        ("tasksource/bigbench", "date_understanding", "validation"): [
            {"inputs": "When?", "multiple_choice_targets": ["a", "b"], "multiple_choice_scores": [0, 1]}],
    }

    import sys
    import types

    fake_datasets = types.SimpleNamespace(load_dataset=lambda hf_id, config, split: hub_rows[(hf_id, config, split)])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("EXGRPO_DATA_DIR", raising=False)
    tmp_path = None  # no data directory: the hub path
    assert data.load("gsm8k", "test", data_dir=tmp_path)[0].answer == "2"
    assert data.load("csqa", "test", data_dir=tmp_path)[0].answer == "B"
    assert data.load("anli", "test", data_dir=tmp_path)[0].answer == "C"
    assert data.load("boolq", "test", data_dir=tmp_path)[0].answer == "yes"
    assert data.load("esnli", "test", data_dir=tmp_path)[0].answer == "A"
    assert data.load("strategyqa", "test", data_dir=tmp_path)[0].answer == "no"
    date = data.load("date_understanding", "test", data_dir=tmp_path)[0]
    assert date.choices[LETTERS.index(date.answer)] == "b"


def test_subsample_is_seeded_and_ordered(data_dir):
    a = data.load("gsm8k", "test", data_dir=data_dir, limit=20, sample_seed=0)
    b = data.load("gsm8k", "test", data_dir=data_dir, limit=20, sample_seed=0)
    c = data.load("gsm8k", "test", data_dir=data_dir, limit=20, sample_seed=1)
    assert [e.id for e in a] == [e.id for e in b] != [e.id for e in c]
    lines = [int(e.id.rsplit("-", 1)[1]) for e in a]
    assert lines == sorted(lines)
    assert [e.id for e in data.load("gsm8k", "test", data_dir=data_dir, limit=3)] == [f"gsm8k-test-{i}" for i in (1, 2, 3)]


def test_example_round_trips_through_dict():
    ex = synthetic.load("arith", "test", n_test=1)[0]
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex


# ---------------------------------------------------------------------------------------------
# Synthetic family

def test_arith_answers_follow_from_the_program():
    for ex in data.load("arith", "train", synthetic_options={"n_train": 300}):
        meta = ex.meta
        assert synthetic.run_program(meta["start"], [(s["op"], s["operand"]) for s in meta["steps"]])[-1] == int(ex.answer)
        assert all(s["before"] > 0 and s["after"] > 0 for s in meta["steps"])
        assert str(meta["start"]) in ex.question and ex.rationale.endswith(f"The answer is {ex.answer}.")


def test_arith_rev_is_the_test_programs_reversed():
    fwd = data.load("arith", "test")
    rev = data.load("arith_rev", "test")
    assert len(fwd) == len(rev) == synthetic.DEFAULTS["n_test"]
    for f, r in zip(fwd, rev):
        assert r.answer == str(f.meta["start"]) and f"has {f.answer} " in r.question
        assert r.meta["steps"] == f.meta["steps"]


def test_arith_train_and_test_are_disjoint_and_seeded():
    train = data.load("arith", "train", synthetic_options={"n_train": 1000})
    test = data.load("arith", "test")
    sig = lambda e: (e.meta["start"], tuple((s["op"], s["operand"]) for s in e.meta["steps"]))
    assert not {sig(e) for e in train} & {sig(e) for e in test}
    again = data.load("arith", "train", synthetic_options={"n_train": 1000})
    assert [e.question for e in again] == [e.question for e in train]
    other = data.load("arith", "train", synthetic_options={"n_train": 1000, "seed": 1})
    assert [e.question for e in other] != [e.question for e in train]


def test_arith_difficulty_is_settable():
    hard = data.load("arith", "test", synthetic_options={"min_steps": 4, "max_steps": 5, "n_test": 50})
    assert all(4 <= len(e.meta["steps"]) <= 5 for e in hard)
    with pytest.raises(ValueError, match="min_steps"):
        data.load("arith", "test", synthetic_options={"min_steps": 3, "max_steps": 2})


def test_unknown_names_and_splits():
    with pytest.raises(KeyError, match="unknown dataset"):
        data.load("nope", "test")
    with pytest.raises(KeyError, match="has no split 'train'"):
        data.load("boolq", "train")


def _copy_cut(src: Path, dst_root: Path, name: str, split: str, keep: int, extra: str = "") -> Path:
    dst = dst_root / name / f"{split}.jsonl"
    dst.parent.mkdir(parents=True)
    lines = (src / name / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
    dst.write_text("".join(lines) + extra, encoding="utf-8")
    return dst


def test_a_cut_or_empty_copy_is_refused_unless_allowed(data_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("EXGRPO_ALLOW_PARTIAL_DATA", raising=False)
    _copy_cut(data_dir, tmp_path, "gsm8k", "test", 10)
    with pytest.raises(DataError, match=r"gsm8k/test: .*gsm8k/test.jsonl has 10 rows, the dataset has 1319"):
        data.load("gsm8k", "test", data_dir=tmp_path, limit=5, sample_seed=0)
    assert len(data.load("gsm8k", "test", data_dir=tmp_path, allow_partial=True)) == 10
    monkeypatch.setenv("EXGRPO_ALLOW_PARTIAL_DATA", "1")
    assert len(data.load("gsm8k", "test", data_dir=tmp_path)) == 10
    monkeypatch.delenv("EXGRPO_ALLOW_PARTIAL_DATA")
    _copy_cut(data_dir, tmp_path, "boolq", "test", 0)
    with pytest.raises(DataError, match="has 0 rows, the dataset has 3270"):
        data.load("boolq", "test", data_dir=tmp_path)


def test_duplicate_ids_are_refused(tmp_path):
    folder = tmp_path / "gsm8k_rev"
    folder.mkdir()
    row = {"question": "q", "answer": "3", "id": "same"}
    folder.joinpath("test.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match="id 'same' appears twice"):
        data.load("gsm8k_rev", "test", data_dir=tmp_path, allow_partial=True)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    folder = tmp_path / "boolq"
    folder.mkdir()
    good = json.dumps({"query": "Q?", "choices": ["no", "yes"], "gold": 1}).encode()
    folder.joinpath("test.jsonl").write_bytes(good + b"\n" + good[:-2] + b"\xff\xfe}\n")
    with pytest.raises(ValueError, match=r"boolq/test.jsonl:2: not UTF-8"):
        data.load("boolq", "test", data_dir=tmp_path, allow_partial=True)


def test_parse_row_refuses_a_dataset_without_a_row_parser_by_name():
    with pytest.raises(DataError, match=r"arith: f.jsonl:3: no row parser \(generated"):
        parse_row("arith", {}, "test", 3, "f.jsonl")
    with pytest.raises(DataError, match=r"nope: f.jsonl:3: no row parser \(unknown dataset\)"):
        parse_row("nope", {}, "test", 3, "f.jsonl")
