"""The kit's plumbing, no ML: atomic files and JSONL logs (files), project paths (paths), every path of a
run (layout.RunLayout), fingerprints, progress, and the documented settings fields every stage declares
its parameters with (settings, runsettings)."""
