"""Small integrity holes: cache keys, cache and log files that are damaged, the API-key setting,
absolute paths in committed results."""
import re
import subprocess
from pathlib import Path

import pytest

from exgrpo_utils.infra.files import read_log_jsonl
from exgrpo_utils.models.cache import CacheError, ChatResult, CompletionCache
from exgrpo_utils.models.chat import CachedBackend, OpenAICompatibleBackend, TeacherConfigError
from exgrpo_utils.models.generation import SamplingConfig


class Echo:
    kind, model = "openai", "m"

    def __init__(self, identity):
        self.identity, self.calls = identity, 0

    def complete(self, batch, sampling, on_result=None):
        out = []
        for i, _ in enumerate(batch):
            self.calls += 1
            res = ChatResult(f"answer from {self.identity}")
            on_result(i, res)
            out.append(res)
        return out


def test_the_cache_key_includes_the_server_and_the_dtype(tmp_path):
    cache = CompletionCache(tmp_path / "c.sqlite")
    batch = [[{"role": "user", "content": "q"}]]
    sampling = SamplingConfig(max_new_tokens=8)
    a, b = Echo({"base_url": "http://127.0.0.1:1"}), Echo({"base_url": "http://127.0.0.1:2"})
    assert CachedBackend(a, cache).complete(batch, sampling)[0].text != CachedBackend(b, cache).complete(batch, sampling)[0].text
    assert (a.calls, b.calls) == (1, 1)  # another server is another answer, not a cache hit
    CachedBackend(Echo({"base_url": "http://127.0.0.1:1"}), cache).complete(batch, sampling)
    fp32, bf16 = Echo({"dtype": "torch.float32"}), Echo({"dtype": "torch.bfloat16"})
    CachedBackend(fp32, cache).complete(batch, sampling)
    CachedBackend(bf16, cache).complete(batch, sampling)
    assert (fp32.calls, bf16.calls) == (1, 1)
    cache.close()


def test_a_corrupt_cache_file_names_itself_and_the_way_out(tmp_path):
    path = tmp_path / "completions.sqlite"
    path.write_bytes(b"this is not a database, just bytes" * 100)
    with pytest.raises(CacheError, match=r"completions.sqlite: not a usable completion cache .*Move it aside \(mv "):
        CompletionCache(path)


@pytest.mark.parametrize("value", ["sk-live-1234567890abcdef", "AIza Sy-secret", "my key"])
def test_an_api_key_given_where_its_variable_name_belongs_is_refused_unprinted(value):
    with pytest.raises(TeacherConfigError) as err:
        OpenAICompatibleBackend(base_url="http://127.0.0.1:9", model="m", api_key_env=value)
    assert value not in str(err.value) and "NAME of the environment variable" in str(err.value)


def test_a_torn_log_in_a_read_only_folder_is_reported_not_truncated(tmp_path, monkeypatch):
    from exgrpo_utils.infra import files

    log = tmp_path / "train_log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2')

    def read_only_open(path, mode="r", *args, **kwargs):  # as on a read-only mount (root ignores file modes)
        if "+" in mode or "w" in mode or "a" in mode:
            raise PermissionError(13, "Read-only file system")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", read_only_open, raising=False)
    with pytest.warns(UserWarning, match="last line is incomplete .* could not be repaired"):
        assert read_log_jsonl(log) == [{"step": 1}]
    assert log.read_text().endswith('{"step": 2')  # left as it was


ABSOLUTE = re.compile(r"""(?:^|[\s"'(=:,\[])(/(?:home|root|tmp|work|Users|mnt|opt|var|srv|data|private)/[^\s"']*"""
                      r"""|[A-Za-z]:\\\\[^\s"']+)""")


def test_no_committed_result_holds_an_absolute_path():
    """Records under results/ are portable: paths relative to the results root (issue 11)."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=root, capture_output=True, text=True)
    files = [root / f for f in tracked.stdout.splitlines()] if tracked.returncode == 0 else \
        [p for p in (root / "results").rglob("*") if p.is_file()]
    assert files, "results/ holds no files"
    found = []
    for path in files:
        if path.suffix not in {".json", ".jsonl", ".csv", ".md", ".ipynb", ".txt", ".yaml"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        hits = [m.group(1) for m in ABSOLUTE.finditer(text)]
        for needle in {str(root), str(Path.home())} - {"/"}:
            if needle in text:
                hits.append(needle)
        if hits:
            found.append(f"{path.relative_to(root)}: {hits[0][:120]}")
    assert not found, f"{len(found)} committed result files hold absolute paths:\n" + "\n".join(found[:20])


def test_printed_paths_become_portable():
    from exgrpo_utils.infra.paths import PROJECT_ROOT, cache_dir, portable_text, results_root

    text = (f"saved to {results_root()}/runs/cpu/train/sft/final\nwarning at {PROJECT_ROOT}/.venv/lib/x.py:3\n"
            f"cache {cache_dir()}/completions.sqlite; home {Path.home()}/elsewhere")
    out = portable_text(text)
    assert "saved to runs/cpu/train/sft/final" in out and "warning at .venv/lib/x.py:3" in out
    assert "$EXGRPO_CACHE_DIR/completions.sqlite" in out and "~/elsewhere" in out
    assert not ABSOLUTE.search(out) and portable_text("1/2 and http://x/y") == "1/2 and http://x/y"
