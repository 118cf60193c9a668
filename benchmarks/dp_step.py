"""DP-SGD step cost: time per optimizer step and peak memory of Opacus (hooks, ghost) against plain
training at the same batch, same model, same data, each mode in a fresh process.

    python benchmarks/dp_step.py [--arch gpt2|llama] [--size tiny|small|gpt2-small] [--batch 32]
                                 [--tokens 256] [--steps 10] [--modes non_dp,hooks,ghost,bookkeeping] [--lora]
                                 [--fixed-batch]

Time per step is measured between the ends of step 2 and of the last step of one run (each step's
loss is read back, which synchronises), so set-up (Opacus wrapping, the first passes) and the
accountant's final epsilon are not counted.  Peak memory is torch.cuda.max_memory_allocated on a
GPU and the process's peak resident set on a CPU (there, run with ``MALLOC_MMAP_THRESHOLD_=65536`` so that
freed large blocks leave the resident set at once; glibc otherwise keeps them and the peak depends
on the order of allocations more than on what is alive; it also slows every mode, so take times
from a run without it).  Prints one JSON object with every mode and the ratios against non_dp.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2, vocab=512),
    "small": dict(n_layer=4, n_embd=128, n_head=4, vocab=2048),
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab=8192, resize=50257),
}


def _fixed_batches() -> None:
    """``--fixed-batch``: the DP modes get the plain run's shuffled fixed batches instead of Poisson ones.

    For measuring cost at the same batch only: the accountant's epsilon then describes sampling that
    did not happen.  Opacus's own path is given ``poisson_sampling=False``; book-keeping's loader is
    left as the plain run's.
    """
    import opacus
    from opacus.data_loader import DPDataLoader

    make_private = opacus.PrivacyEngine.make_private

    def fixed(self, *a, **kw):
        kw["poisson_sampling"] = False
        return make_private(self, *a, **kw)

    opacus.PrivacyEngine.make_private = fixed
    DPDataLoader.from_data_loader = classmethod(lambda cls, loader, **kw: loader)


def _one(args) -> dict:
    """Run one mode in this process and return its figures."""
    import torch

    from leakaudit.data import make_corpora
    from leakaudit.models import build_model, train_tokenizer
    from leakaudit.train.loop import DPSettings, LoraSettings, TrainSettings, train_model

    if args.fixed_batch:
        _fixed_batches()
    sz = SIZES[args.size]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    private, public = make_corpora(400, 1000, seed=0)
    tok = train_tokenizer([r["text"] for r in public], vocab_size=sz["vocab"])
    model = build_model(tok, arch=args.arch, n_layer=sz["n_layer"], n_embd=sz["n_embd"], n_head=sz["n_head"],
                        context=max(args.tokens, 64))
    if sz.get("resize"):
        model.resize_token_embeddings(sz["resize"])  # a GPT-2-sized vocabulary: the output layer's real cost
    model = model.to(device)
    # texts of about `tokens` tokens: records joined until long enough, truncated by max_length
    texts, buf = [], ""
    for r in private:
        buf += r["text"] + " "
        if len(buf) > args.tokens * 5:
            texts.append(buf)
            buf = ""
    dp = None
    if args.mode != "non_dp":
        dp = DPSettings(noise_multiplier=1.0, grad_sample_mode=args.mode, max_grad_norm=1.0)
    lora = LoraSettings(r=8) if args.lora else None

    def run(steps: int) -> list[float]:
        """Train ``steps`` steps; the time at which each step ended (its loss read back, so synchronised)."""
        s = TrainSettings(steps=steps, batch_size=args.batch, lr=1e-4, max_length=args.tokens, lora=lora)
        ends: list[float] = []
        train_model(model, tok, texts, s, dp=dp, progress=lambda *_: ends.append(time.perf_counter()))
        return ends

    run(2)  # warm-up: kernels, allocator
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    # DP batches are Poisson-sampled: their sizes vary around --batch, and the largest one sets the peak
    sizes: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda _m, a, kw: sizes.append(int((kw.get("input_ids") if "input_ids" in kw else a[0]).shape[0])),
        with_kwargs=True)
    ends = run(2 + args.steps)
    hook.remove()
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {
        # steps 3.. of the run: Opacus wrapping, the first passes and the accountant are left out
        "mode": args.mode, "seconds_per_step": (ends[-1] - ends[1]) / (len(ends) - 2), "peak_bytes": int(peak),
        "device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "parameters": sum(p.numel() for p in model.parameters()), "n_texts": len(texts),
        "largest_batch": max(sizes, default=0), "batches": sizes,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--modes", default="non_dp,hooks,ghost,bookkeeping")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--fixed-batch", action="store_true",
                    help="DP modes on the plain run's fixed batches (cost at the same batch; epsilon not meaningful)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = ap.parse_args()
    if args.mode:
        print(json.dumps(_one(args)))
        return
    out = {"arch": args.arch, "size": args.size, "batch": args.batch, "tokens": args.tokens, "lora": args.lora,
           "fixed_batch": args.fixed_batch,
           "machine": f"{platform.machine()} {platform.processor()}".strip(), "modes": {}}
    for mode in args.modes.split(","):
        cmd = [sys.executable, __file__, "--mode", mode, "--arch", args.arch, "--size", args.size,
               "--batch", str(args.batch), "--tokens", str(args.tokens), "--steps", str(args.steps)]
        if args.lora:
            cmd.append("--lora")
        if args.fixed_batch:
            cmd.append("--fixed-batch")
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            out["modes"][mode] = {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        out["modes"][mode] = json.loads(done.stdout.strip().splitlines()[-1])
    base = out["modes"].get("non_dp", {})
    for mode, r in out["modes"].items():
        if mode != "non_dp" and "seconds_per_step" in r and "seconds_per_step" in base:
            r["time_vs_non_dp"] = r["seconds_per_step"] / base["seconds_per_step"]
            r["memory_vs_non_dp"] = r["peak_bytes"] / base["peak_bytes"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
