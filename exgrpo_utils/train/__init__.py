"""Stages 2 and 3: SFT warm-up (Eq. 3), rewards (Eq. 4-6), ExGRPO on TRL (Eq. 7-8), On-Policy Distillation, one train-and-save path."""
