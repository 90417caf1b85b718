"""Baselines, ablations and the data-fraction study (method.md section 6) as configurations of the stages."""
