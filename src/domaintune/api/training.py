"""`api.train`: load the recipe's model and data, pick the method, run the loop.

    result = api.train(load_recipe("recipe.yaml"))
    result.best_val_loss < result.base_val_loss

With `train.domains: [medical, legal]` one adapter is trained per domain tag (records whose
`metadata.<domain_field>` names it), each in run_dir/domains/<domain>/, and the adapters are put
side by side in run_dir/adapters/<domain>/ for `domaintune serve --adapter`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from domaintune.api.data import resolve_path
from domaintune.config import Recipe, TrainConfig
from domaintune.errors import UserError
from domaintune.files import atomic_folder
from domaintune.train.selection import LOSS, resolve_select_by

DOMAINS_DIR, ADAPTERS_DIR = "domains", "adapters"


def train(recipe: Recipe, resume: bool = False, force: bool = False, progress: bool = True,
          callbacks: tuple = ()):
    """Fine-tune the recipe's model on prepared data with the recipe's method.

    `callbacks` are extra training callbacks (`train/callbacks.py`), e.g. `tune`'s pruning hook.

    Returns:
        A `TrainResult` (run folder, steps, best and base validation loss, summary); with
        `train.domains`, a dict {domain: TrainResult}.

    Example:
        >>> result = train(load_recipe("recipes/cpu_demo.yaml"))  # doctest: +SKIP
        >>> result.best_val_loss < result.base_val_loss            # doctest: +SKIP
        True
    """
    from domaintune.train.data import load_split

    cfg = recipe.train.model_copy(deep=True)  # a copy: the saved recipe keeps 'bundled:'
    for part, key in ((cfg.replay, "data"), (cfg.ewc, "reference")):
        if part is not None:
            setattr(part, key, resolve_path(getattr(part, key)))
    data = Path(cfg.data_dir)
    train_split, val_split = load_split(data / "train.jsonl"), load_split(data / "val.jsonl")
    if cfg.domains:
        return _train_domains(recipe, cfg, train_split, val_split, resume, force, progress)
    return _run(recipe, cfg, train_split, val_split, Path(cfg.output_dir), resume, force, progress, callbacks)


def _run(recipe: Recipe, cfg: TrainConfig, train_split: Any, val_split: Any, run_dir: Path, resume: bool,
         force: bool, progress: bool, callbacks: tuple = ()):
    import yaml

    from domaintune.api.retrieval import RunRecords, augment, check_resumed_kb, training_kb
    from domaintune.methods import get_method
    from domaintune.models.load import load_model, load_tokenizer, resolve_model
    from domaintune.models.templates import get_template
    from domaintune.train.loop import run_training

    model_cfg = recipe.model
    tokenizer = load_tokenizer(model_cfg.name, trust_remote_code=model_cfg.trust_remote_code)
    template = get_template(model_cfg.template, tokenizer)
    answers = decodable_answers(train_split, template, tokenizer)
    plain_train = train_split  # the neighbour prior indexes the pairs as written, without retrieved blocks
    kb = training_kb(recipe, train_split)  # in memory: the run folder is written once training starts
    if resume:
        check_resumed_kb(run_dir, kb, force)
    if kb is not None:  # neighbours in every prompt; never a training example's own entry
        k, budget = recipe.retrieval.k, recipe.retrieval.max_tokens
        train_split = augment(train_split, kb, tokenizer, k, budget, leave_one_out=True, template=template)
        val_split = augment(val_split, kb, tokenizer, k, budget, template=template)
    model = load_model(model_cfg.name, trust_remote_code=model_cfg.trust_remote_code)
    select_by = resolve_select_by(cfg.select_by, answers is not None) if val_split else LOSS
    # labels.json, retrieval.json and kb/ are written when training starts, after the run folder's
    # checks: a refused run leaves an existing run's records as they were.
    records = RunRecords(run_dir, answers, kb, recipe)
    result = run_training(
        model, tokenizer, template, get_method(cfg.method.method), cfg.method, train_split, val_split, cfg, run_dir,
        recipe_yaml=yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
        resume=resume, force=force, model_path=resolve_model(model_cfg.name), progress=progress,
        loss_fn=_loss_fn(cfg, tokenizer), select_by=select_by, callbacks=(records, *callbacks),
        task_metric=_task_metric(cfg, select_by, tokenizer, template, val_split, answers),
        choices=_choice_trie(cfg, answers, template, tokenizer))
    if _is_main_process():
        from domaintune.api.prior import fit_run_prior

        prior = fit_run_prior(run_dir, template, tokenizer, plain_train, val_split, answers,
                              enabled=cfg.neighbour_prior and cfg.method.method != "distill")
        if result.summary is not None and prior is not None:
            from domaintune.methods.artifact import SUMMARY_FILE
            from domaintune.train.summary import write_summary

            result.summary["neighbour_prior"] = prior
            write_summary(run_dir / SUMMARY_FILE, result.summary)
    return result


def _choice_trie(cfg: TrainConfig, answers: list[str] | None, template: Any, tokenizer: Any) -> Any:
    """The closed answer set as a trie: the closed-set loss walks it, validation scores by it (None without one)."""
    from domaintune.models.choice import ChoiceTrie

    if answers is None or cfg.method.method == "distill":
        return None
    return ChoiceTrie.build(answers, template, tokenizer)


def decodable_answers(records: Any, template: Any, tokenizer: Any) -> list[str] | None:
    """The closed answer set of `records` when this template can decode inside it, else None.

    Some templates tokenize an answer together with its prompt (deepseek_r1's generation prompt
    ends inside `<think>`): their answers are decoded freely and runs select by loss, with a note.
    """
    from domaintune.data.answers import closed_answer_set
    from domaintune.models.choice import ChoiceTrie

    answers = closed_answer_set(records)
    if answers is None:
        return None
    try:
        ChoiceTrie.build(answers[:1], template, tokenizer)
    except UserError as err:
        import logging

        logging.getLogger(__name__).warning("closed-set decoding is off: %s", err.message)
        return None
    return answers


def _task_metric(cfg: TrainConfig, select_by: str, tokenizer: Any, template: Any, val_split: Any,
                 answers: list[str] | None):
    """The decoded-validation metric for `train.select_by` (None when selecting by loss)."""
    if select_by == LOSS:
        return None
    if select_by in ("accuracy", "macro_f1") and answers is None:
        raise UserError(f"train.select_by: {select_by} needs answers that form a closed set (labels) this "
                        "template can decode inside", hint="use exact_match or chrf for free-text answers, or loss")
    from domaintune.eval.validation import task_metric

    return task_metric(tokenizer, template, val_split, choices=answers, samples=cfg.val_samples, seed=cfg.seed)


def _loss_fn(cfg: TrainConfig, tokenizer: Any):
    """The distillation loss for `method: distill` (None: the plain answer loss)."""
    opts = cfg.method
    if opts.method != "distill":
        return None
    from domaintune.train.distill import load_teacher, make_distill_loss

    teacher = load_teacher(resolve_path(opts.teacher), student_tokenizer=tokenizer)
    return make_distill_loss(teacher, opts.temperature, opts.kd_weight)


def _train_domains(recipe: Recipe, cfg: TrainConfig, train_split: Any, val_split: Any, resume: bool, force: bool,
                   progress: bool) -> dict[str, Any]:
    """One run per domain tag on that domain's records; adapters gathered side by side."""
    root = Path(cfg.output_dir)
    results = {}
    for domain in cfg.domains:
        train_d, val_d = (_domain_split(s, cfg.domain_field, domain) for s in (train_split, val_split))
        if not train_d:
            raise UserError(f"no training record has metadata.{cfg.domain_field} = '{domain}'",
                            file=str(train_split.path),
                            hint=f"tag records with metadata.{cfg.domain_field}, or fix train.domains")
        results[domain] = _run(recipe, cfg, train_d, val_d, root / DOMAINS_DIR / domain, resume, force, progress)
        if _is_main_process():  # under a launcher, one process writes; a crash mid-copy keeps the old copy
            with atomic_folder(root / ADAPTERS_DIR / domain) as target:
                shutil.copytree(results[domain].artifact, target, dirs_exist_ok=True)
                _copy_records(results[domain].run_dir, target)
    return results


def _copy_records(run_dir: Path, target: Path) -> None:
    """A domain adapter's answer set, knowledge base and prior go with it, so serve reads them there too."""
    from domaintune.api.retrieval import KB_DIR
    from domaintune.methods.artifact import LABELS_FILE, PRIOR_CLASSIFIER, PRIOR_DIR, PRIOR_FILE, RETRIEVAL_FILE

    for name in (LABELS_FILE, RETRIEVAL_FILE, PRIOR_FILE):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, target / name)
    for name in (KB_DIR, PRIOR_DIR, PRIOR_CLASSIFIER):
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, target / name)


def _is_main_process() -> bool:
    from domaintune.train.distributed import init_distributed

    return init_distributed().main


def _domain_split(split: Any, field: str, domain: str) -> Any:
    from domaintune.train.data import Split

    # The whole file's path and hash stay in the lineage: the domain subset is a function of them.
    kept = [r for r in split if str((r.get("metadata") or {}).get(field)) == domain]
    return Split(kept, split.path, split.sha256)
