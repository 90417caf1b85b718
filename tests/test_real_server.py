"""The OpenAI-compatible client against a real server: `transformers serve` on loopback with the
embedded student (the same client serves Gemini's endpoint, OpenAI and `vllm serve`)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from exgrpo_utils.data import datasets as data
from exgrpo_utils.models.cache import CompletionCache
from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend
from exgrpo_utils.teach import inversion as probes
from exgrpo_utils.teach import rules, teachers
from exgrpo_utils.teach.settings import EISettings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served_student(student_path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    exe = Path(sys.executable).with_name("transformers")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(log.parent / "hf"))
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), student_path],
                                stdout=fh, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                pytest.fail(f"transformers serve did not come up:\n{log.read_text()[-2000:]}")
            time.sleep(1)
        yield f"{url}/v1", student_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
