"""Batched generation behind one interface: the kit's engine (``fast``, the default), plain
transformers ``generate`` (``transformers``: the exact reference) and an optional vLLM backend.

A generator takes chat message lists and returns one completion per list. Greedy decoding when
``temperature == 0`` (evaluation; paper lineage), sampling otherwise (RL rollouts).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

from .engine import SlotEngine, single_turn
from .registry import load_model, serving_checkpoint

# torch, vllm are imported inside the functions that use them (heavy, or needed only on some paths).

Messages = list[dict]
_MARK = "EXGRPOTURNEND"


def turn_stop_ids(tokenizer) -> tuple[int, ...]:
    """Token ids that end an assistant turn: the tokenizer's EOS, and the first token its chat template
    writes after an assistant message when that is a special (added) token. ChatML (SmolLM2, Qwen2.5)
    closes a turn with ``<|im_end|>``, which is not every such tokenizer's EOS; Gemma with
    ``<end_of_turn>``, Llama 3 with ``<|eot_id|>``. Generation stops at any of them."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    text = tokenizer.apply_chat_template([{"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}],
                                         tokenize=False)
    after = text.split(_MARK, 1)[1] if _MARK in text else ""
    first = tokenizer(after, add_special_tokens=False)["input_ids"][:1]
    added = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if first and first[0] in added and first[0] not in ids:
        ids.append(first[0])
    if not ids:
        raise ValueError("the tokenizer has no EOS token and its chat template closes a turn with no special token: "
                         "generation would have nothing to stop at")
    return tuple(ids)


def use_turn_stops(model, tokenizer) -> tuple[int, ...]:
    """Make ``model.generation_config`` stop on :func:`turn_stop_ids` too (what TRL's own generation
    paths and the GKD trainer read); unchanged when it already stops on exactly those."""
    stops = turn_stop_ids(tokenizer)
    current = model.generation_config.eos_token_id
    current = set(current if isinstance(current, (list, tuple)) else [] if current is None else [current])
    if current != set(stops):
        model.generation_config.eos_token_id = sorted(current | set(stops))
    return stops


def cut_at_stop(row: list[int], stop_ids: Sequence[int], pad_id: int | None = None) -> list[int]:
    """``row`` up to and including its first stop token; without one, trailing padding dropped."""
    for j, t in enumerate(row):
        if t in stop_ids:
            return row[: j + 1]
    while row and pad_id is not None and row[-1] == pad_id and pad_id not in stop_ids:
        row = row[:-1]
    return row


@dataclass(frozen=True)
class SamplingConfig:
    max_new_tokens: int = 1024  # paper lineage: greedy, at most 1024 new tokens
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, EOS included when one was produced
    finished: bool  # False when the token budget cut it off


class Generator(Protocol):
    name: str

    def render(self, messages: Messages) -> str: ...

    def generate(self, batch: Sequence[Messages], sampling: SamplingConfig) -> list[Completion]: ...


