"""Where same-seed decoding stops being reproducible: a diagnosis, not a speed benchmark.

    python benchmarks/generation_repro.py [--size gpt2-small] [--batches 64,512] [--new-tokens 128]
                                          [--variants default,no-graph,portable,no-cudnn-sdpa,math-sdpa]

For each variant and batch it decodes the same prompts three times greedily and three times with
top-k 40 and the same seed, and reports whether the runs agree, how many rows differ and the
first step where one does.  It also runs one decoder's prefill twice and one captured step twice
from the same state and says whether their logits agree bit for bit, which separates the model's
arithmetic from the sampler.  Variants: ``default`` (the engine as shipped), ``no-graph`` (static
cache, eager steps), ``portable`` (the library's growing cache), ``no-cudnn-sdpa`` and
``math-sdpa`` (attention kernels switched off).  Run it again with
``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment to test cuBLAS's multi-stream workspaces.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from generation import SIZES  # noqa: E402  (benchmarks/ is the script's directory)

from leakaudit.models import build_model, encode, train_tokenizer  # noqa: E402
from leakaudit.models import generate as engine  # noqa: E402
from leakaudit.models.generate import Sampling, generate  # noqa: E402


def compare(runs: list[np.ndarray]) -> dict:
    diff = np.zeros(runs[0].shape, dtype=bool)
    for r in runs[1:]:
        diff |= r != runs[0]
    rows = diff.any(1)
    return {"identical": bool(not rows.any()), "rows_differing": int(rows.sum()),
            "first_step_differing": int(diff.any(0).argmax()) if rows.any() else None}


def kernels_repeat(model, prompts, pad, new) -> dict:
    """Prefill twice and one captured step twice from the same state: bitwise equal logits?"""
    from leakaudit.models.fused import padded_head

    engine.release_decoder()
    with torch.no_grad(), engine._attention_kernels(), padded_head(model):  # as generate runs it
        dec = engine._decoder(model, len(prompts), max(map(len, prompts)), new, engine.cache_argument(model), True)
        a = dec.prefill(prompts, pad).clone()
        b = dec.prefill(prompts, pad).clone()
        tok = a.argmax(-1)
        out = {"prefill_bitwise_equal": bool(torch.equal(a, b))}
        s1 = dec.step(tok, 0).clone()
        for layer in dec.cache.layers:
            layer.cumulative_length.sub_(1)
        dec.mask[:, 0, 0, dec.start] = 0.0  # the slot step 0 unmasked (still unmasked: the state is unchanged)
        dec.pos.sub_(1)
        s2 = dec.step(tok, 0).clone()
    out["step_bitwise_equal"] = bool(torch.equal(s1, s2))
    out["step_max_abs_diff"] = float((s1.float() - s2.float()).abs().max())
    engine.release_decoder()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    ap.add_argument("--batches", default="64,512")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--variants", default="default,no-graph,portable,no-cudnn-sdpa,math-sdpa")
    ap.add_argument("--out")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    sz = SIZES[args.size]
    from leakaudit.data import make_corpora

    _, public = make_corpora(1, 2000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=sz["vocab"])
    pad = tok.pad_token_id
    model = build_model(tok, arch="gpt2", n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"],
                        context=1024)
    if sz.get("resize"):
        model.resize_token_embeddings(sz["resize"])
    model = model.to("cuda" if cuda else "cpu", torch.bfloat16 if cuda else torch.float32).eval()
    enc = encode(tok, [r["text"] for r in public])
    rng = np.random.default_rng(0)
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                 "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"), "runs": []}
    batches = [int(x) for x in args.batches.split(",")]
    prompts_by_batch = {b: [enc[i].ids[: int(rng.integers(8, 33))] for i in rng.integers(0, len(enc), size=b)]
                        for b in batches}
    for variant in args.variants.split(","):
        kw: dict = {}
        if variant == "no-graph":
            kw["cuda_graph"] = False
        elif variant == "portable":
            kw["engine"] = "portable"
        if cuda:
            torch.backends.cuda.enable_cudnn_sdp(variant not in ("no-cudnn-sdpa", "math-sdpa"))
            torch.backends.cuda.enable_mem_efficient_sdp(variant != "math-sdpa")
            torch.backends.cuda.enable_flash_sdp(variant != "math-sdpa")
        for b in batches if variant in ("default", "no-graph") else batches[:1]:
            prompts = prompts_by_batch[b]
            engine.release_decoder()
            row: dict = {"variant": variant, "batch": b}
            for name, s in (("greedy", Sampling(max_new_tokens=args.new_tokens, greedy=True)),
                            ("top_k_40", Sampling(max_new_tokens=args.new_tokens, top_k=40))):
                runs = [generate(model, prompts, s, pad_id=pad, batch_size=b, seed=1, **kw) for _ in range(3)]
                row[name] = compare(runs)
            if variant == "default":
                row.update(kernels_repeat(model, prompts, pad, args.new_tokens))
            res["runs"].append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "w") as f:
                    json.dump(res, f, indent=2)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
