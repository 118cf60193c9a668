"""Decoding throughput: leakaudit's engine against the library's ``generate``, in the same run on the
same model, prompts and sampling settings (top-k 40, every sequence decoding the full length).

    python benchmarks/generation.py [--archs gpt2,llama] [--size small|gpt2-small] [--batches 1,64,512]
                                    [--new-tokens 256] [--device cuda] [--untargeted-samples 100000]

For each architecture and batch size it prints new tokens/s of both and their ratio, the engine's
one-off set-up time (first call: static cache allocation and, on a GPU, the CUDA-graph capture),
which path the engine took, and peak GPU memory.  ``--untargeted-samples N`` also times the
untargeted extraction attack's sampling stage (three strategies, ``--new-tokens`` tokens each) on
the first architecture, and with ``--untargeted-post`` the rest of the attack on those samples (ranking
by the model's scores, near-duplicate removal, verification against half the corpus as training text
and half as held out).  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from functools import partial

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from leakaudit.data import make_corpora  # noqa: E402
from leakaudit.models import Target, build_model, encode, train_tokenizer  # noqa: E402
from leakaudit.models.generate import Sampling, generate  # noqa: E402

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "small": dict(n_layer=4, n_embd=128, n_head=4, vocab=2048),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=8192, resize=50257),
}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def library_generate(model, prompts, pad, n):
    width = max(map(len, prompts))
    dev = next(model.parameters()).device
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=dev)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=dev)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=40, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=pad, eos_token_id=None)
    return out[:, width:]


def step_profile(model, s: Sampling, reps: int = 50) -> dict:
    """GPU milliseconds of one decoding step's parts, from the decoder the last call left captured.

    ``graph_replay_<n>``: the captured step attending to ``n`` cache slots (the first and the
    last slice); ``sample_top_k``: the top-k sampler as the engine runs it (one plain top-k unless
    ``_CHUNK`` says otherwise, tie check left on the device); ``sample_top_k_host_check``: the same
    with the tie check read on the host every step (as before); ``sample_top_k_chunked``: a first
    pass over 128-token chunks' maxima instead of one top-k over the whole vocabulary;
    ``sample_top_k_whole_vocab``: the draw over the whole vocabulary
    (the path a tie overflow falls back to); ``top_k_kernel``: ``torch.topk`` of k + margin alone
    (the rest of ``sample_top_k`` is the cut, the ordering by id and the draw over those candidates);
    ``top_k_kernel_unsorted`` and ``top_k_unsorted_then_sort``: the same with ``sorted=False``, alone and
    followed by a sort of the k + margin candidates (an option for the sampler, not yet taken).
    """
    from leakaudit.models import generate as engine

    dec = engine._last_decoder[0][1] if engine._last_decoder else None  # none: the portable path ran
    if dec is None or not dec.graphs:
        return {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    layers = [layer for layer in dec.cache.layers if getattr(layer, "is_initialized", False)]

    def replay(graph):
        def run():
            for layer in layers:  # every replay writes the same cache slot (each one advances the write position)
                layer.cumulative_length.fill_(dec.start)
            graph.replay()
        return run

    sizes = sorted(dec.graphs)
    logits = dec.graphs[sizes[-1]][1]
    parts = {f"graph_replay_{n}": replay(dec.graphs[n][0]) for n in {sizes[0], sizes[-1]}}
    margin, chunk = engine._TIE_MARGIN, engine._CHUNK
    flag = torch.zeros(logits.shape[0], dtype=torch.bool, device="cuda")
    parts["sample_top_k"] = lambda: engine._choose_on_device(logits, s, 30, gen, overflow=flag)  # as decoding runs it
    parts["sample_top_k_host_check"] = lambda: engine._choose_on_device(logits, s, 30, gen)  # waits for the device

    def chunked_top_k():
        engine._CHUNK = 128
        try:
            engine._choose_on_device(logits, s, 30, gen, overflow=flag)
        finally:
            engine._CHUNK = chunk

    def full_vocab():
        engine._TIE_MARGIN = 0
        try:
            engine._choose_on_device(logits, s, 30, gen)
        finally:
            engine._TIE_MARGIN = margin

    parts["sample_top_k_chunked"] = chunked_top_k
    parts["sample_top_k_whole_vocab"] = full_vocab
    parts["top_k_kernel"] = lambda: torch.topk(logits, s.top_k + margin, dim=-1)
    # candidates unsorted, then sorted among themselves (the sampler needs them largest first): cheaper?
    parts["top_k_kernel_unsorted"] = lambda: torch.topk(logits, s.top_k + margin, dim=-1, sorted=False)
    parts["top_k_unsorted_then_sort"] = lambda: torch.topk(logits, s.top_k + margin, dim=-1,
                                                           sorted=False).values.sort(-1, descending=True)
    out = {}
    for name, fn in parts.items():
        fn()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        torch.cuda.synchronize()
        out[name] = a.elapsed_time(b) / reps
    return out


ENGINE = "auto"  # the engine's path (--engine): auto, static or portable


def timed_slots(fn):
    """:func:`timed`, and the cache slots a decoding step of that call attended to on average (from the static
    decoder's counters; None where the portable path ran)."""
    from leakaudit.models import generate as engine

    def counters():
        dec = engine._last_decoder[0][1] if engine._last_decoder else None
        return None if dec is None else (dec, dec.steps, dec.slots_read)

    before = counters()
    out, t = timed(fn)
    after = counters()
    if after is None:
        return out, t, None
    steps, slots = before[1:] if before is not None and before[0] is after[0] else (0, 0)  # else: a new decoder
    return out, t, (after[2] - slots) / max(1, after[1] - steps)


def fresh_runs(model, prompts, s, pad, b) -> dict:
    """The engine with its current settings from a fresh decoder: the first call (allocation, capture,
    compiling) and a second, timed one, with the same seed."""
    from leakaudit.models import generate as engine

    engine.release_decoder()
    run = partial(generate, model, prompts, s, pad_id=pad, batch_size=b, seed=1, engine=ENGINE)
    first, setup = timed(run)
    again, t, slots = timed_slots(run)
    return {"tokens_per_s": b * s.max_new_tokens / t, "first_call_s": setup,
            "same_samples_twice": bool(np.array_equal(first, again)), "cache_slots_per_step": slots}


OLD_SLICES = {"kv_bucket": 64, "prompt_align": 0}  # the cache slices as they were before the fourteenth session


def engine_variants(model, prompts, s, pad, b, settings: list[dict] | None = None) -> list[dict]:
    """The engine with its step savings switched off one at a time (same prompts, same run).

    ``kv_bucket``: cache slices (0: the whole cache every step; twice, a half and a quarter of the default:
    more captured graphs, fewer idle slots read); ``prompt_align`` (0: every batch's new tokens start after
    the call's widest prompt, rounded as the cache is, as before the fourteenth session); ``tie_margin`` (0:
    sample over the whole vocabulary every step); ``chunk`` (128: a first pass over chunk maxima for the
    sampler's candidates); ``defer_ties`` (False: the tie check read on the host every step).
    """
    from leakaudit.models import generate as engine

    names = {"kv_bucket": "_KV_BUCKET", "prompt_align": "_PROMPT_ALIGN", "tie_margin": "_TIE_MARGIN",
             "chunk": "_CHUNK", "defer_ties": "_DEFER_TIES"}
    saved = {k: getattr(engine, v) for k, v in names.items()}
    # {"defer_ties": False}: the sampler as it was before the fifth session
    bucket = saved["kv_bucket"]
    if settings is None:
        settings = [{}, OLD_SLICES, {"prompt_align": 0}, {"kv_bucket": 0},
                    {"kv_bucket": bucket * 2}, {"kv_bucket": bucket // 2}, {"kv_bucket": bucket // 4},
                    {"tie_margin": 0}, {"chunk": 128}, {"defer_ties": False}, {"chunk": 128, "defer_ties": False}]
    rows = []
    try:
        for change in settings:
            for k, v in {**saved, **change}.items():
                setattr(engine, names[k], v)
            rows.append({**saved, **change, **fresh_runs(model, prompts, s, pad, b)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        for k, v in saved.items():
            setattr(engine, names[k], v)
        engine.release_decoder()
    return rows


def compiled_step(model, prompts, s, pad, b) -> dict:
    """The engine with its decoding step through torch.compile (experimental), same prompts, same run;
    ``first_call_s`` includes compiling (one graph per cache slice length) and capturing."""
    from leakaudit.models import generate as engine

    engine._COMPILE_STEP = True
    try:
        row = fresh_runs(model, prompts, s, pad, b)
        dec = engine._last_decoder[0][1] if engine._last_decoder else None  # none: the portable path ran
        row.update(still_compiled=None if dec is None else dec.step_model is not dec.model,
                   step_ms=step_profile(model, s))
    finally:
        engine._COMPILE_STEP = False
        engine.release_decoder()
    print(json.dumps(row), flush=True)
    return row


def attention_variants(model, prompts, s, pad, b) -> list[dict]:
    """The engine's one-token steps with its own attention products and with the library's SDPA (same run).

    ``products`` is the engine as shipped (``models.attention``); ``sdpa`` hands the steps to the
    library's SDPA path, where, with cuDNN's kernel excluded (not reproducible) and a padding mask,
    the dispatcher picks the memory-efficient kernel; ``sdpa-math`` allows only SDPA's math kernel.
    """
    from leakaudit.models import generate as engine

    cuda = torch.backends.cuda
    saved = cuda.flash_sdp_enabled(), cuda.mem_efficient_sdp_enabled(), cuda.math_sdp_enabled()
    rows = []
    kinds = [("products", True, saved), ("sdpa", False, saved)]
    if os.environ.get("LEAKAUDIT_BENCH_MATH_SDPA"):  # about 4x slower than either on an H200: off by default
        kinds.append(("sdpa-math", False, (False, False, True)))
    try:
        for name, products, flags in kinds:
            engine._DECODE_ATTENTION = products
            cuda.enable_flash_sdp(flags[0])
            cuda.enable_mem_efficient_sdp(flags[1])
            cuda.enable_math_sdp(flags[2])
            rows.append({"attention": name, **fresh_runs(model, prompts, s, pad, b), "step_ms": step_profile(model, s)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        engine._DECODE_ATTENTION = True
        cuda.enable_flash_sdp(saved[0])
        cuda.enable_mem_efficient_sdp(saved[1])
        cuda.enable_math_sdp(saved[2])
        engine.release_decoder()
    return rows


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--archs", default="gpt2,llama")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batches", default="1,64,512")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--untargeted-samples", type=int, default=0)
    ap.add_argument("--untargeted-post", action="store_true",
                    help="also time ranking, dedupe and verification of the untargeted samples")
    ap.add_argument("--step-profile", action="store_true", help="GPU time of a decoding step's parts (largest batch)")
    ap.add_argument("--attention-variants", action="store_true",
                    help="at the largest batch, also time the engine's one-token steps with the library's SDPA "
                         "instead of its own attention products (LEAKAUDIT_BENCH_MATH_SDPA=1: and SDPA's math kernel)")
    ap.add_argument("--compile-step", action="store_true",
                    help="at the largest batch, also time the engine with its decoding step compiled "
                         "(experimental _COMPILE_STEP; compiling counted apart)")
    ap.add_argument("--variants", action="store_true",
                    help="also time the engine without its cache slices and/or its short top-k (largest batch)")
    ap.add_argument("--slices-ab", type=int, default=0, metavar="N",
                    help="at the largest batch, time the engine N times each with its cache slices and with the "
                         "slices as they were before (64 slots, one prompt column per call), in the order ABBA...")
    ap.add_argument("--engine", choices=["auto", "static", "portable"], default="auto",
                    help="the engine's path (auto: static with CUDA graphs on a GPU, portable on a CPU)")
    ap.add_argument("--out", help="also write the JSON here (rewritten after every measurement)")
    args = ap.parse_args()
    global ENGINE
    ENGINE = args.engine
    sz = SIZES[args.size]
    cuda = args.device.startswith("cuda")
    _, public = make_corpora(1, 2000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=sz["vocab"])
    pad = tok.pad_token_id
    rng = np.random.default_rng(0)
    enc = encode(tok, [r["text"] for r in public])
    res: dict = {
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
        "device": torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "size": args.size, "new_tokens": args.new_tokens, "engine": args.engine,
        "runs": [],
    }

    def dump() -> None:
        text = json.dumps(res, indent=2)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)

    batch_sizes = [int(x) for x in args.batches.split(",") if x]  # none: only the untargeted stage
    first_model = None
    for arch in args.archs.split(","):
        model = build_model(tok, arch=arch, n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"],
                            context=1024)
        if sz.get("resize"):
            model.resize_token_embeddings(sz["resize"])  # a GPT-2-sized vocabulary: the output layer's real cost
        model = model.to(args.device, torch.bfloat16 if cuda else torch.float32).eval()
        first_model = first_model or model
        params = sum(p.numel() for p in model.parameters())
        for b in batch_sizes:
            picks = rng.integers(0, len(enc), size=b)
            prompts = [enc[i].ids[: int(rng.integers(8, 33))] for i in picks]
            s = Sampling(max_new_tokens=args.new_tokens, top_k=40)
            report: dict = {}
            engine = partial(generate, model, prompts, s, pad_id=pad, batch_size=b, seed=1, engine=ENGINE)
            first, setup = timed(partial(engine, report=report))
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            a, t_engine, slots = timed_slots(engine)
            again = engine()
            greedy = [generate(model, prompts, Sampling(max_new_tokens=args.new_tokens, greedy=True), pad_id=pad,
                               batch_size=b, engine=ENGINE) for _ in range(2)]
            peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
            library_generate(model, prompts[:1], pad, 4)  # warm-up
            _, t_lib = timed(partial(library_generate, model, prompts, pad, args.new_tokens))
            n_tok = b * args.new_tokens
            run = {
                "arch": arch, "parameters": params, "batch": b, "path": report.get("path"),
                "engine_tokens_per_s": n_tok / t_engine, "library_tokens_per_s": n_tok / t_lib,
                "engine_vs_library": t_lib / t_engine, "engine_first_call_s": setup, "engine_s": t_engine,
                "library_s": t_lib, "same_samples_with_same_seed": bool((a == again).all() and (first == a).all()),
                "same_greedy_twice": bool((greedy[0] == greedy[1]).all()),
                "engine_peak_mb": peak, "cache_slots_per_step": slots,
            }
            largest = b == max(batch_sizes)
            if args.step_profile and cuda and largest:
                engine()  # leave the sampling decoder captured
                run["step_profile_ms"] = step_profile(model, s)
            if args.variants and largest and arch == args.archs.split(",")[0]:
                run["variants"] = engine_variants(model, prompts, s, pad, b)
            static = str(report.get("path")).startswith("static")
            if args.slices_ab and largest and arch == args.archs.split(",")[0] and not static:
                run["slices_ab"] = {"skipped": "the portable path ran (on a CPU: --engine static): no cache slices"}
            elif args.slices_ab and largest and arch == args.archs.split(",")[0]:
                # A B B A ...: neither arm always runs first
                order = [arm for r in range(args.slices_ab) for arm in ((0, 1) if r % 2 == 0 else (1, 0))]
                ab = engine_variants(model, prompts, s, pad, b, settings=[({}, OLD_SLICES)[a] for a in order])
                arms = [[r for r, a in zip(ab, order) if a == i] for i in (0, 1)]
                now, old = ([r["tokens_per_s"] for r in rows] for rows in arms)
                run["slices_ab"] = {"order": ["now" if a == 0 else "old" for a in order],
                                    "tokens_per_s": now, "old_slices_tokens_per_s": old,
                                    "median_ratio": float(np.median(now) / np.median(old)),
                                    "cache_slots_per_step": arms[0][0]["cache_slots_per_step"],
                                    "old_cache_slots_per_step": arms[1][0]["cache_slots_per_step"]}
            if args.compile_step and largest:
                run["compiled_step"] = compiled_step(model, prompts, s, pad, b)
            if args.attention_variants and largest and arch == args.archs.split(",")[0]:
                run["attention_variants"] = attention_variants(model, prompts, s, pad, b)
            res["runs"].append(run)
            print(json.dumps(run), flush=True)
            dump()
        if arch != args.archs.split(",")[0]:
            del model
    if args.untargeted_samples and first_model is not None:
        from leakaudit.attacks.untargeted import sample_texts

        target = Target(first_model, tok)
        sample_texts(target, 16, length=8, public_texts=[r["text"] for r in public[:200]], batch_size=512)
        samples, t = timed(partial(sample_texts, target, args.untargeted_samples, length=args.new_tokens,
                                   public_texts=[r["text"] for r in public], batch_size=512))
        res["untargeted_sampling"] = {
            "arch": args.archs.split(",")[0], "samples": len(samples.new), "tokens_each": args.new_tokens,
            "seconds": t, "tokens_per_s": len(samples.new) * args.new_tokens / t,
        }
        dump()
        if args.untargeted_post:  # the rest of the attack on those samples: ranking, dedupe, verification
            from leakaudit.attacks.untargeted import NgramIndex, dedupe, records_written, untargeted_extraction, verify

            texts = [r["text"] for r in public]
            half, n = len(texts) // 2, 16
            (summary, _), t = timed(partial(untargeted_extraction, target, samples, texts[:half], ngram=n,
                                            public_texts=texts[-200:], member_texts=texts[:half],
                                            non_member_texts=texts[half:]))
            # the steps without the model, again apart (the rest of the total is mostly ranking: scoring every
            # sample and its lower-cased text); the samples' length once decoded and re-encoded, since ids
            # beyond a small tokenizer's vocabulary decode to nothing and would shorten what is scored
            ids = [e.ids[e.n_special:] for e in encode(tok, [r["text"] for r in public])]
            train, held, pub = (NgramIndex(x, n) for x in (ids[:half], ids[half:], ids[-200:]))
            kept, t_dedupe = timed(partial(dedupe, [p + g for p, g in zip(samples.prompts, samples.new)]))
            _, t_verify = timed(partial(verify, samples, train, public=pub, non_members=held))
            _, t_written = timed(partial(records_written, samples, kept, ids, n, pub))
            some = samples.texts(tok)[:: max(1, len(samples.new) // 1000)]
            res["untargeted_post"] = {
                "samples": len(samples.new), "unique": summary.n_unique, "seconds": t,
                "dedupe_s": t_dedupe, "verify_s": t_verify, "records_written_s": t_written,
                "scored_tokens_per_sample": float(np.mean([len(e.ids) for e in encode(tok, some)])),
                "note": "seconds: the whole attack after sampling; the three steps timed again apart",
            }
            dump()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
