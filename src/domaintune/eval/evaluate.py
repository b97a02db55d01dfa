"""`domaintune eval`: one model (or base + adapter) on held-out data, every figure with its evidence.

    result = evaluate(model, tok, tpl, test_records, EvalSettings(label_field="label"),
                      pool=train_records, general=general_records, training_texts=texts)
    write_eval(result, Path("runs/eval"))   # report.json, predictions.jsonl, report.html

Steps, each a function of its own module: generate the last assistant turn of every record
(`generate.py`, optionally after k few-shot examples), score the generations (`metrics.py`,
per example, so `compare` can pair them), perplexity on the reference answers
(`perplexity.py`), single-request latency (`generate.measure_latency`), forgetting on general
conversations against the base (`forgetting.py`: the base is the adapter switched off), and
memorization signals (`leak.py`). A LoRA/IA3 adapter is merged into its base for generation,
perplexity and latency (`methods.inference.merged_adapter`: the same outputs, faster decoding)
and unmerged again for forgetting.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from domaintune.errors import UserError
from domaintune.files import atomic_path, write_json_atomic
from domaintune.eval import metrics as m
from domaintune.eval.calibration import calibration
from domaintune.progress import bar

REPORT_FILE, PREDICTIONS_FILE, HTML_FILE = "report.json", "predictions.jsonl", "report.html"


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate (flat; `api.evaluate` fills it from the recipe's eval section).

    Attributes:
        max_new_tokens, temperature, top_p, seed: generation (temperature 0: greedy).
        batch_size: prompts generated together.
        few_shot: training examples put before each prompt (0: zero-shot).
        few_shot_by: "random" (seeded) or "similar" (lexical similarity).
        label_field: metadata key holding each record's label; turns on label accuracy/F1, with
            labels read from the generations by `metrics.extract_label`.
        text_metrics: BLEU, chrF and ROUGE on the generations.
        json_fields: field-level F1 for JSON answers.
        perplexity: perplexity on the reference answers. It reads each record without few-shot
            examples, so a few-shot pass of a model already scored zero-shot can skip it.
        max_len: tokens per record for perplexity and forgetting.
        latency_prompts, latency_tokens: single-request latency runs (0 prompts: skipped).
        choices: a closed answer set to decode inside (`models.choice`), None: free decoding.
        prior_weight: with `choices`, the share of each record's `metadata.neighbour_vote` (answer ->
            weight, `models.prior`) mixed into decoding; 0: the model alone.
    """

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    few_shot: int = 0
    few_shot_by: str = "random"
    label_field: str | None = None
    text_metrics: bool = True
    json_fields: bool = False
    perplexity: bool = True
    max_len: int = 1024
    latency_prompts: int = 3
    latency_tokens: int = 200
    choices: tuple[str, ...] | None = None
    prior_weight: float = 0.0


VOTE_KEY = "neighbour_vote"  # a record's neighbour prior, in its metadata (api/prior.py puts it there)


@dataclass
class EvalResult:
    """`report` is report.json; `predictions` one dict per example (with per-example `scores`)."""

    report: dict[str, Any]
    predictions: list[dict[str, Any]] = field(default_factory=list)


