"""Figures for the HTML report, returned as inline PNG data URIs so the report works offline.

matplotlib is imported lazily and only the object-oriented API with the Agg canvas is used:
no pyplot, no global figure registry, no change to the process-wide backend.  Every figure is
drawn under matplotlib's default style and saved without a ``Software`` tag, so the same
results give byte-identical PNGs.
"""

from __future__ import annotations

import base64
import io
import math
import statistics
from collections.abc import Iterable

from leakaudit.report.schema import CanaryResult, ExposureGroup, ModelResult, Results

FIGSIZE = (6.0, 4.0)
DPI = 100
ROC_FLOOR = 1e-4
"""fpr / tpr values below this are clipped so that the log-log ROC stays finite."""

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


# --------------------------------------------------------------------------- helpers shared with render


def groups_from_canaries(canaries: Iterable[CanaryResult]) -> list[ExposureGroup]:
    """Exposure summary per repetition count (0 = reference), sorted by repetition count."""
    by_rep: dict[int, list[float]] = {}
    for c in canaries:
        by_rep.setdefault(c.repetitions, []).append(c.exposure_bits)
    return [
        ExposureGroup(
            repetitions=rep,
            n=len(vals),
            median_exposure_bits=float(statistics.median(vals)),
            mean_exposure_bits=float(statistics.fmean(vals)),
            max_exposure_bits=float(max(vals)),
        )
        for rep, vals in sorted(by_rep.items())
    ]


def model_groups(model: ModelResult) -> list[ExposureGroup]:
    """The model's exposure groups: as recorded, else computed from its per-canary results."""
    if model.exposure_by_repetition:
        return sorted(model.exposure_by_repetition, key=lambda g: g.repetitions)
    return groups_from_canaries(model.canaries)


def model_color(results: Results, name: str) -> str:
    """A fixed color per model (by its position in ``results.models``), shared by every figure."""
    return PALETTE[list(results.models).index(name) % len(PALETTE)]


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _new_figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _to_data_uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _style():
    """Default matplotlib style, whatever the user's matplotlibrc or earlier rcParams changes say."""
    import matplotlib.style

    return matplotlib.style.context("default")


# --------------------------------------------------------------------------- exposure


