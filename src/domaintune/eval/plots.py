"""Figures for the eval and compare reports, and the number formats their tables and plots share.

Figures come back as PNG ``data:`` URIs ready to embed in HTML.

Everything is drawn with matplotlib's object API on the Agg canvas: no pyplot, so no global
backend switch and no display needed. PNG metadata is cleared so an embedded image carries no
link to matplotlib's website.

    >>> bar = label_f1_png({"a": {"f1": 0.5}, "b": {"f1": 0.9}})
    >>> bar.startswith("data:image/png;base64,")
    True
"""

from __future__ import annotations

import base64
import functools
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

TICK_CHARS = 32  # long label names ("I00-I99: Diseases of ...") are cut so the axes stay readable
ANNOTATE_MAX = 25  # write the count in each confusion cell up to this many labels
# Fonts with CJK glyphs, used as fallbacks after DejaVu Sans when installed (Chinese label names).
CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
             "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "Arial Unicode MS")


def fmt_number(value: Any, *, signed: bool = False) -> str:
    """Format a metric value for display: about 3-4 significant digits, "–" when absent.

    Example:
        >>> fmt_number(41.2), fmt_number(0.0312), fmt_number(12345.6), fmt_number(None), fmt_number(2.5, signed=True)
        ('41.20', '0.0312', '12,346', '–', '+2.50')
    """
    if isinstance(value, bool) or not is_number(value):
        return "–" if value is None else str(value)
    sign = "+" if signed else ""
    magnitude = abs(value)
    if isinstance(value, int) or magnitude >= 1000:
        return f"{value:{sign},.0f}"
    if magnitude >= 1 or magnitude == 0:
        return f"{value:{sign}.2f}"
    return f"{value:{sign}.3g}"


def fmt_p(p: Any) -> str:
    """Format a p-value: "<0.001" below a thousandth, else three decimals; "–" when absent."""
    if not is_number(p):
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low: Any, high: Any) -> str:
    """Format a confidence interval as "[low, high]"; "" when either end is missing."""
    return f"[{fmt_number(low)}, {fmt_number(high)}]" if is_number(low) and is_number(high) else ""


