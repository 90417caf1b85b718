"""The vLLM rollout path of ExGRPO, on CPU: TRL 1.16's real trainer consumes what ``DialogueRollout``
returns (prompt_ids, completion_ids, per-token logprobs, env_mask) with its importance-sampling
correction on, after TRL's real LoRA weight sync (merge the adapter, rename, load, unmerge).

vLLM itself needs a GPU; the stand-in below is TRL's ``VLLMGeneration`` class with its own
``sync_weights`` and ``_iter_named_params`` left as they are, a fake ``llm`` whose model receives the
synced tensors by name, and a ``generate`` that samples from those tensors and reports each sampled
token's processed log-probability (after temperature) in vLLM's shape."""
import json
from types import SimpleNamespace

import pytest

from exgrpo_utils.teach.rules import load_rules
from exgrpo_utils.train import exgrpo
from exgrpo_utils.train.settings import ExGRPOSettings

torch = pytest.importorskip("torch")


class _EngineWeights:
    """vLLM's ``model_runner.model``: ``load_weights([(name, tensor)])`` by the names vLLM expects."""

    def __init__(self, hf_model):
        self.hf, self.loaded = hf_model, []
        self.params = dict(hf_model.named_parameters())

    def load_weights(self, pairs):
        for name, tensor in pairs:
            if name not in self.params:
                raise KeyError(f"vLLM has no parameter {name!r}")
            with torch.no_grad():
                self.params[name].copy_(tensor)
            self.loaded.append(name)


def _stand_in(policy, accelerator, engine_model):
    from trl.generation.vllm_generation import DistributedBackend, VLLMGeneration

    class StandInVLLM(VLLMGeneration):
        def __init__(self):  # only what colocate sync_weights and generate read
            self.mode, self.enable_sleep_mode, self.accelerator = "colocate", False, accelerator
            self._dist, self.model = DistributedBackend(accelerator), policy
            self.weights = _EngineWeights(engine_model)
            runner = SimpleNamespace(model=self.weights)
            self.llm = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
                driver_worker=SimpleNamespace(model_runner=runner))), reset_prefix_cache=lambda: None)
            self.max_completion_length, self.temperature, self.generation_kwargs = 16, 1.0, {}
            self.rng, self.stops_seen = torch.Generator().manual_seed(0), []

        @torch.no_grad()
        def generate(self, prompts, images, num_generations):
            stop = set(self.generation_kwargs.get("stop_token_ids") or ())
            self.stops_seen.append(tuple(sorted(stop)))
            completions, logprobs = [], []
            for prompt in prompts:
                ids, out, lps = list(prompt), [], []
                for _ in range(self.max_completion_length):
                    logits = self.weights.hf(torch.tensor([ids])).logits[0, -1].float() / self.temperature
                    logp = torch.log_softmax(logits, -1)
                    t = int(torch.multinomial(logp.exp(), 1, generator=self.rng))
                    out.append(t)
                    lps.append([float(logp[t])])
                    ids.append(t)
                    if t in stop:
                        break
                completions.append(out)
                logprobs.append(lps)
            return prompts, completions, logprobs, None

    return StandInVLLM()


def _trainer(tiny_student, records, tmp_path):
    settings = ExGRPOSettings(G=2, k=1, max_steps=1, max_probe_tokens=6, max_final_tokens=6, lora=True, lora_r=4,
                              lora_alpha=8, bf16=False, temperature=1.0)
    built = exgrpo.build_trainer(init_model=tiny_student, probe_records=records, out_dir=tmp_path, settings=settings,
                                 rules=load_rules())
    trainer = built.trainer
    with torch.no_grad():  # a LoRA update that moves the policy away from the base weights
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return trainer, settings


def _use_stand_in(trainer, tiny_student):
    from transformers import AutoModelForCausalLM

    engine = _stand_in(trainer.model, trainer.accelerator, AutoModelForCausalLM.from_pretrained(tiny_student).eval())
    trainer.use_vllm, trainer.vllm_generation, trainer.vllm_importance_sampling_correction = True, engine, True
    return engine


