"""The kit's generation engine: continuous batching over a slot KV cache, for CPU (and any torch device).

Plain ``model.generate`` runs a batch until its slowest row stops: rows that already finished keep
computing, short prompts are padded to the longest, and the KV cache grows by concatenation (every
step copies the whole cache). This engine instead keeps ``slots`` sequences in flight:

* a **slot cache** preallocates each layer's keys and values as ``[slots, kv_heads, capacity, head_dim]``
  and writes each new token in place, at that row's own position (no copy per step);
* a row whose job ends frees its slot at once: the next job of the queue is prefilled into it
  (**continuous batching**), and once the queue is empty the live rows are compacted to the front, so
  every decode step computes only live rows;
* a **job** may have several turns (an ExGRPO dialogue): between turns it appends context tokens (the
  closing of the turn, the next user message) to its own cache, so no turn re-encodes the dialogue.

A job is a Python generator that yields ``Turn(context, max_new_tokens)`` and is sent back the
generated token ids of that turn (stop token included when one was produced); its return value is
the job's result. ``single_turn`` is the one-turn job of an evaluation.

Outputs: the engine is exact given its schedule (same jobs, slots, seed and dtype: identical tokens on
rerun), but not bit-identical to ``model.generate``, whose batches have other shapes (floating-point
sums in another order can flip a near-tied greedy choice). It samples from the plain softmax (with
temperature and top-p): logits processors that ``generate`` takes from a model's
``generation_config`` (Qwen2.5-Instruct's ``repetition_penalty`` 1.05, for one) are not applied, so
for such models the two backends differ by design; the backend is part of an evaluation's identity. ``benchmarks/bench_generation.py`` reports
the agreement; ``backend="transformers"`` keeps plain ``generate`` one setting away.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Sequence

# torch is imported inside the functions that use it (heavy; this module is imported by the generators).

Job = Generator["Turn", list, object]


@dataclass(frozen=True)
class Turn:
    context: Sequence[int]  # tokens appended before generating (the whole prompt on the first turn)
    max_new_tokens: int


def single_turn(prompt_ids: Sequence[int], max_new_tokens: int) -> Job:
    """A one-turn job: returns the generated ids."""
    return (yield Turn(prompt_ids, max_new_tokens))


class SlotCache:
    """Per layer, keys and values ``[slots, kv_heads, capacity, head_dim]``, written in place.

    The model's attention layers call ``update(keys, values, layer_idx)``; ``rows`` and ``positions``
    (set by the engine before each forward) say where the new tokens go, and ``width`` how many
    positions the attention reads. ``rows`` is an int (the first ``rows`` slots: a view, no copy) or
    a tensor of slot indices (gathered)."""

    def __init__(self, slots: int, capacity: int):
        self.slots, self.capacity = slots, capacity
        self.keys: list = []
        self.values: list = []
        self.rows = None
        self.positions = None  # [rows, T] long
        self.width = 0

    def _layer(self, idx: int, like):
        import torch

        while len(self.keys) <= idx:
            self.keys.append(None)
            self.values.append(None)
        if self.keys[idx] is None:
            shape = (self.slots, like.shape[1], self.capacity, like.shape[3])
            self.keys[idx] = torch.zeros(shape, dtype=like.dtype, device=like.device)
            self.values[idx] = torch.zeros(shape, dtype=like.dtype, device=like.device)
        return self.keys[idx], self.values[idx]

    def ensure_capacity(self, needed: int) -> None:
        """Grow every layer to hold ``needed`` positions (rare: by half again at least)."""
        import torch

        if needed <= self.capacity:
            return
        new = max(needed, self.capacity + self.capacity // 2)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                if t is not None:
                    grown = torch.zeros((t.shape[0], t.shape[1], new, t.shape[3]), dtype=t.dtype, device=t.device)
                    grown[:, :, : self.capacity] = t
                    store[i] = grown
        self.capacity = new

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        k, v = self._layer(layer_idx, key_states)
        if isinstance(self.rows, int):
            n = self.rows
            if key_states.shape[2] == 1:  # decode: one token per row
                r = self._prefix_index(n, k.device)
                k[r, :, self.positions[:, 0]] = key_states[:, :, 0]
                v[r, :, self.positions[:, 0]] = value_states[:, :, 0]
            else:
                r = self._prefix_index(n, k.device)[:, None]
                k[r, :, self.positions] = key_states.transpose(1, 2)
                v[r, :, self.positions] = value_states.transpose(1, 2)
            return k[:n, :, : self.width], v[:n, :, : self.width]
        r = self.rows
        k[r[:, None], :, self.positions] = key_states.transpose(1, 2)
        v[r[:, None], :, self.positions] = value_states.transpose(1, 2)
        return k[r, :, : self.width], v[r, :, : self.width]

    def _prefix_index(self, n: int, device):
        import torch

        cached = getattr(self, "_arange", None)
        if cached is None or cached.shape[0] < n or cached.device != device:
            self._arange = torch.arange(max(n, self.slots), device=device)
        return self._arange[:n]

    def move_rows(self, moves: Sequence[tuple[int, int]], length: int) -> None:
        """Copy slot ``src`` to slot ``dst`` for each ``(src, dst)``, the first ``length`` positions."""
        import torch

        if not moves or not self.keys:
            return
        device = next(t.device for t in self.keys if t is not None)
        src = torch.tensor([m[0] for m in moves], device=device)
        dst = torch.tensor([m[1] for m in moves], device=device)
        for store in (self.keys, self.values):
            for t in store:
                if t is not None:
                    t[dst, :, :length] = t[src, :, :length]

    # what transformers may ask a cache object besides update()
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.width

    is_compileable = False


def _layers_of(cache) -> list:
    """(keys, values) per layer of a transformers ``DynamicCache`` (``layers`` since transformers 4.56)."""
    return [(layer.keys, layer.values) for layer in cache.layers]


@dataclass
class _Row:
    job_index: int
    job: Job
    length: int = 0  # tokens in this row's cache
    pending: list = field(default_factory=list)  # tokens to append before the next sampled token
    budget: int = 0
    generated: list = field(default_factory=list)


class _Schedule:
    """The jobs of one ``SlotEngine.run``: the queue waiting for a slot, the row in each cache slot
    (``rows[i]`` lives in slot i; None: free), and the results as jobs end. ``source`` and
    ``cancelled``: see ``SlotEngine.run``."""

    def __init__(self, jobs: Sequence[Job], on_done: Callable[[int, object], None] | None,
                 source: Callable[[int], Sequence[Job]] | None = None, cancelled: Callable[[int], bool] | None = None):
        self.jobs, self.on_done = list(jobs), on_done
        self.source, self.cancelled = source, cancelled
        self.queue = deque(range(len(jobs)))
        self.rows: list[_Row | None] = []
        self.results: list = [None] * len(jobs)

    def pending(self, slots: int) -> bool:
        """Whether a job waits or runs, once cancelled jobs are dropped and the source asked for jobs."""
        if self.cancelled is not None:
            self.queue = deque(i for i in self.queue if not self.cancelled(i))
            for s, row in enumerate(self.rows):
                if row is not None and self.cancelled(row.job_index):
                    row.job.close()
                    self.rows[s] = None  # the slot is free: refilled, or compacted away
        if self.source is not None:
            free = slots - sum(r is not None for r in self.rows) - len(self.queue)
            for job in self.source(free) if free > 0 else ():
                self.queue.append(len(self.jobs))
                self.jobs.append(job)
                self.results.append(None)
        return bool(self.queue or self.rows)

    def fill(self, slots: int) -> None:
        """Refill free slots, then open new ones, while jobs wait."""
        for s in range(len(self.rows)):
            if self.rows[s] is None and self.queue:
                self._admit(s)
        while self.queue and len(self.rows) < slots:
            self.rows.append(None)
            self._admit(len(self.rows) - 1)

    def end_turn(self, slot: int) -> None:
        """The row's turn ended: send the job its tokens; it yields its next turn or ends."""
        row = self.rows[slot]
        try:  # row.pending holds the turn's last token: it is read with the next context
            turn = row.job.send(list(row.generated))
        except StopIteration as stop:
            self._finish(row.job_index, stop.value)
            self.rows[slot] = None
            return
        self._start_turn(row, turn)

    def _admit(self, slot: int) -> None:
        i = self.queue.popleft()
        row = _Row(i, self.jobs[i])
        try:
            turn = next(row.job)
        except StopIteration as stop:  # a job with no turn
            self._finish(i, stop.value)
            self.rows[slot] = None
            return
        self._start_turn(row, turn)
        self.rows[slot] = row

    def _finish(self, i: int, value) -> None:
        self.results[i] = value
        if self.on_done is not None:
            self.on_done(i, value)

    @staticmethod
    def _start_turn(row: _Row, turn) -> None:
        if not isinstance(turn, Turn):
            raise TypeError(f"job {row.job_index} yielded {type(turn).__name__}, not Turn")
        if turn.max_new_tokens < 1:
            raise ValueError(f"job {row.job_index}: max_new_tokens must be >= 1")
        row.pending = row.pending + list(turn.context)
        if not row.pending:
            raise ValueError(f"job {row.job_index}: a turn with nothing to read (empty first context)")
        row.budget, row.generated = int(turn.max_new_tokens), []