class TransformersGenerator:
    """Plain ``model.generate`` on left-padded batches, on CPU or GPU."""

    def __init__(self, model, tokenizer, name: str = "transformers"):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        if tokenizer.padding_side != "left":
            raise ValueError("batched generation needs tokenizer.padding_side == 'left'")
        self.stop_ids = turn_stop_ids(tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "auto", device: str | None = None):
        model, tok = load_model(name_or_path, dtype=dtype, device=device)
        return cls(model, tok, name=name_or_path)

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate(self, batch: Sequence[Messages], sampling: SamplingConfig) -> list[Completion]:
        import torch

        if not batch:
            return []
        tok = self.tokenizer
        prompts = [self.render(m) for m in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.model.device)
        kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id,
                      eos_token_id=list(self.stop_ids))
        if sampling.temperature > 0:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
            if sampling.seed is not None:
                torch.manual_seed(sampling.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        return [self._completion(cut_at_stop(row, self.stop_ids, tok.pad_token_id))
                for row in out[:, enc["input_ids"].shape[1]:].tolist()]

    def _completion(self, row: list[int]) -> Completion:
        """Generated ids, cut after the turn's stop token when there is one, as a Completion."""
        finished = bool(row) and row[-1] in self.stop_ids
        return Completion(self.tokenizer.decode(row, skip_special_tokens=True).strip(), len(row), finished)


class FastGenerator(TransformersGenerator):
    """The kit's engine (``models.engine.SlotEngine``): continuous batching over a slot KV cache, at
    1.8-1.9x plain ``generate``'s tokens per second on the reference CPU
    (``benchmarks/bench_generation.py``).
    ``batch_size`` sequences are in flight at once; ``on_result(i, completion)`` fires as each ends."""

    streams = True  # one call may take every item; results arrive one by one through on_result

    def __init__(self, model, tokenizer, name: str = "fast", batch_size: int = 64):
        super().__init__(model, tokenizer, name=name)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype: str = "auto", device: str | None = None, batch_size: int = 64):
        model, tok = load_model(name_or_path, dtype=dtype, device=device)
        return cls(model, tok, name=name_or_path, batch_size=batch_size)

    def generate(self, batch: Sequence[Messages], sampling: SamplingConfig, on_result=None,
                 batch_size: int | None = None) -> list[Completion]:
        tok = self.tokenizer
        ids = [tok(self.render(m), add_special_tokens=False)["input_ids"] for m in batch]
        engine = SlotEngine(self.model, stop_ids=list(self.stop_ids), pad_id=tok.pad_token_id,
                            slots=batch_size or self.batch_size)

        def done(i: int, row: list[int]) -> None:
            if on_result is not None:
                on_result(i, self._completion(row))

        rows = engine.run([single_turn(x, sampling.max_new_tokens) for x in ids], temperature=sampling.temperature,
                          top_p=sampling.top_p, seed=sampling.seed, on_done=done)
        return [self._completion(row) for row in rows]


class VLLMGenerator:
    """vLLM offline engine (GPU only). Install the ``gpu`` extra; TRL 1.16 accepts vLLM 0.22-0.31.

    vLLM loads plain checkpoints: a trained LoRA adapter is merged once into its base and cached
    (``registry.serving_checkpoint``); registry models and full checkpoints are loaded as they are.
    ``tests/test_vllm_path.py`` drives this class on CPU through a stand-in for ``vllm.LLM``."""

    def __init__(self, name_or_path: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 tensor_parallel_size: int = 1, max_model_len: int | None = None):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise ImportError("backend 'vllm' needs the optional GPU extra: pip install -e '.[gpu]' "
                              "(vllm>=0.22,<=0.31, CUDA only)") from exc

        self.name = name_or_path
        self.llm = LLM(model=serving_checkpoint(name_or_path, dtype=dtype), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, max_model_len=max_model_len)
        self.tokenizer = self.llm.get_tokenizer()
        self.stop_ids = turn_stop_ids(self.tokenizer)

    def render(self, messages: Messages) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prompt_tokens(self, messages: Messages) -> int:
        return len(self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"])

    def generate(self, batch: Sequence[Messages], sampling: SamplingConfig) -> list[Completion]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                top_p=sampling.top_p, seed=sampling.seed, stop_token_ids=list(self.stop_ids))
        outs = self.llm.generate([self.render(m) for m in batch], params, use_tqdm=False)
        return [Completion(o.outputs[0].text.strip(), len(o.outputs[0].token_ids),
                           o.outputs[0].finish_reason == "stop") for o in outs]


BACKENDS = ("fast", "transformers", "vllm")


def make_generator(model: str, *, backend: str = "fast", dtype: str = "auto", device: str | None = None,
                   **backend_options) -> Generator:
    """``backend``: "fast" (the kit's engine, CPU or GPU), "transformers" (plain ``generate``: the exact
    reference path) or "vllm" (GPU only, optional)."""
    if backend == "fast":
        return FastGenerator.from_pretrained(model, dtype=dtype, device=device, **backend_options)
    if backend == "transformers":
        return TransformersGenerator.from_pretrained(model, dtype=dtype, device=device)
    if backend == "vllm":
        return VLLMGenerator(model, dtype=dtype, **backend_options)
    raise ValueError(f"unknown generation backend {backend!r}; use one of {', '.join(BACKENDS)}")
