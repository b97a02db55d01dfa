"""Tests for the HTML eval/compare reports and the text before/after table (eval/report.py, eval/plots.py)."""

from __future__ import annotations

import base64
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.eval import plots
from domaintune.eval.report import (before_after_table, compare_rows, describe_forgetting, fmt_number, fmt_p,
                                    render_compare_report, render_eval_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "source", "wbr"}
SCRIPT = "<script>alert('x')</script>"
VERDICT = "B better on exact_match: +23.4 points, 95% CI [17.1, 29.8], p < 0.001"


class Page(HTMLParser):
    """Parses a page, checks tags nest properly, and keeps what the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text_parts: list[str] = []
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)


def _full_report() -> dict:
    return {
        "model": {"name": "SmolLM2 <tuned>", "adapter": "runs/demo/adapter", "template": "auto"},
        "data": {"path": "test.jsonl", "sha256": "ab12" * 16, "n": 12},
        "metrics": {"exact_match": 41.2, "accuracy": 43.5, "macro_f1": 0.387, "perplexity": 5.31,
                    "my_custom_metric": 0.777, "f1": {"micro": 0.61}},
        "latency": {"ms_per_token_p50": 18.5, "ms_per_token_p95": 27.25, "ttft_p50_ms": 40.0, "s_per_200_tokens": 3.7},
        "forgetting": {"general_kl": 0.031, "base_ppl": 12.1, "tuned_ppl": 12.6},
        "leak": {"verbatim": 2, "pii": 1, "examples": ["leaked <b>span</b>", {"row": 3}]},
        "labels": {"per_label": {"I00-I99": {"precision": 0.8, "recall": 0.7, "f1": 0.75, "support": 6},
                                 "腫瘤 C00-D49": {"precision": 0.5, "recall": 0.6, "f1": 0.55, "support": 6}},
                   "confusion": {"labels": ["I00-I99", "腫瘤 C00-D49"], "matrix": [[4, 2], [3, 3]]}},
        "few_shot": 3,
    }


def _predictions(n: int = 20) -> list[dict]:
    return [{"prompt": f"question {i:02d} {SCRIPT}" if i == 7 else f"question {i:02d}",
             "reference": f"answer {i}", "prediction": f"guess {i}", "scores": {"chrf": float(i), "bleu": 50.0 - i}}
            for i in range(n)]


def _compare_result() -> dict:
    return {
        "a": {"name": "base", "metrics": {"exact_match": 2.0, "chrf": 11.0, "perplexity": 9.5}},
        "b": {"name": "tuned", "metrics": {"exact_match": 25.4, "chrf": 40.0, "perplexity": 4.25}},
        "tests": {
            "exact_match": {"a": 2.0, "b": 25.4, "diff": 23.4, "ci_low": 17.1, "ci_high": 29.8, "p_value": 2e-6,
                            "method": "mcnemar", "verdict": VERDICT},
            "chrf": {"a": 11.0, "b": 40.0, "diff": 29.0, "ci_low": -2.0, "ci_high": 50.0, "p_value": 0.064,
                     "method": "bootstrap", "verdict": "no significant difference on chrf"},
        },
        "examples": [
            {"prompt": "p-both-right", "reference": "r", "a": "r", "b": "r", "a_correct": True, "b_correct": True},
            {"prompt": "p-b-wins " + SCRIPT, "reference": "r", "a": "x", "b": "r",
             "a_correct": False, "b_correct": True},
            {"prompt": "p-a-wins", "reference": "r", "a": "r", "b": "y", "a_correct": True, "b_correct": False},
        ],
    }


@pytest.fixture(scope="module")
def eval_page(tmp_path_factory) -> tuple[str, Page]:
    out = render_eval_report(_full_report(), _predictions(), tmp_path_factory.mktemp("r") / "sub" / "report.html")
    text = out.read_text(encoding="utf-8")
    return text, Page(text)


@pytest.fixture(scope="module")
def compare_page(tmp_path_factory) -> tuple[str, Page]:
    text = render_compare_report(_compare_result(), tmp_path_factory.mktemp("c") / "compare.html").read_text("utf-8")
    return text, Page(text)


def _decoded_pngs(page: Page) -> list[bytes]:
    prefix = "data:image/png;base64,"
    assert all(src.startswith(prefix) for src in page.images)
    return [base64.b64decode(src[len(prefix):], validate=True) for src in page.images]


# ---- eval report ---------------------------------------------------------------------------------

def test_eval_report_shows_every_section(eval_page):
    _, page = eval_page
    for expected in ("41.20", "43.50", "0.387", "5.31", "SmolLM2 <tuned>", "ab12" * 16, "3-shot",
                     "ms per generated token, median", "18.50", "27.25",
                     "general ability moved by KL 0.031 nats/token; general perplexity 12.1 → 12.6 (+4%)",
                     "leaked <b>span</b>", "I00-I99", "腫瘤 C00-D49"):
        assert expected in page.text, expected


def test_unknown_and_nested_metrics_are_listed(eval_page):
    _, page = eval_page
    assert "my_custom_metric" in page.text and "0.777" in page.text
    assert "f1.micro" in page.text and "0.61" in page.text


def test_eval_report_embeds_png_data_uris_and_links_nothing(eval_page):
    text, page = eval_page
    pngs = _decoded_pngs(page)
    assert len(pngs) == 2  # F1 bar chart and confusion heatmap; no loss curve was given
    assert all(png.startswith(PNG_MAGIC) for png in pngs)
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe"} & set(page.tags)


def test_user_strings_are_escaped(eval_page):
    text, page = eval_page
    assert SCRIPT not in text
    assert "script" not in page.tags
    assert SCRIPT in page.text  # shown as text, not run
    assert "&lt;tuned&gt;" in text and "&lt;b&gt;span&lt;/b&gt;" in text


def test_examples_are_worst_best_and_random_in_details(eval_page):
    text, page = eval_page
    # chrf ranks before bleu; chrf is i, so 00-04 are the worst and 19-15 the best.
    worst, rest = text.split("<h3>worst</h3>")[1].split("<h3>best</h3>")
    best, random_part = rest.split("<h3>random</h3>")
    assert [f"question {i:02d}" in worst for i in range(20)] == [i < 5 for i in range(20)]
    assert [f"question {i:02d}" in best for i in range(20)] == [i >= 15 for i in range(20)]
    assert random_part.count("<details>") == 5
    assert "ranked by chrf" in page.text


def test_missing_sections_render_a_valid_page(tmp_path):
    for report in ({}, {"model": None, "metrics": None, "labels": None, "forgetting": None, "leak": None}):
        text = render_eval_report(report, [], tmp_path / "r.html").read_text("utf-8")
        page = Page(text)
        assert page.images == []
        assert "Metrics" not in page.text and "Forgetting" not in page.text and "zero-shot" in page.text


def test_examples_without_scores_are_sampled(tmp_path):
    rows = [{"prompt": f"q{i}", "reference": "r", "prediction": "p"} for i in range(12)]
    text = render_eval_report({}, rows, tmp_path / "r.html").read_text("utf-8")
    assert "unscored" in text and text.count("<details>") == 5


def test_loss_curve_png_is_embedded_byte_for_byte(tmp_path):
    from matplotlib.figure import Figure

    loss_png = tmp_path / "loss.png"
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([3, 2, 1])
    fig.savefig(loss_png)
    page = Page(render_eval_report({}, [], tmp_path / "r.html", loss_curve=loss_png).read_text("utf-8"))
    assert _decoded_pngs(page) == [loss_png.read_bytes()]


def test_missing_loss_curve_gets_a_note(tmp_path):
    page = Page(render_eval_report({}, [], tmp_path / "r.html", loss_curve=tmp_path / "nope.png").read_text("utf-8"))
    assert page.images == [] and "no loss curve at" in page.text


def test_clean_leak_check_is_not_a_warning(tmp_path):
    text = render_eval_report({"leak": {"verbatim": 0, "pii": 0}}, [], tmp_path / "r.html").read_text("utf-8")
    assert 'class="box ok"' in text and 'class="box warn"' not in text


# ---- compare report ------------------------------------------------------------------------------

def test_compare_report_has_verdicts_values_and_chart(compare_page):
    text, page = compare_page
    assert VERDICT in page.text and "no significant difference on chrf" in page.text
    assert "p &lt; 0.001" in text
    for value in ("25.40", "+23.40", "[17.10, 29.80]", "<0.001", "0.064", "mcnemar", "9.50", "4.25"):
        assert value in page.text, value
    pngs = _decoded_pngs(page)
    assert len(pngs) == 1 and pngs[0].startswith(PNG_MAGIC)
    assert "http://" not in text and "https://" not in text


def test_compare_report_shows_only_disagreements(compare_page):
    text, page = compare_page
    assert "p-b-wins" in page.text and "p-a-wins" in page.text and "p-both-right" not in page.text
    assert "2 of 3 examples differ: tuned right and base wrong on 1, the reverse on 1" in page.text
    assert SCRIPT not in text and "script" not in page.tags


def test_compare_report_tolerates_a_bare_result(tmp_path):
    page = Page(render_compare_report({}, tmp_path / "c.html").read_text("utf-8"))
    assert "A vs B" in page.text and page.images == []


# ---- text helpers --------------------------------------------------------------------------------

def test_before_after_table_aligns_columns_and_fills_diff():
    rows = compare_rows(_compare_result())
    table = before_after_table(rows, a_name="base", b_name="tuned")
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "base", "tuned", "diff", "95%", "CI", "p"]
    assert [line.split()[0] for line in lines[1:]] == ["exact_match", "chrf", "perplexity"]
    # Right-aligned numeric columns: each row's B value ends where the header "tuned" ends.
    end = lines[0].index("tuned") + len("tuned")
    assert [line[:end].endswith(v) for line, v in zip(lines[1:], ("25.40", "40.00", "4.25"))] == [True] * 3
    assert "-5.25" in lines[3]  # untested metric: diff computed as b - a
    assert "[-2.00, 50.00]" in lines[2] and "0.064" in lines[2]


def test_before_after_table_missing_values_show_dashes():
    line = before_after_table([{"metric": "bleu", "a": None, "b": 3.0}]).splitlines()[1]
    assert line.split() == ["bleu", "–", "3.00", "–", "–"]


def test_describe_forgetting_sentences():
    assert describe_forgetting({"general_kl": 0.031, "base_ppl": 12.1, "tuned_ppl": 12.6}) == (
        "general ability moved by KL 0.031 nats/token; general perplexity 12.1 → 12.6 (+4%)")
    assert describe_forgetting({"base_ppl": 10.0, "tuned_ppl": 9.96}) == "general perplexity 10 → 9.96 (-0.4%)"
    assert describe_forgetting({"mean_kl": 0.5}) == "general ability moved by KL 0.5 nats/token"
    assert describe_forgetting({"general_kl": None}) == "no forgetting figures were recorded"


def test_forgetting_box_takes_general_kl_output_without_per_example_list(tmp_path):
    forgetting = {"mean_kl": 0.0421, "per_example_kl": [0.123456, 0.0789], "tokens": 900, "base_ppl": 8.0,
                  "tuned_ppl": 10.0}
    page = Page(render_eval_report({"forgetting": forgetting}, [], tmp_path / "r.html").read_text("utf-8"))
    assert "general ability moved by KL 0.0421 nats/token; general perplexity 8 → 10 (+25%)" in page.text
    assert "900" in page.text and "0.123456" not in page.text and "per_example_kl" not in page.text


def test_fmt_p():
    assert [fmt_p(p) for p in (0.0004, 0.001, 0.0456, None, float("nan"))] == ["<0.001", "0.001", "0.046", "–", "–"]


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12))
def test_fmt_number_round_trips_within_display_precision(x):
    shown = fmt_number(x)
    assert math.isclose(float(shown.replace(",", "")), x, rel_tol=5e-3, abs_tol=5e-3)
    if x != 0:
        assert fmt_number(x, signed=True)[0] == ("+" if x > 0 else "-")


def test_confusion_plot_handles_many_labels_and_cjk():
    labels = [f"类别 {i} with a rather long descriptive name" for i in range(30)]
    matrix = [[(i * j) % 5 for j in range(30)] for i in range(30)]
    uri = plots.confusion_png(labels, matrix)
    assert base64.b64decode(uri.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_png_metadata_carries_no_link():
    from matplotlib.figure import Figure

    png = base64.b64decode(plots.png_data_uri(Figure(figsize=(1, 1))).split(",", 1)[1])
    assert b"http" not in png and b"matplotlib.org" not in png


def test_written_file_is_utf8_with_charset(tmp_path: Path):
    out = render_eval_report({"model": {"name": "模型"}}, [], tmp_path / "deep" / "r.html")
    assert out == tmp_path / "deep" / "r.html"
    text = out.read_bytes().decode("utf-8")
    assert '<meta charset="utf-8">' in text and "模型" in text
