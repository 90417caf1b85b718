"""Every method of the paper's Tables 1-4 and Figures 4-5 as a configuration of the existing stages.

A :class:`Method` is zero-shot, an SFT run on some data (the EI probes, one EI rule, a baseline's
data, a fraction of the questions) or an RL run (ExGRPO or plain GRPO, with or without the aux SFT
loss) that starts from another method or from the base student. :data:`GROUPS` says which methods
each table or figure needs; :func:`plan` orders (method, seed) pairs for notebook 05. A method's
training settings are derived from the run's (notebooks 02 and 03 use the same ones) by
:func:`sft_settings`, :func:`rl_settings` and :func:`opd_settings`; :func:`opd_status` says whether the
run's teacher can serve On-Policy Distillation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from ..train.settings import ExGRPOSettings, OPDSettings, SFTSettings
from .baselines import BASELINES, LABELS


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "zero-shot" | "sft" | "rl" | "opd"
    data: str = "ei"  # sft: "ei" (probe dataset) or a baseline name (baselines.BASELINES)
    rules: tuple[str, ...] = ()  # sft on "ei": only these rules' probes (Table 4)
    fraction: float = 1.0  # share of the training questions (Figure 4)
    init: str = ""  # rl: the method it starts from (its seed's run), or "base" (cold start)
    mode: str = "exgrpo"  # rl: "exgrpo" or "grpo"
    aux: bool = True  # rl: Eq. 8's aux SFT loss on (lambda from the settings) or off (lambda = 0)
    revealing_probes: str = ""  # rl: "exclude" or "allow" answer-revealing probes; "": the run's rl_revealing_probes
    dsu: bool = True  # rl, exgrpo mode: Eq. 5-6's bonus on (the run's delta) or off (delta = 0)


def _methods() -> dict[str, Method]:
    ms = [
        Method("zero-shot", "Zero-shot", "zero-shot"),
        Method("sft", "SFT (EI, all rules)", "sft"),
        Method("exgrpo", "ExGRPO (SFT + ExGRPO + aux SFT)", "rl", init="sft", mode="exgrpo", aux=True),
        Method("sft-grpo", "SFT + GRPO (R_base)", "rl", init="sft", mode="grpo", aux=False),
        Method("sft-grpo-aux", "SFT + GRPO (R_base) + aux SFT", "rl", init="sft", mode="grpo", aux=True),
        Method("cold-grpo", "RL cold start (R_base)", "rl", init="base", mode="grpo", aux=False),
        Method("cold-grpo-aux", "RL cold start + aux SFT", "rl", init="base", mode="grpo", aux=True),
        Method("exgrpo-revealing", "ExGRPO, answer-revealing probes allowed", "rl", init="sft", mode="exgrpo", aux=True,
               revealing_probes="allow"),
        Method("exgrpo-norevealing", "ExGRPO, answer-revealing probes left out", "rl", init="sft", mode="exgrpo",
               aux=True, revealing_probes="exclude"),
        Method("exgrpo-nobonus", "ExGRPO without the DSU bonus (δ = 0)", "rl", init="sft", mode="exgrpo", aux=True,
               dsu=False),
        Method("opd", "On-Policy Distillation", "opd"),
    ]
    ms += [Method(b.replace("_", "-"), LABELS[b], "sft", data=b) for b in BASELINES]
    for rule, name in (("counterfactual", "counterfactual"), ("causal_verification", "causal"),
                       ("explanatory_challenge", "explanatory challenge")):
        ms.append(Method(f"sft-rule-{rule}", f"SFT single rule ({name})", "sft", rules=(rule,)))
    for p in (0.1, 0.25, 0.5):
        ms.append(Method(f"sft-p{p}", f"SFT (p = {p})", "sft", fraction=p))
        ms.append(Method(f"exgrpo-p{p}", f"ExGRPO (p = {p})", "rl", init=f"sft-p{p}", mode="exgrpo", aux=True))
    return {m.key: m for m in ms}


METHODS = _methods()


GROUPS = {
    "core": ("zero-shot", "sft", "sft-grpo", "exgrpo"),
    # Figure 1's models: the core, SKD (the plain distillation EI training is judged against) and the
    # same ExGRPO run without the DSU bonus (Eq. 5-6 isolated)
    "figure1": ("zero-shot", "skd", "sft", "sft-grpo", "exgrpo-nobonus", "exgrpo"),
    # issue 26's test of ExGRPO (configs/cpu-rl.yaml): the four core methods with the bonus isolated, and
    # the two probe policies (answer-revealing probes left out / allowed) side by side
    "rl-test": ("zero-shot", "sft", "sft-grpo", "exgrpo-nobonus", "exgrpo"),
    "probe-policy": ("sft", "exgrpo", "exgrpo-revealing", "exgrpo-norevealing"),
    "baselines": ("zero-shot", "skd", "dss", "rephrase", "question-aug", "answer-aug", "revthink", "divide-conquer", "opd",
                  "exgrpo"),
    "table3": ("sft", "cold-grpo", "cold-grpo-aux", "sft-grpo", "sft-grpo-aux", "exgrpo", "exgrpo-nobonus", "exgrpo-revealing",
               "exgrpo-norevealing"),
    "table4": ("rephrase", "sft-rule-counterfactual", "sft-rule-causal_verification", "sft-rule-explanatory_challenge", "sft"),
    "fraction": ("sft-p0.1", "exgrpo-p0.1", "sft-p0.25", "exgrpo-p0.25", "sft-p0.5", "exgrpo-p0.5", "sft", "exgrpo"),
}


def expand(groups: Sequence[str] = (), keys: Sequence[str] = ()) -> list[str]:
    """Method keys of the given groups plus ``keys``, each once, dependencies first."""
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown group(s) {unknown}; known: {', '.join(GROUPS)}")
    wanted = [k for g in groups for k in GROUPS[g]] + list(keys)
    bad = [k for k in wanted if k not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; known: {', '.join(METHODS)}")
    order: list[str] = []

    def visit(k: str):
        m = METHODS[k]
        if m.kind == "rl" and m.init != "base":
            visit(m.init)
        if k not in order:
            order.append(k)

    for k in wanted:
        visit(k)
    return order


def opd_status(teacher: str, teacher_model: str = "") -> tuple[bool, str]:
    """On-Policy Distillation needs the teacher's token distribution on the student's own samples, so
    a local teacher model that shares the student's tokenizer. Returns (runnable, reason if not)."""
    if teacher == "program":
        return False, ("skipped: the program teacher has no token distribution to distil from, and no "
                       "teacher LLM sharing the student's tokenizer runs offline on 2 CPU cores")
    if teacher == "openai":
        return False, ("skipped: an API teacher (e.g. Gemini-1.5-Pro) returns text, not the full next-token "
                       "distributions on student samples that on-policy distillation needs; give a local teacher "
                       "with the student's tokenizer (teacher transformers/vllm, teacher_model=...)")
    if not teacher_model:
        return False, f"skipped: teacher {teacher!r} needs teacher_model (a local model with the student's tokenizer)"
    return True, ""


