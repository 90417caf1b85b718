"""The vocabulary projection at scored positions only (train.lm_head, ExGRPOTrainer's log-prob pass):
the same log-probabilities and gradients as TRL's CPU path, which projects every position."""
import pytest
import torch

from exgrpo_utils.train.exgrpo_trainer import scored_positions


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    add_fused_lm_head(model, outputs=("log_probs", "entropy"))  # as TRL's trainers do
    return model


def test_scored_positions_hand_computed():
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    # the micro-batch's loss mask (completion_mask * tool_mask) wins
    loss = torch.tensor([[0, 1, 1, 0], [1, 0, 0, 0]])
    assert scored_positions(attention, loss, [[1, 1, 1], [1, 1]]).int().tolist() == [[0, 1, 1, 0], [1, 0, 0, 0]]
    # the rollout's env_mask, padded with 1 past a row's length as TRL pads its tool_mask (the attention
    # mask then drops the padding; a short env_mask row never hides a position TRL's loss reads)
    assert scored_positions(attention, None, [[0, 1, 1], [1]]).int().tolist() == [[0, 1, 1, 0], [1, 1, 0, 0]]
    assert scored_positions(attention, None, [[0, 1, 1, 0], [1, 0]]).int().tolist() == [[0, 1, 1, 0], [1, 0, 0, 0]]
    # neither: every real completion position
    assert scored_positions(attention, None, None).int().tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    # never a position outside the attention mask, whatever the masks say
    assert scored_positions(attention, torch.ones(2, 4), None).int().tolist() == attention.tolist()


@pytest.mark.parametrize("loss, env", [(torch.ones(3, 4), None), (None, [[1, 1, 1]]), (None, [[1] * 5, [1]])])
def test_scored_positions_refuses_masks_that_do_not_fit_the_pass(loss, env):
    with pytest.raises(ValueError, match="completion positions"):
        scored_positions(torch.ones(2, 4), loss, env)


def test_scored_only_projects_fewer_rows_for_the_same_log_probs_and_gradients(monkeypatch):
    import trl.trainer.utils as trl_utils

    from exgrpo_utils.train.lm_head import scored_only

    model = tiny_llama()
    ids = torch.randint(1, 64, (3, 9))
    attention = torch.ones_like(ids)
    attention[2, 6:] = 0
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :5] = -100  # a prompt of 5 tokens
    labels[0, 6] = -100  # a context token inside the completion
    projected = []
    chunked = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            projected.append(hidden.shape[0])
            return chunked.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    results = []
    for scored in (False, True):
        model.zero_grad()
        with scored_only() if scored else torch.enable_grad():
            out = model(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        (out.log_probs.sum() + out.entropy.sum()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.log_probs.detach(), out.entropy.detach(), grads))
    assert projected == [3 * 8, int((labels[:, 1:] != -100).sum())] == [24, 8]  # dense: every shifted position
    (lp0, h0, g0), (lp1, h1, g1) = results
    assert torch.allclose(lp0, lp1, atol=1e-6, rtol=0) and torch.allclose(h0, h1, atol=1e-6, rtol=0)
    assert torch.allclose(g0, g1, atol=1e-6, rtol=1e-5) and g0.abs().sum() > 0
    assert (lp1[labels[:, 1:] == -100] == 0).all() and (lp1[labels[:, 1:] != -100] < 0).all()


def test_scored_only_restores_trls_switch_even_after_an_error():
    import trl.trainer.utils as trl_utils

    from exgrpo_utils.train.lm_head import SWITCH, scored_only

    before = getattr(trl_utils, SWITCH)
    with pytest.raises(RuntimeError):
        with scored_only():
            assert getattr(trl_utils, SWITCH)(torch.device("cpu")) is True
            raise RuntimeError("boom")
    assert getattr(trl_utils, SWITCH) is before and before(torch.device("cpu")) is False


def test_the_trainers_pass_scores_the_loss_positions_only_and_agrees_with_trls_there():
    """ExGRPOTrainer's log-prob pass under a micro-batch's loss mask, then under the rollout's env_mask:
    TRL's values at every scored position, 0 elsewhere (where the loss multiplies by 0 anyway)."""
    from accelerate import Accelerator
    from trl import GRPOTrainer

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    model = tiny_llama().eval()
    trainer = object.__new__(ExGRPOTrainer)
    trainer.accelerator = Accelerator(cpu=True)
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    mask = torch.cat([prompt_mask, completion_mask], 1)
    ids = torch.randint(1, 64, mask.shape) * mask
    env = [[1, 0, 0, 1], [0, 1, 1, 1, 1]]  # dialogue context turns (0) between the student's own tokens (1)
    with torch.no_grad():
        trl, trl_h, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 5, compute_entropy=True)
        trainer._rollout_env_mask = env
        by_env, _, _ = ExGRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 5)
        trainer._rollout_env_mask, trainer._loss_mask = None, torch.tensor([[1, 0, 0, 0, 0], [0, 0, 0, 1, 1]])
        by_loss, h, _ = ExGRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 5,
                                                                         compute_entropy=True)
    want_env = torch.tensor([[1, 0, 0, 1, 0], [0, 1, 1, 1, 1]]).bool()
    assert torch.allclose(by_env[want_env], trl[want_env], atol=1e-6) and (by_env[~want_env] == 0).all()
    loss = trainer._loss_mask.bool()
    assert torch.allclose(by_loss[loss], trl[loss], atol=1e-6) and (by_loss[~loss] == 0).all()
    assert torch.allclose(h[loss], trl_h[loss], atol=1e-6) and (h[~loss] == 0).all()


