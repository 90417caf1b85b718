"""What RL trains on (method.md section 4): the questions with the probes their dialogues may use, the
prompt rows handed to TRL, and the sampler that gives every step whole questions in one seeded order.

Fair comparison of the two modes (kit design, the paper is silent): ExGRPO (``mode="exgrpo"``) and
plain GRPO (``mode="grpo"``) draw the same original questions at every step
(``QuestionBlockSampler``: one seeded order of questions; in grpo mode each question brings its block
of rows, k probes and the question, sampled G times each) and use the same probes (``rl_records``:
answer-revealing probes excluded unless ``revealing_probes="allow"``).
"""
from __future__ import annotations

import hashlib
import random
from typing import Sequence

from ..data import prompts
from ..data.example import Example
from ..teach.inversion import reveals_answer
from ..teach.rules import RuleSet
from .loop import NoTrainingData
from .settings import ExGRPOSettings

# torch is imported inside QuestionBlockSampler.__iter__, its only use here (this module still loads
# torch through .loop, whose NoTrainingData it raises).


def probe_reveals(rec: dict, probe: dict) -> bool:
    """A probe's ``reveals_answer`` flag (computed for probe datasets written before it existed)."""
    if "reveals_answer" in probe:
        return bool(probe["reveals_answer"])
    return reveals_answer(Example.from_dict(rec["item"]), probe["probe"])


def rl_records(records: Sequence[dict], settings: ExGRPOSettings, log=print) -> list[dict]:
    """The questions RL trains on, each with the probes its dialogues (or grpo's probe rows) may use:
    with ``revealing_probes="exclude"`` the probes that state the original answer are removed, and a
    question left with none is not trained on (the count is printed). With ``questions`` > 0 only that
    many are kept: the first in ``drawn_order`` that keep a probe, returned in the records' order."""
    if settings.revealing_probes not in ("exclude", "allow"):
        raise ValueError(f"revealing_probes must be 'exclude' or 'allow', got {settings.revealing_probes!r}")
    if settings.questions < 0 or settings.questions % settings.questions_per_step:
        raise ValueError(f"questions must be 0 (every question) or a multiple of questions_per_step "
                         f"({settings.questions_per_step}), so that every pass visits each drawn question; got "
                         f"{settings.questions}")
    position = {rec["id"]: i for i, rec in enumerate(records)}  # the draw is returned in the records' order
    out, dropped, removed, seen = [], 0, 0, 0
    for rec in drawn_order(records, settings.seed) if settings.questions else records:
        if settings.questions and len(out) == settings.questions:
            break
        seen += 1
        probes = [dict(p, reveals_answer=probe_reveals(rec, p)) for p in rec["probes"]]
        if settings.revealing_probes == "exclude":
            removed += sum(p["reveals_answer"] for p in probes)
            probes = [p for p in probes if not p["reveals_answer"]]
        if not probes:
            dropped += 1
            continue
        out.append(dict(rec, probes=probes))
    if removed or dropped:
        log(f"RL data: {removed} answer-revealing probes left out (revealing_probes=exclude); "
            f"{dropped} of {seen} questions have no probe left and are not trained on")
    if not out:
        raise NoTrainingData("no training rows: no question has a probe the dialogues may use")
    if settings.questions:
        log(f"RL data: {len(out)} of {len(records)} questions drawn (rl_questions {settings.questions}, seed "
            f"{settings.seed})" + ("" if len(out) == settings.questions else
                                   f"; only {len(out)} keep a probe, so visits per question are uneven"))
    return sorted(out, key=lambda rec: position[rec["id"]])


def drawn_order(records: Sequence[dict], seed: int) -> list[dict]:
    """The records in the seeded order ``rl_questions`` draws from: a question's place depends on its id
    and the seed only, so every RL method and both probe policies at one seed draw the same questions
    (a policy that leaves a drawn question without a probe takes the next one in this order)."""
    return sorted(records, key=lambda rec: hashlib.sha256(f"rl-questions:{seed}:{rec['id']}".encode()).hexdigest())


