"""The scoring engine: every attack reads the model through :class:`Target`.

``score(texts)`` returns, for each text, the natural-log probability of each of its tokens
given the tokens before it, from one teacher-forced pass (logits at position i predict token
i + 1).  Padding and the leading BOS carry no score.  Texts are batched by length under a
token budget; texts longer than the context are scored with a sliding window (stride half
the context), each token exactly once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from leakaudit.models import fused, vocab
from leakaudit.models.compiling import Compiled
from leakaudit.models.generate import cache_argument, model_context, returned_cache
from leakaudit.models.tokenize import Continuations, TailCache, encode, encode_continuations, scored_start


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


DTYPES = ("auto", "float32", "bfloat16")


def resolve_dtype(device: str, choice: str = "auto") -> torch.dtype:
    """The weights' dtype for scoring and sampling (log-softmax stays float32 in the engine).

    ``auto``: bfloat16 on a GPU, float32 on a CPU.  ``bfloat16`` on a CPU is about twice as fast
    where the CPU computes bf16 natively (AVX-512 BF16, AMX) at the cost of about 0.03 nats per
    token (docs/benchmarks.md).
    """
    if choice not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {choice!r}")
    if choice == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, choice)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TokenStats:
    """Per-token log-probs of a text, with the mean and variance of log p under p at each position."""

    lp: np.ndarray
    mu: np.ndarray
    var: np.ndarray


@dataclass(frozen=True)
class _Row:
    """One model input: a window of a text's token ids; tokens from ``first`` on are scored."""

    text: int
    ids: list[int]
    first: int