def test_trl_consumes_the_dialogue_rollouts_with_synced_lora_weights_and_vllm_logprobs(tiny_student, arith_probe_records,
                                                                                       tmp_path):
    trainer, settings = _trainer(tiny_student, arith_probe_records, tmp_path)
    engine = _use_stand_in(trainer, tiny_student)
    trainer._last_loaded_step = -1  # TRL syncs before the step's rollout_func call
    trainer.model.train()
    inputs = [trainer.train_dataset[0]] * settings.G
    out = trainer._generate_and_score_completions(inputs)

    # the LoRA weight sync: every base weight loaded under the engine's names, no adapter tensor
    assert engine.weights.loaded and not any("lora" in n or "base_layer" in n for n in engine.weights.loaded)
    assert set(engine.weights.loaded) == set(engine.weights.params)
    # every turn stopped on the template's end-of-turn tokens
    layout = trainer.layout
    assert engine.stops_seen and all(set(layout.stop_ids) <= set(s) for s in engine.stops_seen)
    # TRL's contract: logprobs per completion token; policy tokens carry vLLM's, context tokens none
    mask = out["completion_mask"] * out["tool_mask"]
    sampling, old = out["sampling_per_token_logps"], out["old_per_token_logps"]
    policy = mask.bool()
    assert policy.sum() > 0
    assert torch.isfinite(sampling[policy]).all()
    context = out["completion_mask"].bool() & ~out["tool_mask"].bool()
    assert context.sum() > 0 and torch.isnan(sampling[context]).all()  # environment turns: no correction
    # the engine sampled from the merged LoRA weights: its logprobs are the policy's, token by token
    assert (old[policy] - sampling[policy]).abs().max() < 1e-3
    assert torch.isfinite(out["importance_sampling_ratio"]).all()
    assert float((out["importance_sampling_ratio"] - 1).abs().max()) < 1e-2


def test_without_the_weight_sync_the_logprobs_disagree(tiny_student, arith_probe_records, tmp_path):
    """The check above can fail: an engine left on the base weights gives other logprobs."""
    trainer, settings = _trainer(tiny_student, arith_probe_records, tmp_path)
    engine = _use_stand_in(trainer, tiny_student)
    trainer._last_loaded_step = trainer.state.global_step  # TRL believes the engine is current
    trainer.model.train()
    out = trainer._generate_and_score_completions([trainer.train_dataset[0]] * settings.G)
    assert not engine.weights.loaded
    policy = (out["completion_mask"] * out["tool_mask"]).bool()
    assert (out["old_per_token_logps"][policy] - out["sampling_per_token_logps"][policy]).abs().max() > 1e-2


def test_grpo_config_of_the_vllm_path(tmp_path):
    """The vLLM path's config: per-token truncated importance sampling (a sequence-level mode would
    mask whole multi-turn dialogues) and the template's end-of-turn tokens among vLLM's stop tokens."""
    cfg = exgrpo.grpo_config(ExGRPOSettings(use_vllm=True), tmp_path, device="cpu", bf16=False, stop_ids=(2, 7))
    assert cfg.vllm_importance_sampling_correction and cfg.vllm_importance_sampling_mode == "token_truncate"
    assert cfg.vllm_importance_sampling_clip_max == 3.0 and cfg.generation_kwargs == {"stop_token_ids": [2, 7]}
    assert exgrpo.grpo_config(ExGRPOSettings(), tmp_path, device="cpu", bf16=False, stop_ids=(2, 7)).generation_kwargs is None