class SlotEngine:
    """Continuous-batching generation with a slot KV cache (see the module docstring).

    ``model``: a causal LM (a PEFT-wrapped one too: its adapters take part). ``stop_ids``: tokens that
    end a turn (they are kept in the turn's output). ``slots``: sequences in flight at once."""

    def __init__(self, model, *, stop_ids: Iterable[int], pad_id: int, slots: int = 64, capacity: int = 512,
                 prefill_tokens: int = 2048):
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.model = model
        self.stop_ids = frozenset(int(s) for s in stop_ids)
        if not self.stop_ids:
            raise ValueError("the engine needs at least one stop token id")
        self.pad_id = int(pad_id)
        self.slots, self.capacity, self.prefill_tokens = int(slots), int(capacity), int(prefill_tokens)
        config = getattr(model, "config", None)
        self.max_positions = getattr(config, "max_position_embeddings", None)
        window = getattr(config, "sliding_window", None)
        self.window = window if window and getattr(config, "use_sliding_window", True) else None
        self.stats = {"forwards": 0, "prefill_tokens": 0, "decode_tokens": 0, "row_steps": 0}

    # -------------------------------------------------------------------------------------------
    def run(self, jobs: Sequence[Job], *, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
            on_done: Callable[[int, object], None] | None = None,
            source: Callable[[int], Sequence[Job]] | None = None, cancelled: Callable[[int], bool] | None = None) -> list:
        """Run every job to its end; return their results in order. ``on_done(i, result)`` fires as
        each job ends (so a caller can save it at once).

        Jobs that arrive during the run (a server's requests): ``source(free)`` is asked between steps,
        when ``free`` > 0 slots would stay empty, for at most that many jobs, numbered after those so
        far; the run ends when none waits or runs and the source has none. ``cancelled(i)`` is checked
        between steps: job ``i`` then leaves the queue or its slot (closed; result None, no
        ``on_done``). Without these two a run is what it was before they existed."""
        import torch

        book = _Schedule(jobs, on_done, source, cancelled)
        if not jobs and source is None:
            return book.results
        gen = torch.Generator(device="cpu")  # no seed: drawn from torch's global generator, as generate() samples
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        cache = SlotCache(self.slots, self.capacity)
        sampling = (float(temperature), float(top_p), gen)
        with torch.inference_mode():
            while book.pending(self.slots):
                book.fill(self.slots)
                if None in book.rows:  # the queue is empty: the last live rows fill the holes
                    book.rows = self._compact(cache, book.rows)
                rows = book.rows
                if not rows:
                    continue
                multi = [s for s, r in enumerate(rows) if len(r.pending) > 1]
                if multi:  # prompts and contexts: similar lengths together, a bounded number of tokens per pass
                    for part in self._parts(rows, multi):
                        self._extend(cache, rows, part, sampling)
                else:  # one decode step of every row
                    self._extend(cache, rows, None, sampling)
                for s in multi or range(len(rows)):
                    r = rows[s]
                    if r.generated[-1] in self.stop_ids or len(r.generated) >= r.budget:
                        book.end_turn(s)
        return book.results

    @staticmethod
    def _compact(cache: SlotCache, rows: list) -> list:
        live = [r for r in rows if r is not None]
        holes = [s for s, r in enumerate(rows[: len(live)]) if r is None]
        movers = [s for s in range(len(live), len(rows)) if rows[s] is not None]
        cache.move_rows(list(zip(movers, holes)), max((r.length for r in live), default=0))
        for src, dst in zip(movers, holes):
            rows[dst] = rows[src]
        return rows[: len(live)]

    def _parts(self, rows: list, subset: list[int]) -> list[list[int]]:
        """``subset`` split into passes: fresh rows apart from continuing ones (they take the faster
        unmasked path), sorted by length, at most ``prefill_tokens`` padded tokens per pass."""
        parts = []
        for fresh in (True, False):
            group = sorted((s for s in subset if (rows[s].length == 0) == fresh), key=lambda s: len(rows[s].pending))
            part: list[int] = []
            for s in group:
                width = len(rows[s].pending)  # the longest so far: the group is sorted
                if part and width * (len(part) + 1) > self.prefill_tokens:
                    parts.append(part)
                    part = []
                part.append(s)
            if part:
                parts.append(part)
        return parts

    # -------------------------------------------------------------------------------------------
    def _extend(self, cache: SlotCache, rows: list, subset: list[int] | None, sampling) -> None:
        """Read each row's pending tokens (every row, one token each, when ``subset`` is None: the
        decode step), then sample one token per row.

        Rows with nothing cached yet (prompts) run as a plain causal batch, right-padded so that no
        real token sees padding, and their keys and values are copied into their slots; rows that
        continue (decode, or a dialogue's next context) read and write the slot cache under a mask
        that lets each token see its own row's prefix."""
        import torch

        device, dtype = self._device(), self._dtype()
        idx = list(range(len(rows))) if subset is None else subset
        toks = [rows[s].pending for s in idx]
        lengths = [rows[s].length for s in idx]
        T = max(len(t) for t in toks)
        width = max(L + len(t) for L, t in zip(lengths, toks))
        if self.max_positions and width > self.max_positions:
            raise ValueError(f"a sequence reached {width} tokens, more than the model's {self.max_positions} positions")
        if self.window and width >= self.window:  # a sliding cache keeps window - 1 positions
            raise ValueError(f"a sequence reached {width} tokens, beyond the model's sliding window ({self.window}); "
                             "use backend='transformers' for such lengths")
        cache.ensure_capacity(max(lengths) + T)
        ids = torch.full((len(idx), T), self.pad_id, dtype=torch.long)
        for j, t in enumerate(toks):
            ids[j, : len(t)] = torch.tensor(t, dtype=torch.long)
        last = torch.tensor([len(t) - 1 for t in toks])
        keep = 1 if T == 1 else torch.unique(last)
        if subset is not None and not any(lengths):  # prompts: plain causal pass, then into the slots
            from transformers import DynamicCache

            fresh = DynamicCache(config=getattr(self.model, "config", None))
            out = self.model(input_ids=ids.to(device), past_key_values=fresh, use_cache=True, logits_to_keep=keep)
            rows_t = torch.tensor(idx, device=device)
            for layer, (k_new, v_new) in enumerate(_layers_of(fresh)):
                k, v = cache._layer(layer, k_new)
                k[rows_t, :, :T] = k_new
                v[rows_t, :, :T] = v_new
        else:
            positions = torch.tensor(lengths, dtype=torch.long)[:, None] + torch.arange(T)[None, :]
            allowed = torch.arange(width)[None, None, :] <= positions[:, :, None]  # own prefix + causal
            mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]
            cache.rows = len(rows) if subset is None else torch.tensor(idx, device=device)
            cache.positions, cache.width = positions.to(device), width
            out = self.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                             past_key_values=cache, use_cache=True, logits_to_keep=keep)
        logits = out.logits[:, -1] if T == 1 else \
            out.logits[torch.arange(len(idx)), torch.searchsorted(keep, last).to(out.logits.device)]
        chosen = self._sample(logits.float(), sampling)
        self.stats["forwards"] += 1
        self.stats["row_steps"] += len(idx) * T
        for j, s in enumerate(idx):
            r = rows[s]
            n = len(r.pending)
            self.stats["prefill_tokens" if n > 1 else "decode_tokens"] += n
            r.length += n
            r.pending = [chosen[j]]
            r.generated.append(chosen[j])

    @staticmethod
    def _sample(logits, sampling) -> list[int]:
        import torch

        temperature, top_p, gen = sampling
        if temperature <= 0:
            return logits.argmax(-1).tolist()
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p
            sorted_p = sorted_p.masked_fill(drop, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        return torch.multinomial(probs.cpu(), 1, generator=gen)[:, 0].tolist()

    def _device(self):
        return next(self.model.parameters()).device

    def _dtype(self):
        return next(self.model.parameters()).dtype
