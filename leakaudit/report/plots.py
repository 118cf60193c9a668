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
from collections.abc import Sequence
from typing import Any

import numpy as np

from leakaudit.attacks.metrics import dp_max_tpr
from leakaudit.report.canaries import model_groups
from leakaudit.report.formatting import _ok
from leakaudit.report.mia import attack_order, unit_attacks
from leakaudit.report.schema import AttackResult, Results

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


# --------------------------------------------------------------------------- helpers


def model_color(results: Results, name: str) -> str:
    """A fixed color per model (by its position in ``results.models``), shared by every figure."""
    return PALETTE[list(results.models).index(name) % len(PALETTE)]


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
    """Default matplotlib style, whatever the user's matplotlibrc or earlier rcParams changes say; text is
    drawn as written ('$' in a name is a dollar sign, not mathtext that could fail to parse)."""
    import matplotlib.style

    return matplotlib.style.context(["default", {"text.parse_math": False}])


# --------------------------------------------------------------------------- exposure


def exposure_plot(results: Results) -> str | None:
    """Median exposure (bits) by repetition count, one line per model; None without canary data.

    Reference canaries (repetitions = 0) are drawn as a dashed horizontal line per model and
    their individual exposures as points at a separate "ref" position left of the inserted
    counts.  Single canaries are filled when the extraction search recovered their secret,
    hollow when it did not, and faint when they were not searched.  The exposure cap of each
    canary spec is a dotted grey line.
    """
    series = []
    for name, model in results.models.items():
        groups = [g for g in model_groups(model) if _ok(g.median_exposure_bits)]
        points = [(c.repetitions, c.exposure_bits, c.extracted) for c in model.canaries if _ok(c.exposure_bits)]
        if groups or points:
            series.append((name, groups, points))
    if not series:
        return None

    reps = sorted(
        {g.repetitions for _, groups, _ in series for g in groups if g.repetitions > 0}
        | {r for _, _, points in series for r, _, _ in points if r > 0}
    )
    searched = {x for _, _, points in series for _, _, x in points if x is not None}
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
            for extracted in (None, False, True):
                sel = [(r, e) for r, e, x in points if x is extracted]
                if not sel:
                    continue
                xs = [(r if r > 0 else ref_x) * jitter for r, _ in sel]
                ys = [e for _, e in sel]
                if extracted is None:  # not searched
                    ax.scatter(xs, ys, s=12, color=color, alpha=0.25, linewidths=0, zorder=2)
                elif extracted:
                    ax.scatter(xs, ys, s=22, color=color, alpha=0.85, linewidths=0, zorder=4)
                else:
                    ax.scatter(xs, ys, s=22, facecolors="none", edgecolors=color, alpha=0.7, linewidths=0.9, zorder=2)
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
        if True in searched:
            handles.append(Line2D([], [], color="0.35", marker="o", ms=5, ls="", label="canary extracted"))
        if False in searched:
            handles.append(
                Line2D([], [], color="0.35", marker="o", ms=5, ls="", markerfacecolor="none", label="not extracted")
            )

        caps: dict[float, list[str]] = {}
        for spec in results.canary_specs:
            if _ok(spec.exposure_cap_bits):
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
        title = "Canary exposure by repetition count (median; points: single canaries)"
        if searched:
            title = "Canary exposure by repetition count (median; filled points: extracted)"
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(handles=handles, fontsize=8, loc="upper left", framealpha=0.9)
        fig.tight_layout()
        return _to_data_uri(fig)


# --------------------------------------------------------------------------- ROC

ROC_COLUMNS = 4
"""Panels per row of the ROC small multiples."""
ROC_PANEL = (2.7, 2.35)
"""Width and height (inches) of one ROC panel in the grid."""
ROC_TOP = 1.6
"""Upper limit of the (log) TPR axis."""


def png_size(uri: str) -> tuple[int, int]:
    """(width, height) in pixels of a PNG data URI, read from its IHDR chunk."""
    raw = base64.b64decode(uri.split(",", 1)[1][:44])
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def _curves(
    results: Results, attack: str, names: Sequence[str], unit: str | None
) -> list[tuple[str, AttackResult, list[tuple[float, float]]]]:
    curves = []
    for name in names:
        res = unit_attacks(results.models[name], unit).get(attack)
        if res is None or res.roc is None:
            continue
        pts = [(f, t) for f, t in zip(res.roc.fpr, res.roc.tpr, strict=False) if _ok(f) and _ok(t)]
        if pts:
            curves.append((name, res, pts))
    return curves


