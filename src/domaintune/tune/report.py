"""What a search leaves behind: trials.csv, tune.html (history, importances, the table) and best.yaml."""

from __future__ import annotations

import csv
import warnings
from html import escape
from pathlib import Path
from typing import Any

TRIALS_CSV, TUNE_HTML, BEST_YAML = "trials.csv", "tune.html", "best.yaml"


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, seconds, steps and the parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "seconds": round(seconds, 1) if seconds is not None else None,
                     "steps": t.user_attrs.get("steps"), **t.params})
    return rows


def write_trials(rows: list[dict[str, Any]], out: Path) -> Path:
    path = out / TRIALS_CSV
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_html(study: Any, rows: list[dict[str, Any]], metric: str, best: dict[str, Any] | None, out: Path) -> Path:
    """tune.html: the optimisation history, the parameter importances and the trials table."""
    from domaintune.eval.html import write_page

    sections = [f"<h1>Hyperparameter search: {escape(metric)}</h1>"]
    if best is not None:
        sections.append(f"<p>Best: trial {best['trial']}, {escape(metric)} = {best['value']:.4g}; "
                        f"its recipe is <code>{BEST_YAML}</code>.</p>")
    sections += [_figure(study, "plot_optimization_history", "optimisation history"),
                 _figure(study, "plot_param_importances", "parameter importances"), _table(rows)]
    return write_page(out / TUNE_HTML, "domaintune tune", sections)


def _figure(study: Any, name: str, title: str) -> str:
    from domaintune.eval.plots import png_data_uri

    try:
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            ax = getattr(optuna_plots, name)(study)
        fig = ax.figure
        uri = png_data_uri(fig)
        plt.close(fig)
    except (ValueError, RuntimeError) as exc:  # e.g. importances need two finished trials
        return f"<h2>{escape(title)}</h2><p class=\"muted\">not drawn: {escape(str(exc))}</p>"
    return f'<h2>{escape(title)}</h2><img alt="{escape(title)}" src="{uri}">'


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{escape(_fmt(row.get(k)))}</td>" for k in keys) + "</tr>" for row in rows)
    return f"<h2>Trials</h2><table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
