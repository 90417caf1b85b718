
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