def sft_settings(m: Method, run_sft: SFTSettings, seed: int) -> SFTSettings:
    """An SFT method's settings: the run's SFT settings at ``seed``, with the method's rules (Table 4)
    and its share of the run's questions (Figure 4)."""
    return replace(run_sft, seed=seed, rules=tuple(m.rules), data_fraction=m.fraction * run_sft.data_fraction)


def rl_settings(m: Method, run_rl: ExGRPOSettings, seed: int) -> ExGRPOSettings:
    """An RL method's settings: the run's ExGRPO settings at ``seed`` in the method's mode (ExGRPO or
    plain GRPO), with Eq. 8's aux SFT loss on (the run's lambda) or off, Eq. 5-6's bonus on (the run's
    delta) or off (delta 0: the same dialogues and aux loss without it), and the method's policy on
    answer-revealing probes (the run's when it has none). A run-level delta of 0 is refused for an
    ExGRPO method with the bonus: its row would be the no-bonus run under the ExGRPO label."""
    if run_rl.questions and m.init != "base" and METHODS[m.init].fraction < 1:
        raise ValueError(f"{m.key}: rl_questions {run_rl.questions} draws a fixed number of questions, so RL after "
                         f"{m.init} would train on as many as RL after full SFT (Figure 4 varies the fraction): "
                         "run the fraction group with rl_questions 0")
    if m.mode == "exgrpo" and m.dsu and run_rl.delta <= 0:
        raise ValueError(f"{m.key}: rl_delta is {run_rl.delta}, but this method's row is ExGRPO with the DSU bonus "
                         "(Eq. 5: delta > 0); the run without it is the method exgrpo-nobonus")
    return replace(run_rl, seed=seed, mode=m.mode, aux_lambda=run_rl.aux_lambda if m.aux else 0.0,
                   delta=run_rl.delta if m.dsu else 0.0, revealing_probes=m.revealing_probes or run_rl.revealing_probes)


