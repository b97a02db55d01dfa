"""`api.evaluate`, `api.compare` and human review: held-out evidence for a tuned model.

    result, paths = api.evaluate(recipe, adapter="runs/demo")          # report.html in recipe.eval.output_dir
    out = api.compare(recipe, "runs/eval-base", "runs/eval-tuned", output_dir="runs/compare")

`compare` takes two evaluation folders (the cheap way: nothing is generated again) or two models:
"base" (the recipe's model), a run folder, or an adapter folder, each evaluated first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from domaintune.api.data import resolve_path
from domaintune.config import Recipe
from domaintune.errors import UserError
from domaintune.files import write_json_atomic
from domaintune.methods.artifact import PLOT_FILE

COMPARE_JSON, COMPARE_HTML = "compare.json", "compare.html"


@dataclass
class Loaded:
    """A model ready to evaluate and what it is (for the report header)."""

    model: Any
    tokenizer: Any
    template: Any
    describe: dict[str, Any]
    loss_curve: Path | None = None
    artifact: Any = None


def load_for_eval(recipe: Recipe, adapter: str | None = None, model: str | None = None) -> Loaded:
    """The recipe's base model, or base + a trained adapter (or a fully trained model).

    Args:
        recipe: its `model` section gives the base and template unless the run says otherwise.
        adapter: a run folder or an adapter/model folder written by `domaintune train`.
        model: an explicit base model spec; wins over the run's recorded base.
    """
    from domaintune.methods.artifact import find_artifact, load_artifact
    from domaintune.models.load import load_model, load_tokenizer
    from domaintune.models.templates import get_template

    art = find_artifact(adapter) if adapter else None
    base = model or (art.base if art and art.base else recipe.model.name)
    template_name = art.template if art and art.template and recipe.model.template == "auto" else recipe.model.template
    trust = recipe.model.trust_remote_code
    tokenizer = load_tokenizer(base, trust_remote_code=trust)
    net = load_artifact(art, base=base, trust_remote_code=trust) if art else load_model(base, trust_remote_code=trust)
    describe = {"name": base, "adapter": str(art.folder) if art else None, "method": art.method if art else None,
                "template": template_name}
    curve = art.run_dir / PLOT_FILE if art and art.run_dir and (art.run_dir / PLOT_FILE).is_file() else None
    return Loaded(net.eval(), tokenizer, get_template(template_name, tokenizer), describe, curve, art)


def evaluate(recipe: Recipe, adapter: str | None = None, model: str | None = None, *,
             output_dir: str | None = None, loaded: Loaded | None = None,
             step: Callable[[str], None] | None = None, progress: bool = True):
    """Evaluate a model on the recipe's eval data and write report.json, predictions.jsonl, report.html.

    Args:
        recipe: the `eval` section says what to measure; `model` what to load.
        adapter, model: see `load_for_eval`.
        output_dir: overrides `eval.output_dir`.
        loaded: an already loaded model (the demo evaluates one base several ways).
        step: progress callback, called with each step's name.
        progress: bars with ETA while generating and scoring.

    Returns:
        `(EvalResult, {"report", "predictions", "html": Path})`.

    Example:
        >>> result, paths = evaluate(load_recipe("recipe.yaml"), adapter="runs/demo")  # doctest: +SKIP
        >>> result.report["metrics"]["accuracy"]                                      # doctest: +SKIP
        71.4
    """
    from domaintune.api.retrieval import augment
    from domaintune.eval.evaluate import EvalSettings, write_eval
    from domaintune.eval.evaluate import evaluate as run_eval
    from domaintune.eval.retrieval import retrieval_report
    from domaintune.train.data import load_split

    cfg = recipe.eval
    data = load_split(resolve_path(cfg.data))
    records = list(data[:cfg.max_examples] if cfg.max_examples else data)
    loaded = loaded or load_for_eval(recipe, adapter, model)
    train_file = Path(resolve_path(cfg.few_shot_pool)) if cfg.few_shot_pool else data.path.parent / "train.jsonl"
    pool = load_split(train_file) if train_file.is_file() else None
    settings = EvalSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, batch_size=cfg.batch_size, few_shot=cfg.few_shot,
                            few_shot_by=cfg.few_shot_by, label_field=cfg.label_field, text_metrics=cfg.text_metrics,
                            json_fields=cfg.json_fields, perplexity=cfg.perplexity, max_len=cfg.max_len,
                            latency_prompts=cfg.latency_prompts, latency_tokens=cfg.latency_tokens,
                            choices=_choices(cfg, loaded, pool))
    kb, k = _eval_kb(recipe, loaded, pool)
    raw = records
    if kb is not None:  # the prompts training built: the same entries, the same rendering
        records = augment(records, kb, loaded.tokenizer, k, _budget(recipe, loaded), template=loaded.template)
    records, settings = _with_prior(cfg, loaded, records, settings)
    describe = {**loaded.describe, "data": str(data.path), "data_sha256": data.sha256}
    result = run_eval(loaded.model, loaded.tokenizer, loaded.template, records, settings,
                      pool=pool if cfg.few_shot else None, general=_general(cfg), describe=describe,
                      training_texts=_answers(pool) if cfg.leak_check and pool else None, step=step,
                      progress=progress)
    if cfg.baselines and pool and records:
        result.report["baselines"] = _baselines(result, pool, data.path.parent, raw, settings.choices)
    if kb is not None:
        metric = "accuracy" if settings.choices else "chrf"
        scores = [row["scores"].get("exact_match" if settings.choices else "chrf") for row in result.predictions]
        if all(s is not None for s in scores):  # chrF is there unless eval.text_metrics is off
            result.report["retrieval"] = retrieval_report(records, kb, scores, metric=metric, k=k)
    paths = write_eval(result, Path(output_dir or cfg.output_dir), loss_curve=loaded.loss_curve)
    return result, paths


def _eval_kb(recipe: Recipe, loaded: Loaded, pool: Any) -> tuple[Any, int]:
    """The knowledge base to evaluate with: the run's (checked against its hash), or for a base
    model the recipe's (`retrieval.kb: train` builds it from the few-shot pool), else None."""
    from domaintune.api.retrieval import run_kb
    from domaintune.config.retrieval import TRAIN_KB

    record = loaded.artifact.retrieval if loaded.artifact is not None else None
    if record is not None:
        return run_kb(record), int(record["k"])
    spec = recipe.retrieval.kb
    if loaded.artifact is not None or not spec:
        return None, 0
    if spec == TRAIN_KB:
        if not pool:
            return None, 0
        from domaintune.data.kb import KnowledgeBase, entries_from_records

        return KnowledgeBase.build(entries_from_records(pool)), recipe.retrieval.k
    from domaintune.data.kb import KnowledgeBase

    return KnowledgeBase.load(Path(resolve_path(spec))), recipe.retrieval.k


