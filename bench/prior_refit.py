"""Fit the prior (api.prior.fit_run_prior, the code as it is now) on the runs of an earlier
bench/quality.py --out folder and score the test split with it as bench/quality.py scores, with
McNemar's p against TF-IDF + LR refitted on the same splits: the docs/quality.md refit table.

    OMP_NUM_THREADS=2 RUNS=default python bench/prior_refit.py /tmp/bq3 icd10_chapters banking77
"""
import os, sys, json, time, logging
from pathlib import Path
sys.path.insert(0, "bench"); sys.path.insert(0, ".")
logging.basicConfig(level=logging.INFO, format="%(message)s")
import quality as q
from domaintune import api
from domaintune.config import apply_overrides
from domaintune.api.prior import fit_run_prior
from domaintune.api.retrieval import augment, run_kb
from domaintune.methods.artifact import find_artifact
from domaintune.models.load import load_tokenizer
from domaintune.models.templates import get_template
from domaintune.train.data import load_split
from domaintune.eval.baselines import classic_baselines
from domaintune.eval.stats import mcnemar
root = Path(sys.argv[1])  # a bench/quality.py --out folder whose runs exist
for task in sys.argv[2:]:
    folder = root/task
    recipe = q.task_recipe(task, folder, folder/"raw.jsonl", True, (0.7, 0.1, 0.2))
    train = load_split(folder/"prepared/train.jsonl"); val = load_split(folder/"prepared/val.jsonl")
    test = load_split(folder/"prepared/test.jsonl")
    lr = classic_baselines(train, test, val=val, closed=True)["tfidf_lr"]
    for name in os.environ.get("RUNS", "default,retrieval").split(","):
        run = folder/name; art = find_artifact(run)
        tok = load_tokenizer(art.base); tpl = get_template(art.template, tok)
        v = val
        if art.retrieval:
            v = augment(val, run_kb(art.retrieval), tok, int(art.retrieval["k"]), int(art.retrieval["max_tokens"]), template=tpl)
        t0 = time.time()
        rec = fit_run_prior(run, tpl, tok, train, v, art.labels)
        fit_s = time.time() - t0
        r = recipe if name == "default" else apply_overrides(recipe, ["retrieval.kb=train"])
        result, took = q.evaluate(r, folder, f"{name}-prior-test", adapter=str(run))
        acc = result.report["metrics"]["accuracy"]
        p = mcnemar([x > 0 for x in q.scores(result, "accuracy")], [x > 0 for x in lr["per_example"]]).p_value
        print(f"RESULT {task} {name}: {rec['kind']} weight {rec['weight']} | TF-IDF+LR test {lr['metrics']['accuracy']:.1f}, "
              f"p {p:.3g} | by kind {json.dumps({k: (f['weight'], round(f['val_accuracy'], 1)) for k, f in rec['by_kind'].items()})} | val alone {rec['val_accuracy_by_weight']['0.0']:.1f} mixed {rec['val_accuracy']:.1f} | test mixed {acc:.1f} (fit {fit_s:.0f}s, eval {took['wall_s']}s)", flush=True)