def _windows(i: int, ids: list[int], n_special: int, context: int) -> list[_Row]:
    """Split a text into rows of at most ``context`` tokens, each token scored exactly once.

    After the first window, each window ends ``stride`` tokens further on and scores only
    its new tokens, which therefore see at least ``context - stride`` tokens of context.
    """
    first = max(n_special, 1)  # token 0 has no prefix inside its window
    if len(ids) <= first:  # nothing to score (an empty text, or one token without a BOS before it): no row
        return []
    rows = [_Row(i, ids[:context], first)]
    stride, end = max(1, context // 2), min(context, len(ids))
    while end < len(ids):
        new_end = min(end + stride, len(ids))
        start = new_end - context
        rows.append(_Row(i, ids[start:new_end], end - start))
        end = new_end
    return rows


def span_nll(enc: list, lps: list[np.ndarray], spans: list[tuple[int, int]]) -> np.ndarray:
    """Minus the summed log-prob of the tokens covering any character of each text's span.

    ``lps[j]`` scores text j's tokens from ``max(n_special, 1)`` on (as :meth:`Target.score_ids`
    returns them).  A token of whitespace alone gets a zero-width offset ``(a, a)`` after the
    whitespace it stands for (the tokenizer trims it): it is read as covering ``(a - 1, a)``, so a
    span's leading or trailing space token is counted like any other.
    """
    out = np.empty(len(spans), dtype=np.float64)
    for j, (e, lp, (start, end)) in enumerate(zip(enc, lps, spans)):
        first = max(e.n_special, 1)  # lp[t - first] scores token t
        sel = [t - first for t, (a, b) in enumerate(e.offsets)
               if t >= first and (a - (a == b)) < end and b > start]
        out[j] = -float(np.sum(lp[sel], dtype=np.float64))
    return out


class Target:
    """A model and tokenizer behind the small interface attacks use.

    Args:
        model: a Hugging Face causal LM (already on its device).
        tokenizer: its tokenizer; must have a pad token or an EOS to pad with.
        token_budget: most tokens (padded) per forward pass; None picks one for the device:
            32,768 on a GPU; on a CPU 4,096, or fewer for a large vocabulary so that a pass's
            float32 logits stay near 256 MB (1,335 for GPT-2's 50,257: larger batches only
            thrash the cache there, 18% slower at 4,096 on a 2-core CPU).
        fuse: swap composite activations for fused kernels computing the same function
            (:func:`leakaudit.models.fused.fuse_activations`; the model is changed in place).
        compile_model: run the scoring passes (not the cached secret-scoring passes) through
            ``torch.compile`` of the whole model, with dynamic shapes (experimental, off by
            default: compiling takes a while once per process; if it fails, one warning and the
            plain model from then on).

    The reductions over the vocabulary (log-probs, Min-K%++'s mean and variance, log-sum-exp)
    are compiled into streaming kernels on CUDA devices (:mod:`leakaudit.models.vocab`;
    ``LEAKAUDIT_COMPILE`` overrides).
    """

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, token_budget: int | None = None,
        fuse: bool = True, compile_model: bool = False,
    ):
        if fuse:
            fused.fuse_activations(model)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        n_vocab = int(getattr(model.config, "vocab_size", 0) or 32000)
        cpu_budget = min(4096, max(512, (1 << 26) // n_vocab))
        self.token_budget = token_budget or (32768 if self.device.type == "cuda" else cpu_budget)
        self.context = model_context(model)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self._cache_arg = cache_argument(model)
        self._compiled = vocab.compile_wanted(self.device)  # fused vocabulary reductions
        self._compiled_model = Compiled(model, "the scoring model", dynamic=True) if compile_model else None
        # candidates' tails tokenized for earlier prefixes (the same null secrets after each canary's prefix);
        # None: tokenize every time.  (Enumerations of a whole space go through tokenize_candidates, uncached.)
        self.tail_cache: TailCache | None = TailCache()

    @property
    def _compile_model(self) -> bool:
        """Scoring passes go through the compiled model (asked for, and compiling has not failed)."""
        return self._compiled_model is not None and self._compiled_model.failed is None

    # -- core -------------------------------------------------------------------------
    def _forward(self, *, compiled: bool = False, **inputs):
        """One forward pass, the output projection padded where the vocabulary is misaligned on a GPU.

        ``compiled``: through the compiled model when the target was asked for it.
        """
        with fused.padded_head(self.model):
            out = self._compiled_model(**inputs) if compiled and self._compiled_model is not None else None
            return out if out is not None else self.model(**inputs)

    @torch.no_grad()
    def _score_rows(self, rows: list[_Row], *, stats: bool = False) -> list[np.ndarray]:
        """Per-token values of tokens ``first..end`` of each row (the one-token shift applied).

        Each result is ``lp`` of shape [n], or with ``stats`` an array [3, n] of ``lp`` and the
        mean and variance of log p over the vocabulary under p itself (Min-K%++ needs them).
        Uncompiled, only each row's scored positions are normalised (never padding), in chunks, so
        the float32 copy of the logits never exceeds ``chunk`` rows of the vocabulary; compiled
        (:mod:`leakaudit.models.vocab`), the whole batch goes through one streaming call, which
        keeps no float32 copy at all.
        """
        out: list[np.ndarray | None] = [None] * len(rows)
        in_flight: list[tuple] = []  # batches whose values are on their way to the host
        for batch, width in self._length_batches(rows):
            ids, mask = self._batch_tensors(rows, batch, width)
            pos = torch.arange(width, device=self.device).unsqueeze(0).expand(len(batch), -1)
            logits = self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                                   compiled=True).logits
            if self._compiled and vocab.compiled_available():
                # one compiled call for the whole batch (per-row calls would each pay the call overhead);
                # the few padded positions of a length-sorted batch are reduced too and dropped on unpacking
                B = len(batch)
                values = vocab.token_logprobs(logits.reshape(B * width, -1), _next_tokens(ids), stats, compiled=True)
                values, spans = values.reshape(-1, B, width), None
            else:
                parts, spans = [], []
                for b, r in enumerate(batch):
                    L, f = len(rows[r].ids), rows[r].first
                    # position j - 1 predicts token j: a view of the row's scored positions, never padding
                    parts.append(vocab.token_logprobs(logits[b, f - 1 : L - 1], ids[b, f:L], stats, compiled=False))
                    spans.append(L - f)
                values = torch.cat(parts, dim=1)
            del logits
            in_flight.append((batch, *_to_host(values), spans))  # one transfer per batch, waited for later
            while len(in_flight) > _OVERLAP:  # the previous batch is read back while this one runs
                self._unpack(rows, out, *in_flight.pop(0), stats=stats)
        for pending in in_flight:
            self._unpack(rows, out, *pending, stats=stats)
        return out  # type: ignore[return-value]

    def _length_batches(self, rows: list[_Row]):
        """(row indices, width) per forward pass: longest first, at most ``token_budget`` padded tokens."""
        order = sorted(range(len(rows)), key=lambda k: -len(rows[k].ids))
        k = 0
        while k < len(order):
            width = len(rows[order[k]].ids)
            batch = order[k : k + max(1, self.token_budget // max(width, 1))]
            k += len(batch)
            yield batch, width

    def _batch_tensors(self, rows: list[_Row], batch: list[int], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids and mask on the device; on a GPU copied without waiting for queued work."""
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for b, r in enumerate(batch):
            L = len(rows[r].ids)
            ids[b, :L] = torch.tensor(rows[r].ids)
            mask[b, :L] = 1
        if self.device.type == "cuda":  # from pinned memory: the copy joins the queue instead of draining it
            return tuple(t.pin_memory().to(self.device, non_blocking=True) for t in (ids, mask))
        return ids.to(self.device), mask.to(self.device)

    @staticmethod
    def _unpack(rows: list[_Row], out: list, batch: list[int], host: torch.Tensor, ready, spans, *,
                stats: bool) -> None:
        """Each row's scored positions from a batch's values (waiting for their transfer first)."""
        if ready is not None:
            ready.synchronize()
        values = host.numpy().astype(np.float32)
        if spans is None:  # compiled: [k, B, width], every position of the padded batch
            for b, r in enumerate(batch):
                piece = values[:, b, rows[r].first - 1 : len(rows[r].ids) - 1]  # position j - 1 predicts token j
                out[r] = piece if stats else piece[0]
            return
        for r, piece in zip(batch, np.split(values, np.cumsum(spans)[:-1], axis=1)):  # [k, sum of spans]
            out[r] = piece if stats else piece[0]

    def _score_rows_distributed(self, rows: list[_Row], stats: bool) -> list[np.ndarray]:
        """Data parallel across processes when torch.distributed is initialised (torchrun/accelerate).

        Rank r scores rows r, r + W, r + 2W, ... (after sorting by length, so every rank gets a
        similar mix); results are gathered on every rank and put back in order.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self._score_rows(rows, stats=stats)
        world, rank = dist.get_world_size(), dist.get_rank()
        order = sorted(range(len(rows)), key=lambda k: -len(rows[k].ids))
        mine = order[rank::world]
        local = self._score_rows([rows[k] for k in mine], stats=stats)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, list(zip(mine, local)))
        out: list[np.ndarray | None] = [None] * len(rows)
        for part in gathered:
            for k, arr in part:
                out[k] = arr
        return out  # type: ignore[return-value]

    def score_ids(
        self, ids_list: list[list[int]], n_special: list[int] | None = None, *, stats: bool = False
    ) -> list[np.ndarray]:
        """Per-token log-probs (or, with ``stats``, [3, n] arrays of lp, mu, var) of tokenized texts."""
        n_special = n_special or [1] * len(ids_list)
        rows: list[_Row] = []
        for i, (ids, ns) in enumerate(zip(ids_list, n_special)):
            rows.extend(_windows(i, ids, ns, self.context))
        parts = self._score_rows_distributed(rows, stats)
        out: list[list[np.ndarray]] = [[] for _ in ids_list]
        for r, p in zip(rows, parts):
            out[r.text].append(p)
        empty = np.zeros((3, 0) if stats else 0, np.float32)
        return [np.concatenate(p, axis=-1) if p else empty for p in out]

    # -- the interface attacks use ------------------------------------------------------
    def score(self, texts: list[str]) -> list[np.ndarray]:
        """Masked per-token log-probs (natural log) of each text's tokens."""
        enc = encode(self.tokenizer, list(texts))
        return self.score_ids([e.ids for e in enc], [e.n_special for e in enc])

    def score_stats(self, texts: list[str]) -> list[TokenStats]:
        """Per-token log-probs with the vocabulary mean and variance of log p (same single pass)."""
        enc = encode(self.tokenizer, list(texts))
        arrs = self.score_ids([e.ids for e in enc], [e.n_special for e in enc], stats=True)
        return [TokenStats(lp=a[0], mu=a[1], var=a[2]) for a in arrs]

    def secret_nll(self, prefix: str, candidates: list[str], *, split: Continuations | None = None) -> np.ndarray:
        """Summed NLL (nats) of each candidate secret following ``prefix``.

        Prefix and candidate are tokenized together, as training saw them; the tokens whose
        character spans cover any character of the candidate, or of the whitespace that ends the
        prefix, are summed (:func:`~leakaudit.models.tokenize.scored_start`: with byte-level BPE
        that space merges into some candidates' first token and not others').  The tokens all
        candidates share are run once and their key/value cache reused for every candidate.
        ``split``: the candidates already tokenized by :meth:`tokenize_candidates` (for example
        in another thread while the model scores the previous batch).
        """
        if split is not None or len(candidates) >= 256:  # many: tokenize only what follows the last words
            fast = self._continuation_nll(prefix, candidates, split)
            if fast is not None:
                values, unsplit = fast
                if len(unsplit):  # candidates whose tokens cross the prefix's split: scored the general way
                    values[unsplit] = self._joint_secret_nll(prefix, [candidates[i] for i in unsplit])
                return values
        return self._joint_secret_nll(prefix, candidates)

    def _joint_secret_nll(self, prefix: str, candidates: list[str]) -> np.ndarray:
        """:meth:`secret_nll` by tokenizing each ``prefix + candidate`` whole, with offsets."""
        enc = encode(self.tokenizer, [prefix + c for c in candidates])
        ids, n_special = [e.ids for e in enc], [e.n_special for e in enc]
        lps = self._shared_prefix_scores(ids, n_special)
        if lps is None:
            lps = self.score_ids(ids, n_special)
        return span_nll(enc, lps, [(scored_start(prefix), len(prefix) + len(c)) for c in candidates])

    def secrets_nll(self, prefixes: list[str], secrets: list[str]) -> np.ndarray:
        """Summed NLL of ``secrets[i]`` after ``prefixes[i]`` for many canaries at once (batched)."""
        enc = encode(self.tokenizer, [p + c for p, c in zip(prefixes, secrets)])
        lps = self.score_ids([e.ids for e in enc], [e.n_special for e in enc])
        return span_nll(enc, lps, [(scored_start(p), len(p) + len(c)) for p, c in zip(prefixes, secrets)])

    def _run_head(self, head_ids: list[int]):
        """One pass over shared tokens: their logits (float32 log-probs) and the key/value cache."""
        head = torch.tensor([head_ids], device=self.device)
        pos = torch.arange(len(head_ids), device=self.device).unsqueeze(0)
        first = self._forward(input_ids=head, position_ids=pos, use_cache=True)
        cache = returned_cache(first)
        if cache is None or not hasattr(cache, "batch_repeat_interleave"):
            return None, None
        return torch.log_softmax(first.logits[0].float(), dim=-1), cache

    def tokenize_candidates(self, prefix: str, candidates: list[str]) -> Continuations | None:
        """The tokenizing half of :meth:`secret_nll` for many candidates (None: it takes the general path)."""
        return encode_continuations(self.tokenizer, prefix, candidates) if len(candidates) >= 256 else None

    @torch.no_grad()
    def _continuation_nll(self, prefix: str, candidates: list[str],
                          split: Continuations | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`secret_nll` for many candidates, vectorised (None: use the general path).

        Returns the values and the indices of the candidates it could not score (their values
        are then left to the caller): those whose tail does not begin with the tokens of the
        prefix's rest alone, i.e. whose tokens cross from the rest into the candidate (BPE merged
        across the boundary for them), so which of their tokens cover the candidate is not known
        without offsets.  A tail that does begin with them has its later tokens starting exactly
        at the scored span (equal ids spell equal text).

        The prefix's head is tokenized and run once.  The tails (the prefix's last words and a
        candidate) form a token tree: a tail token's log-prob depends only on the tokens before
        it, so one model row per distinct *parent path* (a tail without its last token) gives
        the log-probs of every token of every candidate that shares it.  Candidates drawn from
        a format share most of their paths (10^6 six-digit secrets have a few thousand), so the
        model runs a few thousand short rows instead of a million, and each candidate's tokens
        are gathered from its row's logits.  The tokens covering the candidate are summed
        without a per-candidate Python loop.
        """
        split = split or encode_continuations(self.tokenizer, prefix, candidates, cache=self.tail_cache)
        if split is None or len(split.head.ids) + int(split.tail_lens.max()) > self.context:
            return None
        head_lp, cache = self._run_head(split.head.ids)
        if cache is None:
            return None
        H, N = len(split.head.ids), len(candidates)
        tok, lens = split.token_matrix(), split.tail_lens  # [N, T], zero-padded
        T = tok.shape[1]
        valid = np.arange(T)[None, :] < lens[:, None]
        rest = np.asarray(split.rest_ids, dtype=np.int64)
        m = len(rest)
        if m > T:
            return np.zeros(N), np.arange(N)
        split_ok = (lens > m) & (tok[:, :m] == rest[None, :]).all(1)  # each tail: the rest's tokens, then its own
        covers = valid & (np.arange(T)[None, :] >= m)  # tokens that cover part of the scored span

        lp = np.zeros((N, T), dtype=np.float32)
        lp[:, 0] = head_lp[-1][torch.from_numpy(tok[:, 0]).to(self.device)].cpu().numpy()  # predicted by the head
        if T > 1:
            self._fill_from_parent_paths(cache, H, tok, lens, lp, n_vocab=int(head_lp.shape[-1]))
        return -np.where(covers, lp.astype(np.float64), 0.0).sum(1), np.flatnonzero(~split_ok)

    def _fill_from_parent_paths(self, cache, H: int, tok: np.ndarray, lens: np.ndarray, lp: np.ndarray, *,
                                n_vocab: int) -> None:
        """Write ``lp[i, j]`` (j >= 1) for every tail: one model row per distinct parent path.

        A row is the tail's tokens but its last (``-1`` pads it in the key); its logits at
        position j - 1 predict token j of every tail that shares the row.  Rows are sorted by
        length, so each pass is one length and its candidates one contiguous range.
        """
        N, T = tok.shape
        parent = np.where(np.arange(T - 1)[None, :] < (lens - 1)[:, None], tok[:, : T - 1], -1)
        paths, row_of = _unique_rows(parent)
        plen = (paths >= 0).sum(1)
        by_len = np.argsort(plen, kind="stable")  # rows renumbered by length
        rank = np.empty_like(by_len)
        rank[by_len] = np.arange(len(by_len))
        paths, plen, row_of = paths[by_len], plen[by_len], rank[row_of]
        order = np.argsort(row_of, kind="stable")  # candidates grouped by row
        bounds = np.searchsorted(row_of[order], np.arange(len(paths) + 1))
        logit_cap = (1 << 30 if self.device.type == "cuda" else 1 << 28) // n_vocab  # float32 logits per pass
        r = int(np.searchsorted(plen, 1))  # rows of length 0 (single-token tails) need no pass
        while r < len(paths):
            width = int(plen[r])
            end = int(np.searchsorted(plen, width, side="right"))
            n = max(1, min(logit_cap // width, 16384, 4 * self.token_budget // max(width + H // 4, 1)))
            end = min(end, r + n)
            logits = self._after_head(cache, H, torch.from_numpy(paths[r:end, :width]).to(self.device))
            lse = vocab.logsumexp(logits, compiled=self._compiled)  # [rows, width]
            cand = order[bounds[r] : bounds[end]]  # their tails have exactly width + 1 tokens
            row = torch.from_numpy(row_of[cand] - r).to(self.device)[:, None]
            at = torch.arange(width, device=self.device)[None, :]  # position j - 1 predicts token j
            nxt = torch.from_numpy(tok[cand, 1 : width + 1]).to(self.device)
            lp[cand, 1 : width + 1] = (logits[row, at, nxt].float() - lse[row, at]).cpu().numpy()
            del logits
            r = end

    def _after_head(self, cache, start: int, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [n, W, V] of rows ``ids`` [n, W] that continue a head of ``start`` tokens run once.

        ``cache`` (from :meth:`_run_head`) is copied and repeated for the n rows; ``mask``
        [n, start + W] marks right padding (default: none).
        """
        n, W = ids.shape
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(n)
        if mask is None:
            mask = torch.ones((n, start + W), dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + W, device=self.device).unsqueeze(0).expand(n, -1)
        return self._forward(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                             **{self._cache_arg: past}).logits

    def _tail_logprobs(self, cache, last: torch.Tensor, start: int, ids: torch.Tensor,
                       mask: torch.Tensor | None = None) -> torch.Tensor:
        """Log-probs [n, W] of tail tokens ``ids`` [n, W] that follow a head run once.

        ``cache`` and ``last`` (the head's last-position log-probs) come from :meth:`_run_head`;
        the head has ``start`` tokens.  Tail token 0 is predicted by the head's last position,
        token j by tail position j - 1.  ``mask`` [n, start + W] marks right padding (default: none).
        """
        logits = self._after_head(cache, start, ids, mask)  # [n, W, V]; position j - 1 predicts token j
        n, W = ids.shape
        step = vocab.token_logprobs(logits.reshape(n * W, -1), _next_tokens(ids), False, compiled=self._compiled)
        return torch.cat([last[ids[:, :1]], step.reshape(n, W)[:, :-1]], dim=1)

    @torch.no_grad()
    def _shared_prefix_scores(self, ids_list: list[list[int]], n_special: list[int] | None = None
                              ) -> list[np.ndarray] | None:
        """Log-probs of each sequence's tokens from ``max(n_special, 1)`` on (as :meth:`score_ids` returns
        them), running their common token prefix once.

        Returns None when there is nothing to share or the sequences do not fit the context;
        the caller then scores the sequences independently.
        """
        if len(ids_list) < 2 or max(len(x) for x in ids_list) > self.context:
            return None
        shared = min(len(x) for x in ids_list) - 1  # every sequence keeps >= 1 token of its own
        for k in range(shared):
            if any(x[k] != ids_list[0][k] for x in ids_list):
                shared = k
                break
        if shared < 2:
            return None
        head = torch.tensor([ids_list[0][:shared]], device=self.device)
        head_lp, cache = self._run_head(ids_list[0][:shared])  # head_lp predicts tokens 1..shared
        if cache is None:
            return None
        head_tok = head_lp[:-1].gather(-1, head[0, 1:, None]).squeeze(-1).cpu().numpy()
        last = head_lp[-1]
        tails = [x[shared:] for x in ids_list]
        out: list[np.ndarray | None] = [None] * len(ids_list)
        order = sorted(range(len(tails)), key=lambda k: -len(tails[k]))
        k = 0
        while k < len(order):
            width = len(tails[order[k]])
            n = max(1, min(4096, self.token_budget // max(width + shared // 4, 1)))
            batch = order[k : k + n]
            k += len(batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.ones((len(batch), shared + width), dtype=torch.long)
            for b, r in enumerate(batch):
                ids[b, : len(tails[r])] = torch.tensor(tails[r])
                mask[b, shared + len(tails[r]) :] = 0
            lp = self._tail_logprobs(cache, last, shared, ids.to(self.device), mask.to(self.device)).cpu().numpy()
            for b, r in enumerate(batch):
                out[r] = np.concatenate([head_tok, lp[b, : len(tails[r])]]).astype(np.float32)
        firsts = [max(n, 1) for n in (n_special or [1] * len(ids_list))]
        return [x[f - 1 :] for x, f in zip(out, firsts)]  # those computed score tokens 1..


_OVERLAP = 1  # batches whose values may still be on their way while the next one runs (0: read back at once)


def _to_host(values: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying ``values`` to the host; on a GPU, into pinned memory, with an event that marks the end."""
    if values.device.type != "cuda":
        return values.cpu(), None
    host = values.to("cpu", non_blocking=True)  # queued on the values' device's current stream
    ready = torch.cuda.Event()
    ready.record(torch.cuda.current_stream(values.device))  # that stream, not the current device's
    return host, ready


def _next_tokens(ids: torch.Tensor) -> torch.Tensor:
    """The token each position of ``ids`` [n, W] predicts, flattened [n W]; the last position of a row, which
    predicts nothing here, gets a stand-in (its row's first token) whose value is never read."""
    return torch.cat([ids[:, 1:], ids[:, :1]], dim=1).reshape(-1)


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(rows, axis=0, return_inverse=True)`` for small int rows (values >= -1), faster.

    When a row's values fit in 63 bits together (token ids below 2^b and few columns, as parent
    paths of short secrets do), each row is packed into one int64 and the 1-D unique is used.
    """
    n_cols = rows.shape[1]
    bits = int(rows.max(initial=0) + 2).bit_length()
    if n_cols == 0 or n_cols * bits > 63:
        paths, inverse = np.unique(rows, axis=0, return_inverse=True)
        return paths, inverse.reshape(-1)
    key = np.zeros(len(rows), dtype=np.int64)
    for c in range(n_cols):  # -1 (padding) packs as 0, so it sorts before every token
        key = (key << bits) | (rows[:, c] + 1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return rows[first], inverse.reshape(-1)