def _with_prior(cfg: Any, loaded: Loaded, records: list, settings: Any) -> tuple[list, Any]:
    """Records carrying their neighbour vote, and settings with the run's prior weight (`api/prior.py`):
    unchanged without a closed set, without a fitted prior, or with `eval.neighbour_prior: false`."""
    from dataclasses import replace

    from domaintune.api.prior import run_votes
    from domaintune.eval.evaluate import VOTE_KEY

    record = loaded.artifact.prior if loaded.artifact is not None else None
    if not (cfg.neighbour_prior and settings.choices and record):
        return records, settings
    votes = run_votes(record, records)
    if votes is None:
        return records, settings
    records = [{**r, "metadata": {**(r.get("metadata") or {}), VOTE_KEY: v}} for r, v in zip(records, votes)]
    return records, replace(settings, prior_weight=float(record["weight"]))


def _budget(recipe: Recipe, loaded: Loaded) -> int:
    record = loaded.artifact.retrieval if loaded.artifact is not None else None
    return int(record["max_tokens"]) if record is not None else recipe.retrieval.max_tokens


def _baselines(result: Any, pool: Any, folder: Path, records: list, choices: Any) -> dict[str, Any]:
    """Classic baselines on the evaluated records, beside the model (C picked on val.jsonl)."""
    from domaintune.eval.baselines import against_model, classic_baselines
    from domaintune.train.data import load_split

    val_file = folder / "val.jsonl"
    val = load_split(val_file) if val_file.is_file() else []
    fitted = classic_baselines(pool, records, val=val, closed=choices is not None)
    metric = "accuracy" if choices is not None else "chrf"
    scores = [row["scores"].get("exact_match" if metric == "accuracy" else "chrf") for row in result.predictions]
    if any(s is None for s in scores):
        return {}
    return against_model(scores, fitted, metric)