def test_the_sft_trainer_computes_its_loss_with_scored_positions_only(monkeypatch):
    import trl.trainer.utils as trl_utils
    from trl import SFTTrainer

    from exgrpo_utils.train.lm_head import SWITCH, ScoredSFTTrainer

    seen = []
    monkeypatch.setattr(SFTTrainer, "compute_loss",
                        lambda self, *a, **k: seen.append(getattr(trl_utils, SWITCH)(torch.device("cpu"))) or 0.0)
    assert ScoredSFTTrainer.compute_loss(object.__new__(ScoredSFTTrainer), None, {}) == 0.0
    assert seen == [True] and getattr(trl_utils, SWITCH)(torch.device("cpu")) is False


def test_the_trainers_pass_in_chunks_of_their_own_width_scores_the_same_positions():
    """Two questions of two rows each, chunked by question, each chunk cut to its own width (leading prompt
    and trailing completion columns): TRL's values at every position the env_mask scores, 0 elsewhere."""
    from accelerate import Accelerator
    from trl import GRPOTrainer

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    model = tiny_llama().eval()
    trainer = object.__new__(ExGRPOTrainer)
    trainer.accelerator = Accelerator(cpu=True)
    prompt_mask = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    completion_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    mask = torch.cat([prompt_mask, completion_mask], 1)
    ids = torch.randint(1, 64, mask.shape) * mask
    env = [[1, 0, 1], [0, 1], [1, 1, 0, 0, 1], [0, 0, 1, 1]]
    with torch.no_grad():
        trl, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 5, batch_size=2)
        trainer._rollout_env_mask = env
        ours, _, _ = ExGRPOTrainer._get_per_token_logps_and_entropies(trainer, model, ids, mask, 5, batch_size=2)
    want = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 0, 0, 0], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]]).bool()
    assert torch.allclose(ours[want], trl[want], atol=1e-6) and (ours[~want] == 0).all()


def test_the_rollouts_env_mask_is_kept_for_the_reference_pass_and_dropped_after_it():
    """run_rollout keeps the rollout's env_mask (not when TRL runs tools: it builds its own tool_mask then);
    generate-and-score drops it when it returns or fails, so the policy's passes never read it."""
    import types

    from trl import GRPOTrainer

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    trainer = object.__new__(ExGRPOTrainer)
    trainer.rollout = lambda prompts, t: {"completion_ids": [[1, 2]], "env_mask": [[1, 0]]}
    trainer.run_rollout(["p"], trainer)
    assert trainer._rollout_env_mask == [[1, 0]]
    trainer.tools = [print]
    trainer.run_rollout(["p"], trainer)
    assert trainer._rollout_env_mask is None

    trainer.tools, trainer.visits, trainer.args = None, None, types.SimpleNamespace(per_device_train_batch_size=1)
    seen = []

    def failing(self, inputs):
        seen.append(self._rollout_env_mask)
        self._rollout_env_mask = [[1]]  # as run_rollout would set it, then the step fails
        raise RuntimeError("reward failed")

    original = GRPOTrainer._generate_and_score_completions
    GRPOTrainer._generate_and_score_completions = failing
    try:
        trainer._rollout_env_mask = [[0]]  # left over from somewhere: cleared before the step
        with pytest.raises(RuntimeError):
            ExGRPOTrainer._generate_and_score_completions(trainer, [{"question_id": "q"}])
    finally:
        GRPOTrainer._generate_and_score_completions = original
    assert seen == [None] and trainer._rollout_env_mask is None


def test_compute_loss_scores_the_trimmed_micro_batchs_loss_mask_and_forgets_it(monkeypatch):
    import types

    from trl import GRPOTrainer

    from exgrpo_utils.train.exgrpo_trainer import ExGRPOTrainer

    seen = []

    def loss(self, model, inputs, **kwargs):
        seen.append((self._loss_mask.int().tolist(), inputs["completion_ids"].shape))
        return torch.tensor(0.5)

    monkeypatch.setattr(GRPOTrainer, "compute_loss", loss)
    trainer = object.__new__(ExGRPOTrainer)
    trainer.aux_lambda, trainer._aux_batch = 0.0, []
    inputs = {"prompt_ids": torch.tensor([[0, 5], [6, 7]]), "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
              "completion_ids": torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]),
              "completion_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
              "tool_mask": torch.tensor([[1, 0, 1, 1], [0, 1, 1, 1]])}
    assert float(ExGRPOTrainer.compute_loss(trainer, types.SimpleNamespace(training=True), inputs)) == 0.5
    assert seen == [([[1, 0, 1], [0, 1, 0]], (2, 3))]  # completion_mask * tool_mask, the all-padding column cut
    assert trainer._loss_mask is None
