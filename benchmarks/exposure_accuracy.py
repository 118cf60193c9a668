"""The skew-normal exposure estimate against the exact exposure, on a space small enough to enumerate.

    python benchmarks/exposure_accuracy.py RUN_DIR [--models non_dp,dp,base] [--spec recovery-codes-5]

RUN_DIR is a demo run whose canaries have a small secret space, for example
``leakaudit demo --canaries canaries/recovery_codes_5.yaml --shadows 0 --out runs/exposure5``
(five digits: 10^5 secrets).  For every canary of the spec, on every model named, it prints the
exact exposure (log2 |R| - log2 rank, the whole space scored), the skew-normal estimate (fitted to
the spec's sampled null secrets), TF Privacy's interpolation estimate, and the largest gap.  Prints
one JSON object.  This reads secrets: the output is for the developer, not for a shared report.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

from leakaudit.attacks.exposure import canary_exposures  # noqa: E402
from leakaudit.canaries.manifest import CanaryManifest  # noqa: E402
from leakaudit.models import Target, load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--models", default="non_dp")
    ap.add_argument("--spec", default="recovery-codes-5")
    ap.add_argument("--null-samples", type=int, default=0,
                    help="sampled null secrets for the estimates (default: the spec's own number)")
    args = ap.parse_args()
    manifest = CanaryManifest.load(args.run_dir / "canaries" / f"manifest-{args.spec}.json")
    if args.null_samples:
        manifest = manifest.model_copy(update={"spec": manifest.spec.model_copy(
            update={"null_samples": args.null_samples})})
    space = manifest.spec.secret_format.space_size
    out: dict = {"run": str(args.run_dir), "spec": args.spec, "space": space,
                 "null_samples": manifest.spec.null_samples, "models": {}}
    for name in args.models.split(","):
        loaded = load_model(args.run_dir / "models" / name)
        target = Target(loaded.model, loaded.tokenizer)
        t0 = time.perf_counter()
        results = canary_exposures(target, manifest, exact_max=space)
        rows = [{
            "repetitions": r.repetitions, "inserted": r.inserted, "exact_bits": r.exposure_bits_exact,
            "skewnorm_bits": r.exposure_bits_skewnorm, "interpolation_bits": r.exposure_bits,
            "skewnorm_ks_pvalue": r.skewnorm_ks_pvalue,
        } for r in results]
        gaps = np.array([abs(r["skewnorm_bits"] - r["exact_bits"]) for r in rows])
        out["models"][name] = {
            "seconds": time.perf_counter() - t0, "canaries": rows,
            "max_gap_skewnorm_bits": float(gaps.max()), "mean_gap_skewnorm_bits": float(gaps.mean()),
            "within_1_bit": int((gaps <= 1.0).sum()), "n": len(rows),
            "max_gap_interpolation_bits": float(max(abs(r["interpolation_bits"] - r["exact_bits"]) for r in rows)),
        }
        print(json.dumps({name: {k: v for k, v in out["models"][name].items() if k != "canaries"}}), flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