def evaluate(model: Any, tokenizer: Any, template: Any, records: Sequence[Mapping[str, Any]],
             settings: EvalSettings, *, pool: Sequence[Mapping[str, Any]] | None = None,
             general: Sequence[Mapping[str, Any]] | None = None, training_texts: Sequence[str] | None = None,
             describe: Mapping[str, Any] | None = None, step: Callable[[str], None] | None = None,
             progress: bool = False) -> EvalResult:
    """Evaluate `model` on `records` and return the report and per-example predictions.

    Args:
        model: a causal LM, or a peft model (then forgetting compares it with its adapter off).
        tokenizer, template: the model's tokenizer and the chat template it was trained with.
        records: prepared chat records with a final assistant answer (the reference).
        settings: `EvalSettings`.
        pool: training records for few-shot examples (needed when `settings.few_shot` > 0).
        general: general reference conversations for the forgetting figures (None: skipped).
        training_texts: the training answers, for the verbatim-memorization check (None: skipped).
        describe: what is evaluated (model, adapter, data path and hash), copied into the report.
        step: called with the name of each step as it starts (progress display).
        progress: progress bars with ETA for generation and perplexity (on stderr).

    Returns:
        An `EvalResult`.

    Raises:
        UserError: no records, few-shot without a pool, or records that are not chat records.
    """
    if not records:
        raise UserError("the evaluation data is empty", hint="point --data at a prepared test.jsonl")
    step = step or (lambda _name: None)
    from domaintune.eval.perplexity import perplexity
    from domaintune.methods.inference import merged_adapter

    with merged_adapter(model):  # LoRA/IA3 merged: the same outputs, decoding about twice as fast
        step("generate")
        with bar("generate", len(records), progress) as advance:
            rows = _generate(model, tokenizer, template, records, settings, pool, advance)
        metrics, per_example, labels = _score(rows, records, settings)
        if settings.perplexity:
            step("perplexity")
            with bar("perplexity", len(records), progress) as advance:
                ppl = perplexity(model, tokenizer, template, records, max_len=settings.max_len, progress=advance)
            metrics["perplexity"] = ppl["ppl"]
            per_example["nll"] = ppl["per_example_nll"]
        step("latency")
        latency = _latency(model, tokenizer, template, records, settings)
    report = {"model": dict(describe or {}), "n": len(records), "few_shot": settings.few_shot or None,
              "settings": asdict(settings), "metrics": metrics, "labels": labels, "latency": latency,
              "calibration": _calibration(rows, per_example)}
    step("forgetting")
    report["forgetting"] = _forgetting(model, tokenizer, template, general, settings)
    report["leak"] = _leak([r["prediction"] for r in rows], training_texts)
    for i, row in enumerate(rows):
        row["scores"] = {name: scores[i] for name, scores in per_example.items()}
    return EvalResult(_json_safe(report), _json_safe(rows))


def _generate(model: Any, tokenizer: Any, template: Any, records: Sequence[Mapping[str, Any]],
              settings: EvalSettings, pool: Sequence[Mapping[str, Any]] | None,
              progress: Callable[[int], None]) -> list[dict[str, Any]]:
    from domaintune.eval.generate import generate_answers
    from domaintune.models.choice import ChoiceTrie
    from domaintune.models.decode import SamplingParams

    trie = ChoiceTrie.build(settings.choices, template, tokenizer) if settings.choices else None
    params = SamplingParams(max_new_tokens=max(settings.max_new_tokens, trie.depth if trie else 0),
                            temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed, choices=trie)
    if trie is not None and settings.prior_weight > 0:
        params = [replace(params, prior=trie.prior_vector((r.get("metadata") or {}).get(VOTE_KEY) or {}),
                          prior_weight=settings.prior_weight) for r in records]
    return generate_answers(model, tokenizer, template, records, params, batch_size=settings.batch_size,
                            few_shot=_few_shot(settings, pool), progress=progress)


def _few_shot(settings: EvalSettings, pool: Sequence[Mapping[str, Any]] | None):
    if not settings.few_shot:
        return None
    if not pool:
        raise UserError("few-shot evaluation needs training examples to draw from",
                        hint="pass the prepared train.jsonl (eval.few_shot_pool) or set eval.few_shot: 0")
    from domaintune.eval.fewshot import build_pool, few_shot_messages

    return partial(few_shot_messages, pool=build_pool(pool), k=settings.few_shot, seed=settings.seed,
                   by=settings.few_shot_by)


def _score(rows: list[dict[str, Any]], records: Sequence[Mapping[str, Any]],
           settings: EvalSettings) -> tuple[dict[str, Any], dict[str, list], dict[str, Any] | None]:
    """Corpus metrics, per-example scores by metric, and the label section (or None)."""
    preds, refs = [r["prediction"] for r in rows], [r["reference"] for r in rows]
    results = [m.exact_match(preds, refs)]
    if settings.text_metrics:
        results += [m.bleu(preds, refs), m.chrf(preds, refs), *m.rouge(preds, refs).values()]
    metrics = {r.name: r.value for r in results}
    per_example = {r.name: r.per_example for r in results}
    labels = None
    if settings.label_field:
        labels = _label_section(rows, records, settings.label_field)
        metrics.update(accuracy=labels["accuracy"], macro_f1=labels["macro"]["f1"], micro_f1=labels["micro"]["f1"])
        per_example["accuracy"] = labels.pop("per_example")
    if settings.json_fields:
        fields = m.json_field_metrics(preds, refs)
        metrics["json_field_f1"] = fields["micro"]["f1"] if "micro" in fields else fields.get("f1")
    return metrics, per_example, labels


