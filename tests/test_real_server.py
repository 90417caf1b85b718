"""The OpenAI-compatible client against a real server: `transformers serve` on loopback with the
embedded student (the same client serves Gemini's endpoint, OpenAI and `vllm serve`)."""
import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.models.cache import CompletionCache
from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend
from exgrpo_utils.models.local_server import ServerError, serve_locally
from exgrpo_utils.teach import inversion as probes
from exgrpo_utils.teach import rules, teachers
from exgrpo_utils.teach.settings import EISettings


@pytest.fixture(scope="module")
def served_student(student_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_locally(student_path, log_path=log, env={"HF_HOME": str(log.parent / "hf")}) as base_url:
        yield base_url, student_path


@pytest.mark.slow
def test_teacher_pipeline_through_a_real_openai_compatible_server(served_student, tmp_path):
    base_url, model = served_student
    backend = OpenAICompatibleBackend(base_url=base_url, model=model, max_in_flight=2, timeout_s=120)
    chat = CachedBackend(backend, CompletionCache(tmp_path / "cache.sqlite"))
    rule_set = rules.load_rules().subset(["why", "decomposition"])
    teacher = teachers.LLMTeacher(chat, rule_set, max_new_tokens=48)
    items = data.load("gsm8k", "train", limit=2)
    res = probes.run_pipeline(items, teacher, rule_set, student=None, config=EISettings(require_teacher_correct=False))
    assert all(r["teacher_cot"] for r in res["records"])
    assert backend.usage.requests >= 2 + 4  # CoT for both items, a probe per rule and item
    assert backend.usage.prompt_tokens > 0 and backend.usage.completion_tokens > 0
    stats = res["stats_items"].iloc[0]
    assert stats.items_in == 2 and stats.probes_attempted == 4
    paid = backend.usage.requests
    probes.run_pipeline(items, teacher, rule_set, student=None, config=EISettings(require_teacher_correct=False))
    assert backend.usage.requests == paid  # a rerun is served from the cache


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path):
    with pytest.raises(ServerError, match="exited with"):
        with serve_locally(str(tmp_path / "no-such-model"), log_path=tmp_path / "serve.log", startup_timeout_s=120):
            pass
