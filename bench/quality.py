"""Is the tuned model better at the task than what a user already had? Measured on several domains.

For every task of examples/quality/tasks.py (medicine, customer service, education, law, finance,
and one generation task), all in one run and side by side, with wall and CPU seconds:

* majority answer, TF-IDF + logistic regression (C chosen on validation), nearest training answer;
* the base model (embedded SmolLM2-135M-Instruct) zero-shot and 3-shot;
* domaintune with default settings (`domaintune prepare`, `train`, `eval`: nothing set but paths),
  which for a closed answer set mixes in the prior training chose on validation, and the same run
  decoding with the model alone (`eval.neighbour_prior=false`);
* domaintune + retrieval: the same, with `retrieval.kb: train` (each prompt shows its nearest
  training pairs, leave-one-out while training) and, for an equal-compute comparison, a time
  budget equal to the default run's training-loop time (its prompts are several times longer);
  beside retrieval alone (the top entry's answer);
* domaintune `tune` where the default does not beat TF-IDF + logistic regression ON VALIDATION
  (the test split is only ever scored, never used to choose).

Labelled tasks decode inside their closed answer set and are scored by accuracy (McNemar's test
against 3-shot prompting and against TF-IDF + LR); the generation task by chrF (paired bootstrap).

    make bench-data                                    # the packages the tasks read (once)
    python bench/quality.py                            # the full run (see docs/quality.md)
    python bench/quality.py --quick --tasks icd10_chapters   # CI-sized
    python bench/quality.py --tasks banking77 --tune-budget 20m
    python bench/quality.py --time-budget 4m --tune-budget 0          # what fits 90 minutes on 2 cores

Never run it beside another CPU-heavy job: the seconds it reports would be meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples" / "quality"))

import tasks as task_data  # noqa: E402  (examples/quality/tasks.py)

from domaintune import api  # noqa: E402
from domaintune.config import apply_overrides, load_recipe  # noqa: E402

FULL = {"rows": 1500, "split": (0.7, 0.1, 0.2)}
QUICK = {"rows": 240, "split": (0.6, 0.15, 0.25)}
QUICK_TRAIN = ["train.max_steps=8"]
FAST_EVAL = ["eval.perplexity=false", "eval.general=null", "eval.latency_prompts=0", "eval.baselines=false",
             "eval.leak_check=false", "eval.batch_size=64"]


class Clock:
    """Wall and CPU seconds of a block (CPU counts every thread of this process)."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def as_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall, 1), "cpu_s": round(self.cpu, 1)}


def task_recipe(name: str, folder: Path, raw: Path, labelled: bool, split: tuple[float, float, float]) -> Any:
    """The recipe a user would write: inputs, split and paths; every training setting at its default."""
    train, val, test = split
    overrides = [f"prepare.output_dir={folder / 'prepared'}", f"prepare.split.train={train}",
                 f"prepare.split.val={val}", f"prepare.split.test={test}",
                 f"train.data_dir={folder / 'prepared'}", f"train.output_dir={folder / 'default'}",
                 f"eval.data={folder / 'prepared' / 'test.jsonl'}", f"eval.output_dir={folder / 'eval'}"]
    if labelled:
        overrides += ["prepare.split.stratify_by=label", "prepare.label_field=label", "eval.label_field=label"]
    base = {"prepare": {"inputs": [{"path": str(raw), "name": name}]}}
    return load_recipe(None, overrides, base=base)


def scores(result: Any, metric: str) -> list[float]:
    return [row["scores"][metric] for row in result.predictions]


def paired_p(a: list[float], b: list[float], labelled: bool) -> float:
    from domaintune.eval import stats

    if labelled:
        return stats.mcnemar([x > 0 for x in a], [x > 0 for x in b]).p_value
    return stats.paired_bootstrap(a, b, n_resamples=5000).p_value