def exposure_plot(results: Results) -> str | None:
    """Median exposure (bits) by repetition count, one line per model; None without canary data.

    Reference canaries (repetitions = 0) are drawn as a dashed horizontal line per model and
    their individual exposures as faint points at a separate "ref" position left of the
    inserted counts.  The exposure cap of each canary spec is a dotted grey line.
    """
    series = []
    for name, model in results.models.items():
        groups = [g for g in model_groups(model) if _finite(g.median_exposure_bits)]
        points = [(c.repetitions, c.exposure_bits) for c in model.canaries if _finite(c.exposure_bits)]
        if groups or points:
            series.append((name, groups, points))
    if not series:
        return None

    reps = sorted(
        {g.repetitions for _, groups, _ in series for g in groups if g.repetitions > 0}
        | {r for _, _, points in series for r, _ in points if r > 0}
    )
    ref_x = reps[0] / 2 if reps else 1.0

    from matplotlib.lines import Line2D

    with _style():
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.set_xscale("log", base=2)
        n_series = len(series)
        values: list[float] = []
        handles = []
        for i, (name, groups, points) in enumerate(series):
            color = model_color(results, name)
            # Small multiplicative offset so the scatter of different models does not overlap.
            jitter = 2 ** ((i - (n_series - 1) / 2) * 0.06)
            if points:
                xs = [(r if r > 0 else ref_x) * jitter for r, _ in points]
                ys = [e for _, e in points]
                ax.scatter(xs, ys, s=12, color=color, alpha=0.25, linewidths=0, zorder=2)
                values.extend(ys)
            inserted = [g for g in groups if g.repetitions > 0]
            if inserted:
                xs = [g.repetitions for g in inserted]
                ys = [g.median_exposure_bits for g in inserted]
                (line,) = ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=color, label=name, zorder=3)
                values.extend(ys)
            else:
                line = Line2D([], [], marker="o", ms=4, lw=1.6, color=color, label=name)
            handles.append(line)
            for g in groups:
                if g.repetitions == 0:
                    ax.axhline(g.median_exposure_bits, color=color, ls="--", lw=1.0, alpha=0.8, zorder=1)
                    values.append(g.median_exposure_bits)
        if any(g.repetitions == 0 for _, groups, _ in series for g in groups):
            handles.append(Line2D([], [], color="0.35", ls="--", lw=1.0, label="reference (never inserted)"))

        caps: dict[float, list[str]] = {}
        for spec in results.canary_specs:
            if _finite(spec.exposure_cap_bits):
                caps.setdefault(round(spec.exposure_cap_bits, 6), []).append(spec.name)
        for cap, names in caps.items():
            label = f"exposure cap ({cap:.2f} bits)"
            if len(caps) > 1:
                label = f"exposure cap, {', '.join(names)} ({cap:.2f} bits)"
            handles.append(ax.axhline(cap, color="grey", ls=":", lw=1.2, label=label, zorder=1))
            values.append(cap)

        ticks = [ref_x, *reps]
        ax.set_xticks(ticks)
        ax.set_xticklabels(["ref", *(str(r) for r in reps)])
        ax.minorticks_off()
        ax.set_xlim(ref_x / 1.5, (reps[-1] if reps else ref_x) * 1.5)
        top = max(values) if values else 1.0
        bottom = min(0.0, min(values)) if values else 0.0
        ax.set_ylim(bottom - 0.02 * (top - bottom + 1), top * 1.1 + 0.5)
        ax.set_xlabel("times inserted into the training data (log2 scale)")
        ax.set_ylabel("exposure (bits)")
        ax.set_title("Canary exposure by repetition count (median; points: single canaries)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9)
        fig.tight_layout()
        return _to_data_uri(fig)


# --------------------------------------------------------------------------- ROC


def roc_plot(results: Results, attack: str, floor: float = ROC_FLOOR) -> str | None:
    """ROC curves of one attack on log-log axes, one per model; None when no model has a curve."""
    curves = []
    for name, model in results.models.items():
        res = model.mia.get(attack)
        if res is None or res.roc is None:
            continue
        pts = [(f, t) for f, t in zip(res.roc.fpr, res.roc.tpr, strict=False) if _finite(f) and _finite(t)]
        if pts:
            curves.append((name, res, pts))
    if not curves:
        return None

    with _style():
        fig = _new_figure()
        ax = fig.add_subplot(1, 1, 1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for name, res, pts in curves:
            xs = [min(max(f, floor), 1.0) for f, _ in pts]
            ys = [min(max(t, floor), 1.0) for _, t in pts]
            auc = f"AUC {res.auc:.3f}" if _finite(res.auc) else "AUC n/a"
            ax.plot(xs, ys, lw=1.5, color=model_color(results, name), label=f"{name} ({auc})")
        ax.plot([floor, 1.0], [floor, 1.0], color="black", ls="--", lw=0.8, label="chance")
        unresolved = max(
            (r.min_resolvable_fpr for _, r, _ in curves if _finite(r.min_resolvable_fpr)), default=0.0
        )
        if unresolved > floor:
            n = max(r.n_non_members for _, r, _ in curves)
            ax.axvspan(
                floor,
                min(unresolved, 1.0),
                color="grey",
                alpha=0.12,
                lw=0,
                label=f"FPR < 1/{n} (not resolvable)",
            )
        ax.set_xlim(floor, 1.0)
        ax.set_ylim(floor, 1.0)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(f"ROC, attack: {attack} (log-log)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
        fig.tight_layout()
        return _to_data_uri(fig)