def _draw_roc_panel(ax, results: Results, curves, floor: float, *, auc_labels: bool) -> bool:
    """One log-log ROC panel: a curve per model, chance, the DP bound of DP models, unresolvable FPRs.

    Returns whether some curve violates its DP bound.
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    violated = False
    for name, res, pts in curves:
        color = model_color(results, name)
        xs = [min(max(f, floor), 1.0) for f, _ in pts]
        ys = [min(max(t, floor), 1.0) for _, t in pts]
        label = name
        if auc_labels:
            label += f" (AUC {res.auc:.3f})" if _ok(res.auc) else " (AUC n/a)"
        ax.plot(xs, ys, lw=1.5, color=color, label=label, zorder=3)
        dp = res.dp_bound
        if dp is not None and _ok(dp.epsilon) and _ok(dp.delta):
            violated = violated or dp.violated
            # the most TPR the DP bounds allow, sampled evenly in log FPR (a straight line on log-log axes until
            # delta, or the mirrored bound near FPR 1, matters)
            bx = np.geomspace(floor, 1.0, 65)
            by = np.maximum(dp_max_tpr(dp.epsilon, dp.delta, bx), floor)
            ax.plot(
                bx,
                by,
                color=color,
                ls=":",
                lw=1.2,
                zorder=2,
                label=f"{name}: DP bound (ε={dp.epsilon:.2f})"
                + ("; checked on single-record people" if dp.scope != "all records" else ""),
            )
    ax.plot([floor, 1.0], [floor, 1.0], color="black", ls="--", lw=0.8, label="chance", zorder=1)
    unresolved = max((r.min_resolvable_fpr for _, r, _ in curves if _ok(r.min_resolvable_fpr)), default=0.0)
    if unresolved > floor:
        n = max(r.n_non_members for _, r, _ in curves)
        ax.axvspan(floor, min(unresolved, 1.0), color="grey", alpha=0.12, lw=0, label=f"FPR < 1/{n} (not resolvable)")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(floor, ROC_TOP)  # a little headroom, so that a curve at TPR = 1 is not hidden by the frame
    ax.grid(True, which="major", alpha=0.3)
    return violated


def roc_plot(
    results: Results,
    attack: str | None = None,
    floor: float = ROC_FLOOR,
    *,
    models: Sequence[str] | None = None,
    unit: str | None = None,
    columns: int = ROC_COLUMNS,
) -> str | None:
    """ROC curves on log-log axes, one curve per model; None when there is no curve to draw.

    With ``attack`` given, one plot of that attack.  With ``attack=None``, a grid of small multiples
    (``columns`` panels per row): one panel per attack, in :func:`attack_order`, all on the same axes
    and with the same model colors as the other figures, so attacks and models can be compared at a
    glance.  ``models`` restricts the curves to some models (e.g. one model's grid); ``unit`` picks a
    unit of evaluation from ``mia_by_unit`` ("user", "canary") instead of the per-sequence attacks.
    For a DP model the most TPR its (eps, delta) allows at each FPR is drawn dotted in the model's color.
    """
    names = [n for n in (models if models is not None else list(results.models)) if n in results.models]
    attacks = [attack] if attack is not None else attack_order(results, unit, names)
    panels = [(a, c) for a in attacks if (c := _curves(results, a, names, unit))]
    if not panels:
        return None

    with _style():
        if attack is not None:
            fig = _new_figure()
            ax = fig.add_subplot(1, 1, 1)
            _draw_roc_panel(ax, results, panels[0][1], floor, auc_labels=True)
            ax.set_xlabel("false positive rate")
            ax.set_ylabel("true positive rate")
            what = attack if unit is None else f"{attack}, per {unit}"
            ax.set_title(f"ROC, attack: {what} (log-log)", fontsize=10)
            ax.legend(fontsize=8, loc="lower right", framealpha=0.9)
            fig.tight_layout()
            return _to_data_uri(fig)

        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        n = len(panels)
        cols = max(1, min(columns, n))
        rows = math.ceil(n / cols)
        legend: dict[str, Any] = {}
        fig = Figure(figsize=(ROC_PANEL[0] * cols + 0.4, ROC_PANEL[1] * rows + 0.9), dpi=DPI)
        FigureCanvasAgg(fig)
        for i, (name, curves) in enumerate(panels):
            r, c = divmod(i, cols)
            ax = fig.add_subplot(rows, cols, i + 1)
            violated = _draw_roc_panel(ax, results, curves, floor, auc_labels=False)
            title = f"{name}: DP bound violated" if violated else name
            ax.set_title(title, fontsize=9, color="#b00020" if violated else "black")
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("TPR", fontsize=8)
            else:
                ax.tick_params(labelleft=False)
            if i + cols >= n:  # nothing below this panel
                ax.set_xlabel("FPR", fontsize=8)
            else:
                ax.tick_params(labelbottom=False)
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        # Models first, in the report's order, then chance, DP bounds and the unresolvable band.
        keys = sorted(legend, key=lambda k: (0 if k in results.models else 1, list(legend).index(k)))
        ncol = min(len(keys), 2 * cols)
        fig.legend(
            [legend[k] for k in keys],
            keys,
            loc="upper center",
            ncol=ncol,
            fontsize=8,
            frameon=False,
        )
        legend_in = 0.22 * math.ceil(len(keys) / ncol) + 0.1
        height = fig.get_size_inches()[1]
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - legend_in / height), h_pad=1.0, w_pad=0.6)
        return _to_data_uri(fig)
