"""The vocabulary projection at the positions a loss reads only, on every device.

TRL's trainers patch the student with a fused LM head (``trl.trainer.utils.add_fused_lm_head``): called
with ``labels`` and ``fused_lm_head=True``, the model returns per-token log-probabilities instead of logits.
On devices with Triton kernels (CUDA) the head projects only the positions whose label is not -100; elsewhere
(the CPU) it projects every position and zeroes the unlabelled ones afterwards, so that a changing count of
labelled positions does not change the kernel shapes (a recompilation on some accelerators). On the CPU that
is wasted work: the prompt, a dialogue's context turns and the padding go through a 576 x 49,152 projection
(a fifth of the student's weights), its log-softmax, and, in training, its backward pass, for values the
loss multiplies by zero.

``scored_only()`` makes the fused head take its labelled-positions-only path for the calls made inside it.
Each position's log-probability is the same computation either way (the same hidden state times the same
weights, tiled over the vocabulary), and the unlabelled positions get the same zero, so the loss and its
gradient do not change; ``benchmarks/bench_rl_step.py --updates kit dense`` and ``benchmarks/bench_sft.py
--heads scored dense`` compare the two side by side (losses, gradient norms, time).
"""
from __future__ import annotations

from contextlib import contextmanager

import trl.trainer.utils as trl_utils
from trl import SFTTrainer

# The name TRL's fused head reads to choose between its two paths (TRL 1.16: the kernels' Triton check,
# imported into trl.trainer.utils). Checked here so that a TRL without it fails at import, not silently.
SWITCH = "_use_triton"
if not callable(getattr(trl_utils, SWITCH, None)):
    raise ImportError(f"trl.trainer.utils.{SWITCH} is missing: this TRL's fused LM head is not the one "
                      f"exgrpo_utils.train.lm_head was written for (TRL 1.16)")


def _labelled_only(device) -> bool:
    return True


@contextmanager
def scored_only():
    """Within this block, TRL's fused LM head projects only the positions whose label is not -100.

    The switch is process-wide while the block runs (the trainers call the model from one thread);
    it is restored on exit, errors included."""
    saved = getattr(trl_utils, SWITCH)
    setattr(trl_utils, SWITCH, _labelled_only)
    try:
        yield
    finally:
        setattr(trl_utils, SWITCH, saved)


class ScoredSFTTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss projects only the labelled positions (the answers; not the prompts or
    the padding) through the vocabulary, on the CPU too: the same loss and gradient, less work."""

    def compute_loss(self, *args, **kwargs):
        with scored_only():
            return super().compute_loss(*args, **kwargs)
