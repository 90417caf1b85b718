"""Shared plumbing: atomic files and JSONL logs, project paths, the run layout, fingerprints, settings fields."""