def _calibration(rows: list[dict[str, Any]], per_example: dict[str, list]) -> dict[str, Any] | None:
    """Confidence vs accuracy when every answer was decoded inside a closed set (else None)."""
    confidences = [r.get("confidence") for r in rows]
    if not confidences or any(c is None for c in confidences):
        return None
    correct = per_example["accuracy"] if "accuracy" in per_example else per_example["exact_match"]
    return calibration(confidences, [score > 0 for score in correct])


def _label_section(rows: list[dict[str, Any]], records: Sequence[Mapping[str, Any]], key: str) -> dict[str, Any]:
    gold = []
    for i, record in enumerate(records):
        value = (record.get("metadata") or {}).get(key)
        if value is None:
            raise UserError(f"evaluation record {i + 1} has no metadata.{key}",
                            hint=f"label every test record, or drop eval.label_field ({key})")
        gold.append(str(value))
    names = sorted(set(gold))
    predicted = [m.extract_label(r["prediction"], names) for r in rows]
    for row, label in zip(rows, predicted):
        row["predicted_label"], row["label"] = label, row["metadata"].get(key)
    return m.label_metrics(predicted, gold, names)


def _latency(model: Any, tokenizer: Any, template: Any, records: Sequence[Mapping[str, Any]],
             settings: EvalSettings) -> dict[str, float] | None:
    if settings.latency_prompts <= 0:
        return None
    from domaintune.eval.generate import measure_latency, split_last_turn

    prompts = [split_last_turn(r["messages"])[0] for r in records[:settings.latency_prompts]]
    return measure_latency(model, tokenizer, template, prompts, n_tokens=settings.latency_tokens)


def _forgetting(model: Any, tokenizer: Any, template: Any, general: Sequence[Mapping[str, Any]] | None,
                settings: EvalSettings) -> dict[str, Any] | None:
    """KL from the base on general conversations; only for an adapter, whose base is one switch away."""
    if not general or not hasattr(model, "disable_adapter"):
        return None
    from domaintune.eval.forgetting import general_kl

    out = general_kl(None, model, tokenizer, template, general, max_len=settings.max_len)
    return {"general_kl": out["mean_kl"], "base_ppl": out["base_ppl"], "tuned_ppl": out["tuned_ppl"],
            "tokens": out["tokens"], "n": len(general)}


def _leak(predictions: list[str], training_texts: Sequence[str] | None) -> dict[str, Any]:
    from domaintune.eval.leak import pii_in_outputs, verbatim_overlap

    out: dict[str, Any] = {"pii": pii_in_outputs(predictions)}
    if training_texts:
        out["verbatim"] = verbatim_overlap(predictions, training_texts)
    return out


def _json_safe(value: Any) -> Any:
    """NaN/inf become None, so report.json is strict JSON that browsers and jq read."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_eval(result: EvalResult, out_dir: Path, *, loss_curve: Path | None = None) -> dict[str, Path]:
    """Write report.json, predictions.jsonl and the self-contained report.html into `out_dir`."""
    from domaintune.eval.report import render_eval_report

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"report": out_dir / REPORT_FILE, "predictions": out_dir / PREDICTIONS_FILE, "html": out_dir / HTML_FILE}
    # Each file is written whole (files.py); predictions first, the report that describes them after.
    with atomic_path(paths["predictions"]) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in result.predictions:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_json_atomic(paths["report"], result.report, indent=2)
    render_eval_report(result.report, result.predictions, paths["html"], loss_curve=loss_curve)
    return paths


def read_eval(out_dir: Path) -> EvalResult:
    """Read back what `write_eval` wrote (compare pairs two such folders without re-generating)."""
    out_dir = Path(out_dir)
    if not (out_dir / REPORT_FILE).is_file() or not (out_dir / PREDICTIONS_FILE).is_file():
        raise UserError("not an evaluation folder (no report.json / predictions.jsonl)", file=str(out_dir),
                        hint="run `domaintune eval ... -o DIR` first, or pass a model to compare")
    report = json.loads((out_dir / REPORT_FILE).read_text(encoding="utf-8"))
    # Split on "\n" only: splitlines would also cut at U+2028/U+2029/\x85 left raw inside strings.
    lines = (out_dir / PREDICTIONS_FILE).read_text(encoding="utf-8").split("\n")
    return EvalResult(report, [json.loads(line) for line in lines if line.strip()])
