"""`domaintune demo`: the whole loop on the embedded model and the bundled ICD-10-CM task.

prepare the bundled data -> evaluate the base model zero-shot and few-shot -> LoRA-train ->
evaluate the tuned model (with forgetting on general conversations) -> compare with paired
significance tests -> HTML reports -> export the adapter. Everything lands in one folder:

    demo_out/data/            prepared splits, report.md, rejects.jsonl
    demo_out/eval/base*/      report.html of the base model (zero-shot, few-shot)
    demo_out/run/             the training run: adapter/, loss.png, summary.json
    demo_out/eval/tuned/      report.html of the tuned model
    demo_out/compare/         compare.html: base vs tuned, with the verdicts
    demo_out/export/adapter/  the PEFT adapter for vLLM / `domaintune serve`
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from domaintune.api.data import RECIPES, prepare
from domaintune.api.evaluation import compare, evaluate, load_for_eval
from domaintune.api.training import train
from domaintune.config import Recipe, load_recipe

# A CI-sized run: the same steps on fewer examples and training steps (exactly 6: no time budget, whose
# cut would depend on how busy the machine is).
QUICK = ["train.max_steps=6", "train.time_budget=null", "train.eval_every=3", "train.save_every=3", "eval.max_examples=24",
         "eval.latency_prompts=1", "eval.latency_tokens=16", "eval.general_max=8", "compare.bootstrap=1000"]


def demo_recipe(output_dir: str, overrides: list[str] | None = None) -> Recipe:
    """The shipped cpu_demo recipe with every path moved under `output_dir`."""
    out = Path(output_dir)
    paths = [f"prepare.output_dir={out / 'data'}", f"train.data_dir={out / 'data'}",
             f"train.output_dir={out / 'run'}", f"eval.data={out / 'data' / 'test.jsonl'}",
             f"eval.output_dir={out / 'eval'}"]
    with resources.as_file(resources.files("domaintune") / RECIPES / "cpu_demo.yaml") as path:
        return load_recipe(str(path), [*paths, *(overrides or [])])


def demo(output_dir: str = "demo_out", *, quick: bool = False, overrides: list[str] | None = None,
         progress: bool = True, step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the whole loop; returns each stage's result and the paths people look at.

    Args:
        output_dir: where everything is written.
        quick: a CI-sized run (`QUICK` overrides): same steps, small numbers.
        overrides: extra `--set` style overrides.
        progress: progress bars for prepare, train and eval.
        step: called with a short description as each stage starts.

    Returns:
        {"prepare": report, "train": TrainResult, "evals": {name: report}, "compare": {name: result},
         "export": paths or None, "paths": {...}}.
    """
    say = step or (lambda _msg: None)
    recipe = demo_recipe(output_dir, [*(QUICK if quick else []), *(overrides or [])])
    out = Path(output_dir)
    say("prepare the bundled ICD-10-CM data")
    prepared = prepare(recipe, progress=progress)
    evals = {}
    base = load_for_eval(recipe)
    # The base model is prompted as it is: no knowledge base (the tuned run reads the one it was
    # trained with, so the comparison shows what training with retrieval adds to plain prompting).
    plain = recipe.model_copy(update={"retrieval": recipe.retrieval.model_copy(update={"kb": None})})
    say("evaluate the base model, zero-shot")
    evals["base"] = evaluate(plain, output_dir=str(out / "eval" / "base"), loaded=base, progress=progress)
    shots = recipe.eval.few_shot or 3
    say(f"evaluate the base model, {shots}-shot")
    # Latency, perplexity (read without examples) and the classic baselines are measured in the
    # zero-shot pass; the few-shot pass only adds answers.
    few = plain.model_copy(update={"eval": recipe.eval.model_copy(
        update={"few_shot": shots, "latency_prompts": 0, "perplexity": False, "baselines": False})})
    evals[f"base-{shots}shot"] = evaluate(few, output_dir=str(out / "eval" / f"base-{shots}shot"), loaded=base,
                                         progress=progress)
    del base
    say("LoRA-train on the training split, each prompt with its nearest training cases")
    run = train(recipe, force=True, progress=progress)
    say("evaluate the tuned model")
    evals["tuned"] = evaluate(recipe, adapter=str(run.run_dir), output_dir=str(out / "eval" / "tuned"),
                              progress=progress)
    say("compare with paired significance tests")
    comparisons = {name: compare(recipe, str(out / "eval" / name), str(out / "eval" / "tuned"),
                                 output_dir=str(out / "compare" / f"{name}-vs-tuned"), names=(name, "tuned"))
                   for name in evals if name != "tuned"}
    say("export the adapter")
    exported = _export(run.run_dir, out / "export" / "adapter")
    return {"prepare": prepared, "train": run, "evals": {k: v[0].report for k, v in evals.items()},
            "compare": comparisons, "export": exported,
            "paths": {"tuned_report": evals["tuned"][1]["html"], "compare": comparisons["base"]["html"],
                      "run": run.run_dir}}


def _export(run_dir: Path, out: Path) -> Any:
    """The adapter in PEFT format (what vLLM's --lora-modules and `domaintune serve` load)."""
    from domaintune.api.deploy import export

    return export(str(run_dir), "adapter", str(out))
