"""Canary exposure of a whole manifest: candidates' tails tokenized once per spec (cached) against once per
canary, in the same run on the same model, in ABBA order.

    python benchmarks/exposure_speed.py [--spec canaries/recovery_codes.yaml] [--size tiny|small|gpt2-small]
                                        [--null-samples 2000] [--device cpu] [--bf16]

Every canary of a spec follows its own prefix (another customer's name) but the same words before the secret,
and is scored against the same null secrets: with the cache, only the first canary tokenizes them.  Prints one
JSON object: seconds of each run, the ratio, and whether both give the same exposures (they must).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from secret_scoring import SIZES, scoring_model  # noqa: E402  (the model the secret benchmarks share)

from leakaudit.attacks.exposure import canary_exposures  # noqa: E402
from leakaudit.canaries import generate_canaries, load_spec  # noqa: E402
from leakaudit.models import Target  # noqa: E402
from leakaudit.models.tokenize import TailCache  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(Path(__file__).resolve().parents[1] / "canaries" / "recovery_codes.yaml"))
    ap.add_argument("--size", default="small", choices=SIZES)
    ap.add_argument("--null-samples", type=int, default=None, help="override the spec's null_samples")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()

    spec = load_spec(args.spec)
    if args.null_samples:
        spec = spec.model_copy(update={"null_samples": args.null_samples})
    manifest = generate_canaries(spec)
    torch.manual_seed(0)
    target = Target(*scoring_model(args.size, args.device, args.bf16))
    canary_exposures(target, manifest)  # warm-up (kernels, allocator)

    def run(cached: bool) -> tuple[float, list]:
        target.tail_cache = TailCache() if cached else None
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        res = canary_exposures(target, manifest)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, [(r.id, r.exposure_bits, r.rank) for r in res]

    times: dict[str, list[float]] = {"per_canary": [], "cached": []}
    results = {}
    for cached in (False, True, True, False):  # ABBA
        t, res = run(cached)
        key = "cached" if cached else "per_canary"
        times[key].append(round(t, 3))
        results[key] = res
    per_canary, cached = sum(times["per_canary"]) / 2, sum(times["cached"]) / 2
    print(json.dumps({
        "benchmark": "exposure_speed", "spec": spec.name, "canaries": len(manifest.canaries),
        "null_samples": spec.null_samples, "size": args.size, "device": args.device, "bf16": args.bf16,
        "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "seconds_per_canary_tokenizing": times["per_canary"], "seconds_cached": times["cached"],
        "speedup": round(per_canary / cached, 2), "same_exposures": results["cached"] == results["per_canary"],
    }))


if __name__ == "__main__":
    main()