def test_trl_generation_paths_stop_on_the_turn_end_too(student_path):
    from transformers import AutoTokenizer, GenerationConfig

    from exgrpo_utils.models.generation import use_turn_stops

    tok = AutoTokenizer.from_pretrained(student_path)
    model = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=tok.eos_token_id))
    assert use_turn_stops(model, tok) == (tok.eos_token_id,) and model.generation_config.eos_token_id == tok.eos_token_id
    tok.add_special_tokens({"additional_special_tokens": ["<end_of_turn>"]})
    tok.eos_token = "<|endoftext|>"
    tok.chat_template = ("{% for m in messages %}<start>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
                         "{% if add_generation_prompt %}<start>assistant\n{% endif %}")
    end = tok.convert_tokens_to_ids("<end_of_turn>")
    model = SimpleNamespace(generation_config=GenerationConfig(eos_token_id=tok.eos_token_id))
    assert use_turn_stops(model, tok) == (tok.eos_token_id, end)
    assert model.generation_config.eos_token_id == sorted({tok.eos_token_id, end})


def test_the_aux_batch_comes_back_with_the_rollout(tiny_student, arith_probe_records, tmp_path):
    """Eq. 8's teacher-forced dialogues reach the trainer in the rollout's own result (``Rollout.aux``):
    one per question, its Scenario A probes with the teacher's answers as the only target tokens."""
    trainer, settings = _trainer(tiny_student, arith_probe_records, tmp_path)
    trainer.model.train()
    calls = []
    rollout = trainer.rollout

    def recording(prompts, tr):
        result = rollout(prompts, tr)
        calls.append(result)
        return result

    trainer.rollout = recording
    trainer._generate_and_score_completions([trainer.train_dataset[0]] * settings.G)
    assert len(calls) == 1 and calls[0].aux and trainer._aux_batch is calls[0].aux
    rec = next(r for r in arith_probe_records if r["id"] == trainer.train_dataset[0]["question_id"])
    responses = {p["teacher_response"] for p in rec["probes"]}
    layout = trainer.layout
    for d in trainer._aux_batch:
        target = [t for t, m in zip(d.completion_ids, d.mask) if m]
        assert layout.tok.decode(target, skip_special_tokens=True).strip() in responses


# --- evaluation through vLLM (models.generation.VLLMGenerator) -------------------------------------

class _StandInSamplingParams:
    """``vllm.SamplingParams`` with the keyword arguments the kit passes."""

    def __init__(self, *, max_tokens, temperature, top_p, seed, stop_token_ids):
        self.max_tokens, self.temperature, self.top_p = max_tokens, temperature, top_p
        self.seed, self.stop_token_ids = seed, list(stop_token_ids)


class _StandInLLM:
    """``vllm.LLM`` as the kit uses it: built from a folder that holds a plain checkpoint (vLLM reads
    its config.json; a PEFT adapter folder has none and is refused, as vLLM refuses it),
    ``get_tokenizer()``, and ``generate(prompts, params, use_tqdm=...)`` returning one request output
    per prompt whose ``outputs[0]`` has ``text`` (special tokens skipped), ``token_ids`` (the stop
    token included) and ``finish_reason`` ("stop" or "length"). Greedy only (the evaluations)."""

    built: list = []

    def __init__(self, model, dtype="auto", gpu_memory_utilization=0.9, tensor_parallel_size=1, max_model_len=None):
        from pathlib import Path

        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(model) / "config.json").exists():
            raise ValueError(f"Invalid repository ID or local directory specified: '{model}'")
        self.path = model
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(model)
        _StandInLLM.built.append(self)

    def get_tokenizer(self):
        return self.tok

    @torch.no_grad()
    def generate(self, prompts, params, use_tqdm=True):
        assert isinstance(prompts, list) and params.temperature == 0
        outs = []
        for prompt in prompts:
            ids, new, finish = self.tok(prompt, add_special_tokens=False)["input_ids"], [], "length"
            for _ in range(params.max_tokens):
                new.append(int(self.model(torch.tensor([ids + new])).logits[0, -1].argmax()))
                if new[-1] in params.stop_token_ids:
                    finish = "stop"
                    break
            text = self.tok.decode(new, skip_special_tokens=True)
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(text=text, token_ids=new, finish_reason=finish)]))
        return outs


@pytest.fixture
def stand_in_vllm(monkeypatch):
    import sys

    _StandInLLM.built.clear()
    monkeypatch.setitem(sys.modules, "vllm", SimpleNamespace(LLM=_StandInLLM, SamplingParams=_StandInSamplingParams))
    return _StandInLLM.built