def _choices(cfg: Any, loaded: Loaded, pool: Any) -> tuple[str, ...] | None:
    """The closed answer set to decode inside: the run's recorded one, or for a base model its pool's."""
    if cfg.closed_set == "off":
        return None
    if loaded.artifact is not None:
        answers = loaded.artifact.labels
    else:
        from domaintune.data.answers import closed_answer_set

        answers = closed_answer_set(pool) if pool else None
    return tuple(answers) if answers else None


def _general(cfg: Any) -> list[dict] | None:
    if not cfg.general:
        return None
    from domaintune.train.data import load_split

    return list(load_split(resolve_path(cfg.general))[:cfg.general_max])


def _answers(records: Any) -> list[str]:
    return [m["content"] for r in records for m in r.get("messages", ()) if m.get("role") == "assistant"]


def compare(recipe: Recipe, a: str, b: str, *, output_dir: str = "runs/compare",
            names: tuple[str, str] | None = None) -> dict[str, Any]:
    """Paired tests of two evaluations (folders) or two models on the recipe's eval data.

    Args:
        recipe: eval settings (for models that must be evaluated first) and compare settings.
        a, b: an evaluation folder (holds report.json), "base", or a run/adapter folder.
        output_dir: where compare.json and compare.html go (and the evaluations of models).
        names: display names (default: the folder names).

    Returns:
        The comparison dict (`eval.compare.compare_results`) plus `"html"`: the report path.
    """
    from domaintune.eval.compare import compare_results
    from domaintune.eval.report import render_compare_report

    out = Path(output_dir)
    sides = [_evaluation(recipe, spec, out / f"eval-{tag}") for spec, tag in ((a, "a"), (b, "b"))]
    names = names or (_name(a), _name(b))
    result = compare_results(*sides, names, metrics=recipe.compare.metrics, n_resamples=recipe.compare.bootstrap)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / COMPARE_JSON, result, indent=2)
    return {**result, "html": render_compare_report(result, out / COMPARE_HTML)}


def _evaluation(recipe: Recipe, spec: str, out: Path):
    from domaintune.eval.evaluate import REPORT_FILE, read_eval

    if (Path(spec) / REPORT_FILE).is_file():
        return read_eval(Path(spec))
    if spec != "base" and not Path(spec).is_dir():
        raise UserError(f"'{spec}' is neither an evaluation folder nor a run folder",
                        hint="pass folders written by `domaintune eval -o` or `domaintune train`, or 'base'")
    return evaluate(recipe, adapter=None if spec == "base" else spec, output_dir=str(out))[0]


def _name(spec: str) -> str:
    return spec if spec == "base" else Path(spec).resolve().name


def review_export(a: str, b: str, output_dir: str, *, seed: int = 0, limit: int | None = None) -> dict[str, Path]:
    """A blinded review sheet (CSV + HTML) of two evaluations' answers to the same prompts."""
    from domaintune.eval.compare import check_paired
    from domaintune.eval.evaluate import read_eval
    from domaintune.eval.review import export_review

    left, right = read_eval(Path(a)), read_eval(Path(b))
    check_paired(left, right)
    rows = [{"id": str(i + 1), "prompt": x["prompt"], "reference": x["reference"], "output_a": x["prediction"],
             "output_b": y["prediction"]} for i, (x, y) in enumerate(zip(left.predictions, right.predictions))]
    return export_review(rows[:limit] if limit else rows, output_dir, seed=seed, names=(_name(a), _name(b)))


def review_import(sheets: list[str], key: str) -> dict[str, Any]:
    """Scores read back from filled sheets: means, A/B preference with a sign test, and kappa."""
    from domaintune.eval.review import import_review

    return import_review(sheets, key)


def metrics_table(rows: Any, a_name: str = "A", b_name: str = "B") -> str:
    """The terminal table of metrics before (A) and after (B) (`eval.report.before_after_table`)."""
    from domaintune.eval.report import before_after_table

    return before_after_table(rows, a_name=a_name, b_name=b_name)


def compare_table(result: Any, a_name: str, b_name: str) -> str:
    """The terminal table of a compare result: tested metrics first, with intervals and p-values."""
    from domaintune.eval.report import before_after_table, compare_rows

    return before_after_table(compare_rows(result), a_name=a_name, b_name=b_name)


def forgetting_summary(forgetting: Any) -> str:
    """One paragraph on what the tuned model forgot (`eval.report.describe_forgetting`)."""
    from domaintune.eval.report import describe_forgetting

    return describe_forgetting(forgetting)