def rows_per_question(settings: ExGRPOSettings) -> int:
    """Rows of one question's block: exgrpo 1 (the question; its dialogues are built in the rollout),
    grpo k probes plus the question (``include_original_questions``)."""
    return 1 if settings.mode == "exgrpo" else settings.k + int(settings.include_original_questions)


def training_rows(records: Sequence[dict], rules: RuleSet, settings: ExGRPOSettings) -> list[dict]:
    """Prompt rows for TRL, in blocks of ``rows_per_question`` consecutive rows per question.

    exgrpo: the question. grpo: k of its probes (a seeded draw without replacement, cycled when it
    has fewer), each with its teacher answer as the aux SFT target, then the question (no aux target:
    the aux loss trains on probe answers only, as Eq. 8 does)."""
    rows = []
    for rec in records:
        item = Example.from_dict(rec["item"])
        question = {"prompt": prompts.messages_for(item), "question_id": rec["id"], "gold": item.answer,
                    "answer_type": "", "target": ""}
        if settings.mode == "exgrpo":
            rows.append(question)
            continue
        if not rec["probes"]:
            raise ValueError(f"question {rec['id']}: no probes for grpo's probe rows")
        order = random.Random(f"grpo-probes:{settings.seed}:{rec['id']}").sample(range(len(rec["probes"])), len(rec["probes"]))
        for j in range(settings.k):
            p = rec["probes"][order[j % len(order)]]
            rows.append({"prompt": [{"role": "user", "content": rules.answer_prompt(p["probe"])}], "question_id": rec["id"],
                         "gold": p["teacher_answer"], "answer_type": p["answer_type"], "target": p["teacher_response"]})
        if settings.include_original_questions:
            rows.append(question)
    if not rows:
        raise NoTrainingData("no training rows: the probe dataset has no kept questions")
    return rows


def question_blocks(question_ids: Sequence[str]) -> list[list[int]]:
    """Row indices grouped by question (consecutive rows of one question form its block)."""
    blocks: list[list[int]] = []
    for i, q in enumerate(question_ids):
        if blocks and question_ids[blocks[-1][0]] == q:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    return blocks


class QuestionBlockSampler:
    """Row indices for TRL: questions in one seeded order, ``questions`` per generation batch, each
    question's block of rows in order and every row ``G`` times in a row (a GRPO group), the batch
    repeated ``repeat`` times (TRL's reuse of a generation). The order depends on the seed, the pass
    over the data (``set_epoch``) and the number of questions only, so exgrpo and grpo runs with the
    same seed and data see the same questions at every step, and a run resumed in a later pass gets
    that pass's order (the trainer calls ``set_epoch`` for the pass it resumes in). An incomplete last
    batch is left out."""

    def __init__(self, blocks: Sequence[Sequence[int]], *, G: int, questions: int, repeat: int = 1, seed: int = 0):
        sizes = {len(b) for b in blocks}
        if len(sizes) > 1:
            raise ValueError(f"question blocks of different sizes {sorted(sizes)}: every question needs the same rows")
        if questions < 1 or len(blocks) < questions:
            raise ValueError(f"{len(blocks)} questions cannot fill batches of {questions} questions")
        self.blocks, self.G, self.questions, self.repeat = [list(b) for b in blocks], G, questions, repeat
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + 1_000_003 * self.epoch)  # pass 0: the run's seed itself
        order = torch.randperm(len(self.blocks), generator=generator).tolist()
        self.epoch += 1  # the next pass, unless the trainer sets it
        for start in range(0, len(order) - self.questions + 1, self.questions):
            batch = [row for q in order[start:start + self.questions] for row in self.blocks[q] for _ in range(self.G)]
            for _ in range(self.repeat):
                yield from batch

    def __len__(self) -> int:
        return (len(self.blocks) // self.questions) * self.questions * len(self.blocks[0]) * self.G * self.repeat