def _adapter(base: str, out, seed: int) -> str:
    """A LoRA adapter on ``base`` with random (nonzero) A and B: merged, it is another model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


_BATCH = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Is the sky green? Answer yes or no."}]]


def test_vllm_evaluates_a_trained_adapter_through_a_merged_checkpoint_made_once(tiny_student, stand_in_vllm, tmp_path,
                                                                                monkeypatch):
    from pathlib import Path

    from exgrpo_utils.models import generation, registry

    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))
    adapter = _adapter(tiny_student, tmp_path / "final", seed=0)
    greedy = generation.SamplingConfig(max_new_tokens=8)
    reference = generation.TransformersGenerator.from_pretrained(adapter, dtype="float32", device="cpu").generate(_BATCH, greedy)
    base = generation.TransformersGenerator.from_pretrained(tiny_student, dtype="float32", device="cpu").generate(_BATCH, greedy)
    assert reference != base  # the adapter changes the model

    vllm = generation.make_generator(adapter, backend="vllm", dtype="float32")
    assert vllm.generate(_BATCH, greedy) == reference
    merged = Path(stand_in_vllm[-1].path)
    assert merged.parent == tmp_path / "cache" / "merged" and (merged / "exgrpo_merge.json").exists()
    assert not (merged / "adapter_config.json").exists()

    with monkeypatch.context() as m:
        m.setattr(registry, "load_model", lambda *a, **k: pytest.fail("merged again"))
        assert registry.serving_checkpoint(adapter, dtype="float32") == str(merged)  # the cached merge, not redone

    retrained = _adapter(tiny_student, tmp_path / "final", seed=1)  # same folder, other weights
    assert registry.serving_checkpoint(retrained, dtype="float32") != str(merged)
    assert sorted(p.name for p in (tmp_path / "cache" / "merged").iterdir()) == sorted(
        [merged.name, Path(registry.serving_checkpoint(retrained, dtype="float32")).name])  # no temporary folder left


def test_vllm_loads_full_checkpoints_and_registry_models_as_they_are(tiny_student, stand_in_vllm):
    from exgrpo_utils.models import generation

    gen = generation.make_generator(tiny_student, backend="vllm", dtype="float32")
    assert stand_in_vllm[-1].path == tiny_student
    greedy = generation.SamplingConfig(max_new_tokens=6)
    expected = generation.TransformersGenerator.from_pretrained(tiny_student, dtype="float32", device="cpu").generate(_BATCH, greedy)
    assert gen.generate(_BATCH, greedy) == expected


def test_vllm_is_handed_the_converted_registry_student(student_path, stand_in_vllm):
    from exgrpo_utils.models import generation

    generation.make_generator("smollm2-135m-instruct", backend="vllm", dtype="float32")
    assert stand_in_vllm[-1].path == student_path


def test_an_evaluation_of_a_trained_adapter_with_backend_vllm_matches_the_fast_engine(tiny_student, stand_in_vllm,
                                                                                      tmp_path, monkeypatch):
    from exgrpo_utils.evaluate.evaluation import run_evaluation

    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))
    adapter = _adapter(tiny_student, tmp_path / "final", seed=0)
    kw = dict(model=adapter, datasets=["arith"], limit_per_dataset=3, max_new_tokens=6, dtype="float32", progress=False)
    fast = run_evaluation(out_dir=tmp_path / "fast", backend="fast", **kw)
    vllm = run_evaluation(out_dir=tmp_path / "vllm", backend="vllm", **kw)
    assert stand_in_vllm and "merged" in stand_in_vllm[-1].path
    records = [[json.loads(x) for x in (tmp_path / b / "arith.jsonl").read_text().splitlines()] for b in ("fast", "vllm")]
    assert [r["completion"] for r in records[0]] == [r["completion"] for r in records[1]] and len(records[0]) == 3
    assert list(fast["accuracy"]) == list(vllm["accuracy"])