def is_number(value: Any) -> bool:
    """True for a real int or float that is not NaN (bools are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # NaN != NaN


def png_data_uri(fig: Any) -> str:
    """Render a matplotlib `Figure` to a base64 PNG ``data:`` URI.

    Args:
        fig: a `matplotlib.figure.Figure`.

    Returns:
        ``"data:image/png;base64,..."``.

    Example:
        >>> from matplotlib.figure import Figure
        >>> png_data_uri(Figure(figsize=(1, 1)))[:22]
        'data:image/png;base64,'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Without a CJK font, each missing glyph warns; the boxes drawn instead are enough.
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.savefig(buffer, format="png", metadata={"Software": None}, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _with_fonts(draw: Callable[..., str]) -> Callable[..., str]:
    """Draw with an installed CJK font as fallback, so Chinese label names render."""
    @functools.wraps(draw)
    def wrapper(*args: Any, **kwargs: Any) -> str:
        from matplotlib import rc_context

        with rc_context({"font.family": ["sans-serif"], "font.sans-serif": ["DejaVu Sans", *_cjk_fonts()]}):
            return draw(*args, **kwargs)
    return wrapper


@functools.cache
def _cjk_fonts() -> tuple[str, ...]:
    from matplotlib import font_manager

    installed = {font.name for font in font_manager.fontManager.ttflist}
    return tuple(name for name in CJK_FONTS if name in installed)


def file_data_uri(data: bytes, mime: str = "image/png") -> str:
    """Wrap raw file bytes (a training run's loss.png) as a ``data:`` URI."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@_with_fonts
def label_f1_png(per_label: Mapping[str, Mapping[str, Any]]) -> str:
    """Horizontal bar chart of F1 per label, worst at the top.

    Args:
        per_label: ``{label: {"f1": value, ...}}``; F1 on a 0-1 or 0-100 scale.

    Returns:
        A PNG ``data:`` URI.
    """
    from matplotlib.figure import Figure

    items = sorted(((str(k), _number(v.get("f1"))) for k, v in per_label.items()), key=lambda kv: kv[1])
    fig = Figure(figsize=(7, max(2.0, 0.3 * len(items) + 1)), dpi=100)
    ax = fig.add_subplot()
    ax.barh([_short(k) for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.invert_yaxis()
    ax.set_xlim(0, 100 if any(v > 1 for _, v in items) else 1)
    ax.set_xlabel("F1")
    ax.set_title("F1 per label")
    return png_data_uri(fig)


@_with_fonts
def confusion_png(labels: Sequence[str], matrix: Sequence[Sequence[float]]) -> str:
    """Heatmap of a confusion matrix (rows: reference, columns: prediction).

    Args:
        labels: the label of each row and column, in order.
        matrix: counts, ``len(labels)`` rows of ``len(labels)`` values.

    Returns:
        A PNG ``data:`` URI.
    """
    from matplotlib.figure import Figure

    n = len(labels)
    size = min(14.0, max(4.0, 0.45 * n + 2))
    fig = Figure(figsize=(size, size), dpi=100)
    ax = fig.add_subplot()
    image = ax.imshow([[_number(x) for x in row] for row in matrix], cmap="Blues")
    ax.set_xticks(range(n), [_short(str(x)) for x in labels], rotation=90)
    ax.set_yticks(range(n), [_short(str(x)) for x in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    if n <= ANNOTATE_MAX:
        _annotate(ax, matrix, image.norm)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return png_data_uri(fig)


def reliability_png(bins: Sequence[Mapping[str, Any]]) -> str:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.

    Args:
        bins: `eval.calibration.calibration(...)["bins"]` (percentages, with each bin's count).

    Returns:
        A PNG ``data:`` URI.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5), dpi=100)
    ax = fig.add_subplot()
    width = 100 * (bins[0]["high"] - bins[0]["low"]) if bins else 10
    ax.bar([100 * b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           color="tab:blue", edgecolor="white", label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "o", color="tab:orange",
            label="mean confidence")
    ax.plot([0, 100], [0, 100], "--", color="grey", linewidth=1, label="perfect calibration")
    for b in bins:
        ax.annotate(str(b["n"]), (100 * b["low"] + width / 2, b["accuracy"]), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 100), ylim=(0, 105), xlabel="confidence (%)", ylabel="accuracy (%)")
    ax.legend(loc="upper left", fontsize=8)
    return png_data_uri(fig)


@_with_fonts
def compare_png(names: tuple[str, str], tests: Mapping[str, Mapping[str, Any]]) -> str:
    """A vs B per metric (left) and B - A with its confidence interval (right).

    Args:
        names: display names of A and B.
        tests: ``{metric: {"a", "b", "diff", "ci_low", "ci_high", ...}}``; missing values skip
            the bar or the whisker.

    Returns:
        A PNG ``data:`` URI.
    """
    from matplotlib.figure import Figure

    metrics = list(tests)
    fig = Figure(figsize=(11, max(2.5, 0.5 * len(metrics) + 1.2)), dpi=100)
    left, right = fig.subplots(1, 2)
    ys = list(range(len(metrics)))
    height = 0.38
    left.barh([y - height / 2 for y in ys], [_number(tests[m].get("a")) for m in metrics], height,
              label=names[0], color="tab:gray")
    left.barh([y + height / 2 for y in ys], [_number(tests[m].get("b")) for m in metrics], height,
              label=names[1], color="tab:blue")
    left.set_yticks(ys, metrics)
    left.invert_yaxis()
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    left.set_title("score")
    _diff_panel(right, metrics, tests, names)
    fig.tight_layout()
    return png_data_uri(fig)


def _diff_panel(ax: Any, metrics: list[str], tests: Mapping[str, Mapping[str, Any]],
                names: tuple[str, str]) -> None:
    ys = list(range(len(metrics)))
    diffs = [_number(tests[m].get("diff")) for m in metrics]
    low = [_number(tests[m].get("ci_low"), d) for m, d in zip(metrics, diffs)]
    high = [_number(tests[m].get("ci_high"), d) for m, d in zip(metrics, diffs)]
    # Whiskers are distances from the bar end; clamp at 0 in case a CI does not contain its estimate.
    whiskers = [[max(0.0, d - lo) for d, lo in zip(diffs, low)], [max(0.0, hi - d) for d, hi in zip(diffs, high)]]
    colors = ["tab:green" if lo > 0 else "tab:red" if hi < 0 else "tab:gray" for lo, hi in zip(low, high)]
    ax.barh(ys, diffs, color=colors, xerr=whiskers, capsize=4)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(ys, metrics)
    ax.invert_yaxis()
    ax.set_title(f"{names[1]} - {names[0]}, 95% CI (green: higher, red: lower, grey: CI spans 0)", fontsize=10)


def _annotate(ax: Any, matrix: Sequence[Sequence[float]], norm: Any) -> None:
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            number = _number(value)
            dark = norm(number) > 0.5 if norm.vmax != norm.vmin else False
            text = f"{number:g}" if number != int(number) else str(int(number))
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")


def _number(value: Any, default: float = 0.0) -> float:
    """A plottable float: None, NaN and non-numbers become `default`."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return default if math.isnan(number) else number


def _short(text: str) -> str:
    return text if len(text) <= TICK_CHARS else text[:TICK_CHARS - 1] + "…"
