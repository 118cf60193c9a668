"""Cost of the attacks' joint permutation test against the per-attack metrics it sits beside.

    python benchmarks/joint_test.py [--records 1000,10000,100000] [--attacks 11] [--per-person 4]
                                    [--permutations 9999] [--n-boot 1000]

For each size: the time of ``joint_auc_p_values`` (records as the units, and people of ``--per-person``
records as the units) against the time of ``attack_result`` for every attack (AUC, bootstrap interval,
TPRs with their intervals, ROC: what an audit computed per model before the joint test), in the same run on
the same scores.  The ratio is what the joint test adds to that step.  ``attack_result`` is also timed with
the records split per person (``groups``: one bootstrap resampling people gives the AUC's and the TPRs'
intervals), against its time with records as independent draws.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from leakaudit.attacks.metrics import attack_result, joint_auc_p_values


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(n: int, attacks: int, per_person: int, permutations: int, n_boot: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    member = np.arange(n) < n // 2
    common = rng.normal(size=n) + 0.1 * member
    scores = {f"attack{i}": common + 0.5 * rng.normal(size=n) for i in range(attacks)}
    people = np.arange(n) // per_person
    metrics = _timed(lambda: [attack_result(s[member], s[~member], n_boot=n_boot) for s in scores.values()])
    split = (people[member], people[~member])
    metrics_people = _timed(lambda: [attack_result(s[member], s[~member], n_boot=n_boot, groups=split)
                                     for s in scores.values()])
    records = _timed(lambda: joint_auc_p_values(scores, member, permutations=permutations))
    persons = _timed(lambda: joint_auc_p_values(scores, member, groups=people, permutations=permutations))
    return {
        "records": n, "attacks": attacks, "permutations": permutations,
        "per_attack_metrics_s": round(metrics, 3), "per_attack_metrics_people_s": round(metrics_people, 3),
        "ratio_metrics_people": round(metrics_people / metrics, 2),
        "joint_records_s": round(records, 3), "joint_people_s": round(persons, 3),
        "ratio_records": round(records / metrics, 2), "ratio_people": round(persons / metrics, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", default="1000,10000,100000")
    ap.add_argument("--attacks", type=int, default=11)
    ap.add_argument("--per-person", type=int, default=4)
    ap.add_argument("--permutations", type=int, default=9999)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    rows = [measure(int(n), args.attacks, args.per_person, args.permutations, args.n_boot)
            for n in args.records.split(",")]
    print(json.dumps({"machine": platform.processor() or platform.machine(), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