def same_training_as(m: Method, run_rl: ExGRPOSettings) -> str | None:
    """The method whose training ``m`` would repeat in a run with these RL settings: a probe-policy row
    (``exgrpo-revealing``, ``exgrpo-norevealing``) whose policy is the run's own is ExGRPO's row. None
    where ``m`` trains something of its own."""
    twin = METHODS["exgrpo"]
    if (m.key != twin.key and m.revealing_probes == run_rl.revealing_probes
            and (m.kind, m.init, m.mode, m.aux, m.dsu, m.fraction) == (twin.kind, twin.init, twin.mode, twin.aux, twin.dsu, twin.fraction)):
        return twin.key
    return None


def rl_question_fraction(m: Method, run_sft: SFTSettings) -> float:
    """The share of the questions an RL method trains on: its SFT warm-up's (ExGRPO after SFT at
    p = 0.1 sees the same questions); every question from a cold start."""
    return 1.0 if m.init == "base" else METHODS[m.init].fraction * run_sft.data_fraction


def opd_settings(run_sft: SFTSettings, run_rl: ExGRPOSettings, seed: int) -> OPDSettings:
    """On-Policy Distillation with the SFT run's epochs, optimiser, LoRA and length (kit default: the
    same budget as the SFT baselines: as many questions per optimiser step as SFT has rows, micro-batches
    and accumulation together) and the rollouts' answer budget for the student's samples."""
    s = run_sft
    return OPDSettings(epochs=s.epochs, batch_size=s.batch_size * s.gradient_accumulation_steps, learning_rate=s.learning_rate, lora=s.lora,
                       lora_r=s.lora_r, lora_alpha=s.lora_alpha, max_length=s.max_length, seed=seed,
                       max_new_tokens=run_rl.max_final_tokens)


def plan(groups: Sequence[str], seeds: Sequence[int], seed0_only_groups: Sequence[str] = ()) -> list[tuple[str, int]]:
    """(method key, seed) pairs to run: seed 0 of every method first (so an interrupted run still has
    whole single-seed tables), then the other seeds method by method in the order of ``groups``.
    ``seed0_only_groups`` get seed 0 only; zero-shot (greedy, untrained) and skipped kinds run once,
    zero-shot always as seed 0 (it has no seed: a part run from seed 1 on must not score it again)."""
    if not seeds:
        raise ValueError("seeds must not be empty")
    all_keys = expand(list(groups) + list(seed0_only_groups))
    out = [(key, 0 if METHODS[key].kind == "zero-shot" else seeds[0]) for key in all_keys]
    for key in expand(groups):
        if METHODS[key].kind in ("zero-shot", "opd"):
            continue
        out += [(key, seed) for seed in seeds[1:]]
    return out