def evaluate(recipe: Any, folder: Path, name: str, **kwargs: Any) -> tuple[Any, dict[str, float]]:
    with Clock() as clock:
        result, _ = api.evaluate(apply_overrides(recipe, FAST_EVAL), output_dir=str(folder / name), progress=False,
                                 **kwargs)
    return result, clock.as_dict()


def run_task(name: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    from domaintune.data.answers import closed_answer_set
    from domaintune.eval.baselines import classic_baselines
    from domaintune.train.data import load_split

    domain, build, labelled = task_data.TASKS[name]
    size = QUICK if args.quick else FULL
    folder = out / name
    records = build()
    if labelled:
        records = task_data.stratified_sample(records, size["rows"])
    else:
        records = records[:size["rows"]]
    raw = task_data.write_jsonl(records, folder / "raw.jsonl")
    recipe = task_recipe(name, folder, raw, labelled, size["split"])
    if args.quick:
        recipe = apply_overrides(recipe, QUICK_TRAIN)
    elif args.time_budget:  # the one setting a user short of time gives: `--time-budget`
        recipe = apply_overrides(recipe, [f"train.time_budget={args.time_budget:.0f}"])
    api.prepare(recipe, progress=False)
    prepared = folder / "prepared"
    train, val, test = (load_split(prepared / f"{s}.jsonl") for s in ("train", "val", "test"))
    metric, extra = ("accuracy", "macro_f1") if labelled else ("chrf", "rougeL")
    row: dict[str, Any] = {"task": name, "domain": domain, "metric": metric, "extra_metric": extra, "rows": len(records),
                           "train": len(train), "val": len(val), "test": len(test), "systems": {}}
    closed = closed_answer_set(train) is not None
    row["closed_set"] = closed
    row["default_time_budget_s"] = None if args.quick else (args.time_budget or None)
    with Clock() as clock:
        fitted = classic_baselines(train, test, val=val, closed=closed)
    for key, result in fitted.items():
        row["systems"][key] = {"score": result["metrics"][metric], "extra": _extra(result, test, extra),
                               "cpu_s": result["cpu_seconds"], "settings": result["settings"]}
    row["baseline_wall_s"] = round(clock.wall, 1)
    per_example = {key: result["per_example"] for key, result in fitted.items()}
    for shots in (0, 3):
        result, took = evaluate(apply_overrides(recipe, [f"eval.few_shot={shots}"]), folder, f"base-{shots}shot")
        key = f"base_{shots}shot"
        row["systems"][key] = {"score": result.report["metrics"][metric],
                               "extra": result.report["metrics"].get(extra), **took}
        per_example[key] = scores(result, metric)
    with Clock() as clock:
        run = api.train(recipe, force=True, progress=False)
    result, took = evaluate(recipe, folder, "default-test", adapter=str(run.run_dir))
    row["systems"]["default"] = {"score": result.report["metrics"][metric],
                                 "extra": result.report["metrics"].get(extra), "train_wall_s": round(clock.wall, 1),
                                 "train_cpu_s": round(clock.cpu, 1), "eval": took, "steps": run.steps,
                                 "epochs": run.summary["epochs"], "stop_reason": run.stop_reason}
    per_example["default"] = scores(result, metric)
    row["prior"] = _prior(run.summary.get("neighbour_prior"))
    if row["prior"] is not None:  # the same run decoding with the model alone (eval.neighbour_prior=false)
        alone, took = evaluate(apply_overrides(recipe, ["eval.neighbour_prior=false"]), folder, "alone-test",
                               adapter=str(run.run_dir))
        row["systems"]["default_alone"] = {"score": alone.report["metrics"][metric],
                                           "extra": alone.report["metrics"].get(extra), "eval": took}
        per_example["default_alone"] = scores(alone, metric)
    row["default_val"] = _val_score(recipe, folder, run, metric)
    _with_retrieval(recipe, folder, row, metric, extra, per_example, run.summary["seconds"])
    row["tfidf_val"] = _tfidf_val(train, val, closed) if labelled else None
    row["tune"] = _maybe_tune(recipe, folder, row, args, metric, per_example)
    row["p_values"] = {f"default_vs_{other}": paired_p(per_example["default"], per_example[other], labelled)
                       for other in ("base_3shot", "base_0shot", "tfidf_lr", "nearest") if other in per_example}
    row["p_values"].update({f"retrieval_vs_{other}": paired_p(per_example["retrieval"], per_example[other], labelled)
                            for other in ("tfidf_lr", "nearest", "default") if other in per_example})
    if "default_alone" in per_example:
        row["p_values"].update({"default_vs_alone": paired_p(per_example["default"], per_example["default_alone"], True),
                                "alone_vs_base_3shot": paired_p(per_example["default_alone"],
                                                                per_example["base_3shot"], True)})
    return row


def _prior(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the run's prior chose on validation: kind, weight, and per kind its weight and accuracy."""
    if not record:
        return None
    return {"kind": record["kind"], "weight": record["weight"], "val_accuracy": record["val_accuracy"],
            "val_alone": record["val_accuracy_by_weight"]["0.0"],
            "by_kind": {k: {"weight": f["weight"], "val_accuracy": f["val_accuracy"]}
                        for k, f in record.get("by_kind", {}).items()}}


def _extra(result: dict[str, Any], test: Any, extra: str) -> float | None:
    """A baseline's second metric: macro-F1 (already computed) or ROUGE-L of its predictions."""
    if extra in result["metrics"]:
        return result["metrics"][extra]
    from domaintune.data.answers import final_answer
    from domaintune.eval import metrics as m

    return m.rouge(result["predictions"], [final_answer(r) for r in test])[extra].value


def _with_retrieval(recipe: Any, folder: Path, row: dict[str, Any], metric: str, extra: str,
                    per_example: dict[str, list[float]], budget_s: float) -> None:
    """domaintune + retrieval (`retrieval.kb: train`, the default run's loop time as its budget),
    and retrieval alone (the top entry's answer)."""
    augmented = apply_overrides(recipe, ["retrieval.kb=train", f"train.output_dir={folder / 'retrieval'}",
                                         f"train.time_budget={max(60.0, budget_s):.0f}"])
    with Clock() as clock:
        run = api.train(augmented, force=True, progress=False)
    result, took = evaluate(augmented, folder, "retrieval-test", adapter=str(run.run_dir))
    report = result.report["retrieval"]
    row["systems"]["retrieval"] = {"score": result.report["metrics"][metric],
                                   "extra": result.report["metrics"].get(extra),
                                   "train_wall_s": round(clock.wall, 1), "train_cpu_s": round(clock.cpu, 1),
                                   "eval": took, "steps": run.steps, "epochs": run.summary["epochs"],
                                   "time_budget_s": round(max(60.0, budget_s)), "stop_reason": run.stop_reason}
    row["systems"]["retrieval_top1"] = {"score": report["top1"]["score"]}
    row["retrieval_prior"] = _prior(run.summary.get("neighbour_prior"))
    row["retrieval"] = {"recall_at_k": report["recall_at_k"], "by_hit": report["by_hit"], "k": report["k"]}
    per_example["retrieval"] = scores(result, metric)


def _val_score(recipe: Any, folder: Path, run: Any, metric: str) -> float:
    val = apply_overrides(recipe, [f"eval.data={folder / 'prepared' / 'val.jsonl'}"])
    result, _ = evaluate(val, folder, "default-val", adapter=str(run.run_dir))
    return result.report["metrics"][metric]


def _tfidf_val(train: Any, val: Any, closed: bool) -> float | None:
    """TF-IDF + LR scored on the validation split, with C fixed at 10 (choosing C on the split it is
    scored on would peek); the test-split row chooses C on validation. Only decides whether to tune."""
    from domaintune.eval.baselines import classic_baselines

    fitted = classic_baselines(train, val, closed=closed)
    return fitted["tfidf_lr"]["metrics"]["accuracy"] if "tfidf_lr" in fitted else None


def _maybe_tune(recipe: Any, folder: Path, row: dict[str, Any], args: argparse.Namespace, metric: str,
                per_example: dict[str, list[float]]) -> dict[str, Any]:
    """Run `tune` when the default does not beat TF-IDF + LR on validation (never decided on test)."""
    if row["tfidf_val"] is None or row["default_val"] >= row["tfidf_val"] or args.tune_budget <= 0:
        reason = "not needed: the default beats TF-IDF + LR on validation" if row["tfidf_val"] is not None \
            and row["default_val"] >= row["tfidf_val"] else "not run"
        return {"ran": False, "reason": reason}
    with Clock() as clock:
        out = api.tune(recipe, args.tune_budget, str(folder / "tune"), progress=False,
                       max_trials=2 if args.quick else None)
    best = out["best"]
    if best is None:
        return {"ran": True, "reason": "no trial finished", **clock.as_dict()}
    result, took = evaluate(recipe, folder, "tune-test", adapter=best["run_dir"])
    row["systems"]["tune"] = {"score": result.report["metrics"][metric],
                              "extra": result.report["metrics"].get(row["extra_metric"]), "search_wall_s": round(clock.wall, 1),
                              "search_cpu_s": round(clock.cpu, 1), "eval": took, "val": best["value"],
                              "params": best["params"], "trials": len(out["trials"])}
    per_example["tune"] = scores(result, metric)
    return {"ran": True, "trials": len(out["trials"]), "best_trial": best["trial"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(task_data.TASKS), help="comma-separated task names")
    parser.add_argument("--quick", action="store_true", help="CI-sized: 240 rows a task, 8 training steps")
    parser.add_argument("--tune-budget", default="10m", help="wall time of each tune search (0: never tune)")
    parser.add_argument("--time-budget", default="0",
                        help="train.time_budget of the default run, e.g. 4m (0: none, epochs auto run to the end)")
    parser.add_argument("--out", type=Path, default=Path("bench_out/quality"), help="work folder")
    parser.add_argument("--results", type=Path, default=None, help="write the results JSON here")
    parser.add_argument("--resume", action="store_true",
                        help="keep the tasks the results file already holds (same --quick), run the others")
    parser.add_argument("--docs", type=Path, default=None,
                        help="also write the table (quality_table.md) and plot (quality.png) into this folder")
    args = parser.parse_args()
    from domaintune.config.train import parse_duration

    args.tune_budget = parse_duration(args.tune_budget) if args.tune_budget != "0" else 0.0
    args.time_budget = parse_duration(args.time_budget) if args.time_budget != "0" else 0.0
    path = args.results or args.out / "results.json"
    done = _finished_tasks(path, args) if args.resume else {}
    rows = []
    for name in args.tasks.split(","):
        if name in done:
            print(f"== {name}: kept from {path} ({done[name]['date']})", flush=True)
            rows.append(done[name])
            continue
        print(f"== {name}", flush=True)
        with Clock() as clock:
            row = run_task(name, args.out, args)
        rows.append({**row, "date": time.strftime("%Y-%m-%d"), "wall_s": round(clock.wall, 1)})
        print(json.dumps(_brief(rows[-1])), flush=True)
        _write_results(path, args, rows)  # after every task: a stopped run keeps what it measured
    results = _write_results(path, args, rows)
    print(render_table(results))
    if args.docs:
        args.docs.mkdir(parents=True, exist_ok=True)
        (args.docs / "quality_table.md").write_text(render_table(results) + "\n", encoding="utf-8")
        plot(results, args.docs / "quality.png")
    print(f"results: {path}  ({results['wall_s'] / 60:.1f} min)")


def _write_results(path: Path, args: argparse.Namespace, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results JSON (written whole: a temporary file renamed into place). Each task carries its
    own date and wall time, since a resumed run measures tasks on different days."""
    results = {"command": " ".join(["python", *sys.argv]), "quick": args.quick,
               "wall_s": round(sum(r.get("wall_s", 0.0) for r in rows), 1), "tasks": rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return results


def _finished_tasks(path: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    results = json.loads(path.read_text(encoding="utf-8"))
    if results.get("quick") != args.quick:
        raise SystemExit(f"{path} holds a {'quick' if results.get('quick') else 'full'} run: give another --results")
    return {row["task"]: row for row in results["tasks"]}


SYSTEMS = [("majority", "majority"), ("tfidf_lr", "TF-IDF + LR"), ("nearest", "nearest answer"),
           ("retrieval_top1", "BM25 top-1 answer"), ("base_0shot", "base 0-shot"), ("base_3shot", "base 3-shot"),
           ("default_alone", "domaintune model alone"), ("default", "domaintune default"), ("tune", "domaintune tune"),
           ("retrieval", "domaintune + retrieval")]


def render_table(results: dict[str, Any]) -> str:
    """The markdown table of docs/quality.md: one row per task, one column per system, test scores."""
    head = "| task | domain | metric | train/val/test | " + " | ".join(n for _, n in SYSTEMS) + \
        " | prior (w) | default vs 3-shot | default vs TF-IDF+LR | default vs model alone | +retrieval vs TF-IDF+LR |" \
        " default train | +retrieval train |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in results["tasks"]:
        systems = row["systems"]
        cells = [f"{systems[k]['score']:.1f}" if k in systems else "–" for k, _ in SYSTEMS]
        p = row["p_values"]
        d = systems["default"]
        lines.append(f"| {row['task']} | {row['domain']} | {row['metric']} | {row['train']}/{row['val']}/{row['test']} | "
                     + " | ".join(cells) + f" | {_prior_cell(row.get('prior'))} | p {_p(p.get('default_vs_base_3shot'))} | "
                     f"p {_p(p.get('default_vs_tfidf_lr'))} | p {_p(p.get('default_vs_alone'))} | "
                     f"p {_p(p.get('retrieval_vs_tfidf_lr'))} | "
                     f"{d['train_wall_s'] / 60:.1f} min, {d['epochs']:.1f} epochs | "
                     f"{systems['retrieval']['train_wall_s'] / 60:.1f} min |")
    return "\n".join(lines)


def _prior_cell(prior: dict[str, Any] | None) -> str:
    if not prior:
        return "–"
    return "none (0)" if prior["weight"] == 0 else f"{prior['kind']} ({prior['weight']:.2f})"


def _p(value: float | None) -> str:
    if value is None:
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def plot(results: dict[str, Any], path: Path) -> Path:
    """Grouped bars: each task's test score per system."""
    from matplotlib.figure import Figure

    rows = results["tasks"]
    fig = Figure(figsize=(max(7.0, 1.9 * len(rows)), 4.2), dpi=110)
    ax = fig.add_subplot()
    width = 0.8 / len(SYSTEMS)
    for j, (key, label) in enumerate(SYSTEMS):
        xs = [i + (j - len(SYSTEMS) / 2 + 0.5) * width for i in range(len(rows))]
        ys = [row["systems"].get(key, {}).get("score", 0.0) for row in rows]
        ax.bar(xs, ys, width, label=label)
    ax.set_xticks(range(len(rows)), [f"{r['task']}\n({r['metric']})" for r in rows], fontsize=8)
    ax.set_ylabel("test score")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, 1.18))
    fig.savefig(path, bbox_inches="tight")
    return path


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    return {"task": row["task"], **{k: round(v["score"], 1) for k, v in row["systems"].items()},
            "p": {k: float(f"{v:.3g}") for k, v in row["p_values"].items()}}


if __name__ == "__main__":
    main()
