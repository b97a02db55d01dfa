"""The task metric during training: decode a sample of validation rows as `eval` does, and score them.

`train.select_by: accuracy` (the default on a closed answer set) picks the best checkpoint by the
metric users judge, not by the loss; the fine-tuning guides our users follow stop on validation F1.
`task_metric` returns the function the training loop calls at each validation: it decodes the
sample greedily with the model as it is (adapter unmerged: merging would change the weights'
rounding), inside the closed answer set when there is one, and returns every metric it can:
accuracy, macro-F1 and exact match for closed sets, exact match and chrF for free text.

    metric = task_metric(tok, template, val_records, choices=answers, samples=200, seed=0)
    metric(model)   # {"accuracy": 61.5, "macro_f1": 55.0, "exact_match": 61.5}
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from domaintune.data.answers import final_answer


def task_metric(tokenizer: Any, template: Any, records: Sequence[Mapping[str, Any]], *,
                choices: Sequence[str] | None, samples: int, seed: int, batch_size: int = 64,
                max_new_tokens: int = 64) -> Callable[[Any], dict[str, float]]:
    """A `model -> {metric: value}` function over a seeded sample of `records` (chat records).

    Args:
        tokenizer, template: the model's tokenizer and the chat template training uses.
        records: validation records with a final assistant answer.
        choices: the closed answer set to decode inside (None: free decoding).
        samples: rows decoded per call (the same rows every time).
        seed: picks the rows.
        batch_size: prompts decoded together.
        max_new_tokens: the longest free answer (closed sets decode as long as their longest answer).
    """
    from domaintune.eval import metrics as m
    from domaintune.eval.generate import eval_mode, generate_answers
    from domaintune.models.choice import ChoiceTrie
    from domaintune.models.decode import SamplingParams

    rows = [r for r in records if final_answer(r) is not None]
    sample = random.Random(seed).sample(rows, min(samples, len(rows)))
    trie = ChoiceTrie.build(choices, template, tokenizer) if choices else None
    params = SamplingParams(max_new_tokens=trie.depth if trie else max_new_tokens, choices=trie)

    def measure(model: Any) -> dict[str, float]:
        with eval_mode(model):
            out = generate_answers(model, tokenizer, template, sample, params, batch_size=batch_size)
        preds, refs = [r["prediction"] for r in out], [r["reference"] for r in out]
        scores = {"exact_match": m.exact_match(preds, refs).value}
        if trie is not None:
            labels = m.label_metrics(preds, refs, labels=sorted(set(refs)))
            scores.update(accuracy=labels["accuracy"], macro_f1=labels["macro"]["f1"])
        else:
            scores["chrf"] = m.chrf(preds, refs).value
        return scores

    return measure
