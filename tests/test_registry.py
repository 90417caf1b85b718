import pytest


def test_an_adapter_finds_its_base_after_the_results_folder_moved(tmp_path, monkeypatch):
    import json

    from exgrpo_utils.models.registry import adapter_base

    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path / "results"))
    merged = tmp_path / "results" / "runs" / "cpu" / "train" / "sft" / "merged"
    merged.mkdir(parents=True)
    adapter = tmp_path / "results" / "runs" / "cpu" / "train" / "exgrpo" / "final"
    adapter.mkdir(parents=True)
    cfg = adapter / "adapter_config.json"
    cfg.write_text(json.dumps({"base_model_name_or_path": "/elsewhere/old-clone/results/runs/cpu/train/sft/merged"}))
    assert adapter_base(adapter) == str(merged)  # trained in another clone: found under this results root
    cfg.write_text(json.dumps({"base_model_name_or_path": str(merged)}))
    assert adapter_base(adapter) == str(merged)
    cfg.write_text(json.dumps({"base_model_name_or_path": "/nowhere/at/all"}))
    assert adapter_base(adapter) == "/nowhere/at/all"  # not found: unchanged, and loading it says so


def _fake_conversion(root, spec_name: str):
    from exgrpo_utils.models.registry import CONVERTED_CONTENT

    folder = root / "models" / spec_name
    folder.mkdir(parents=True)
    for name in CONVERTED_CONTENT:
        (folder / name).write_text(f"{name} v1")
    (folder / "tokenizer_config.json").write_text('{"local_files_only": true}')
    return folder


def test_a_registry_model_altered_in_place_is_another_model(tmp_path, monkeypatch):
    """The issue's case: one layer of the converted student zeroed in place. Its name is the same, so
    an identity by name reused every evaluation and training made from the old weights; by content,
    the training's fingerprint differs and the old output is refused, saying what differs."""
    import dataclasses

    from exgrpo_utils.infra.fingerprint import StaleOutputError, check_stamp, files_digest
    from exgrpo_utils.models import registry

    monkeypatch.setenv("EXGRPO_CACHE_DIR", str(tmp_path / "cache"))
    folder = _fake_conversion(tmp_path / "cache", "smollm2-135m-instruct")
    spec = registry.MODELS["smollm2-135m-instruct"]
    pristine = files_digest(folder, registry.CONVERTED_CONTENT)
    monkeypatch.setitem(registry.MODELS, spec.name, dataclasses.replace(spec, converted_digest=pristine))
    before = registry.model_identity(spec.name)
    assert "weights" not in before and before["registry"] == spec.name  # the pristine conversion: named by its source
    out = tmp_path / "train"
    check_stamp(out, {"models": {"model": before}}, what="sft training")
    (out / "final").mkdir()
    (out / "final" / "adapter_model.safetensors").write_text("trained")
    (folder / "tokenizer_config.json").write_text('{"local_files_only": false}')  # how it was loaded: same model
    assert registry.model_identity(spec.name) == before
    (folder / "model.safetensors").write_text("model.safetensors v1, one layer zeroed")
    after = registry.model_identity(spec.name)
    assert after["weights"] != pristine
    with pytest.raises(StaleOutputError, match="models.model.weights"):
        check_stamp(out, {"models": {"model": after}}, what="sft training")


def test_the_embedded_students_conversion_is_the_pristine_one(student_path):
    """The digest pinned in the registry is what this machine's conversion gives (the same package,
    the same conversion), so a fresh clone's fingerprints equal the committed ones."""
    from exgrpo_utils.models import registry

    assert "weights" not in registry.model_identity("smollm2-135m-instruct"), (
        f"the converted student in {student_path} is not the pristine conversion: update ModelSpec.converted_digest "
        "if the conversion changed on purpose")


def test_two_trainings_of_the_same_weights_get_the_same_digest(tmp_path, monkeypatch):
    """PEFT writes target_modules in set order (it changes with PYTHONHASHSEED), and the trainer writes
    its pickled arguments beside the adapter: neither is the model. Two trainings with the same weights,
    in two results folders, got different digests, so nothing one made was reused for the other. The
    base is identified by content, not by where it is: the same adapter files on another base are
    another model."""
    import json

    from exgrpo_utils.infra.fingerprint import WEIGHTS_MEMO, weights_digest
    from exgrpo_utils.models.registry import model_identity

    def adapter(root, modules, args, base_weights):
        monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(root))
        base = root / "runs" / "cpu" / "train" / "sft" / "merged"
        base.mkdir(parents=True)
        (base / "model.safetensors").write_bytes(base_weights)
        folder = root / "runs" / "cpu" / "train" / "exgrpo" / "final"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"the same weights")
        (folder / "adapter_config.json").write_text(json.dumps(
            {"r": 32, "target_modules": modules, "base_model_name_or_path": str(base)}))
        (folder / "training_args.bin").write_bytes(args)
        (folder / "README.md").write_text(f"base_model: {base}")
        return folder, model_identity(str(folder))

    a, first = adapter(tmp_path / "one", ["q_proj", "v_proj", "down_proj"], b"run one", b"sft weights")
    b, second = adapter(tmp_path / "two", ["down_proj", "q_proj", "v_proj"], b"run two", b"sft weights")
    assert first == second and set(first) == {"weights", "base"}
    _, other_base = adapter(tmp_path / "three", ["q_proj", "v_proj", "down_proj"], b"", b"other sft weights")
    assert other_base["weights"] == first["weights"] and other_base != first  # on another base: another model
    (b / "adapter_model.safetensors").write_bytes(b"other weights")
    assert weights_digest(b) != first["weights"]
    memo = json.loads((a / WEIGHTS_MEMO).read_text())
    (a / WEIGHTS_MEMO).write_text(json.dumps({"files": memo["files"], "digest": "made by the old format"}))
    assert weights_digest(a) == first["weights"]  # a memo of another format is not used


def test_a_trained_folder_absent_here_is_known_by_its_recorded_identity(tmp_path, monkeypatch):
    """A committed results folder keeps no weights: the identity a training records beside its model
    (``final.identity.json``) stands for the folder where the folder is absent, so the stamps made from
    it (an RL run's start, an evaluation) stay checkable on another machine. Where the folder is there,
    its content decides, whatever the record says."""
    import json
    import shutil

    from exgrpo_utils.models.registry import model_identity, record_identity, recorded_identity_path

    monkeypatch.setenv("EXGRPO_RESULTS_DIR", str(tmp_path))
    folder = tmp_path / "runs" / "cpu" / "train" / "sft" / "final"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"sft weights")
    made = record_identity(folder)
    assert recorded_identity_path(folder) == folder.parent / "final.identity.json"
    assert json.loads((folder.parent / "final.identity.json").read_text()) == made == model_identity(str(folder))
    (folder / "model.safetensors").write_bytes(b"retrained, other weights")
    assert model_identity(str(folder)) != made  # the weights here decide, not the record
    shutil.rmtree(folder)
    assert model_identity(str(folder)) == made
    assert model_identity("runs/cpu/train/sft/final") == made  # the portable name a summary stores
    (folder.parent / "final.identity.json").unlink()
    assert model_identity(str(folder)) == {"name": str(folder)}
