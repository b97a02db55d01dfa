"""The training loss and the token counts: the one place either is computed.

`causal_lm_loss` is next-token cross-entropy over supervised tokens only, with the vocabulary
projection run ONLY at supervised positions. It asks the model itself to do that, through the
`logits_to_keep` argument every transformers 5.x causal LM takes: a boolean `[B, T]` mask
makes the model run its decoder, keep the hidden states at the True positions (flattened to
`[N, hidden]`) and apply `lm_head` to those rows alone. On a 49k vocabulary that skips most of
the head's matmul and its `[B, T, V]` logits, in memory and in backward. Going through the
model's own forward, rather than calling `get_decoder()` and `lm_head` by hand, keeps what a
model does after its head (Gemma's logit soft-capping, Cohere's logit scale, Granite's scaling)
and keeps every peft wrapper in force: LoRA/IA3/adapters applied in the body (or on `lm_head`),
and prompt/prefix tuning's virtual tokens, which only exist inside `PeftModel.forward`.

`supervised_logits` and `supervised_mean` are the two halves of that loss; `train/distill.py`
builds the distillation loss from them, so both select and average exactly the same tokens.

The forward always runs with `use_cache=False`: with the config default a DynamicCache is
created and transformers stops looking for packed sequences (see `models/batch.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from domaintune.models.batch import IGNORE_INDEX

# peft prompt-learning types whose virtual tokens are prepended to the input embeddings (the
# logits then have extra leading rows); prefix tuning puts them in the KV cache instead.
_PREPENDED = ("PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CPT")


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """The label each position is trained to predict: `labels` shifted left, `IGNORE_INDEX` last.

    Args:
        labels: `[B, T]` labels, `IGNORE_INDEX` where not trained.

    Returns:
        `[B, T]` targets; position t predicts `labels[:, t + 1]`.
    """
    return _shift_left(labels, IGNORE_INDEX)


def token_counts(batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """Count a batch's real tokens and the tokens the loss is taken on.

    Args:
        batch: a collated batch (`collate_packed` or `collate_padded`).

    Returns:
        `(total_tokens, supervised_tokens)`: tokens that are not padding, and targets that are
        not `IGNORE_INDEX` (exactly the terms `causal_lm_loss` averages over).
    """
    mask = batch.get("attention_mask")
    total = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
    supervised = int((next_token_targets(batch["labels"]) != IGNORE_INDEX).sum())
    return total, supervised


def packing_supported(model: Any) -> bool:
    """Whether `model` keeps packed conversations apart (False for peft prompt learning).

    Prompt/prefix tuning's virtual tokens shift positions (peft drops `position_ids`) or add a
    KV cache, and either way transformers no longer sees where one conversation ends: use
    `collate_padded` for those methods.
    """
    config = _peft_config(model)
    return not (config is not None and getattr(config, "is_prompt_learning", False))


def validation_terms(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[float, int, int, int]:
    """One validation batch in one forward pass: `(summed token losses, supervised tokens, examples
    answered right, examples)`: the plain loss (no closed-set term) and `closed_set_hits`."""
    logits, targets, out = supervised_logits(model, batch)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    loss = add_router_loss(model, out, supervised_mean(ce, batch, logits))
    return float(loss) * int(ce.numel()), int(ce.numel()), *closed_set_hits(logits, targets, batch)


def causal_lm_loss(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy over supervised tokens, logits computed only where needed.

    Equals `model(**batch, labels=batch["labels"]).loss` (transformers' mean over targets that
    are not -100). When the batch carries `loss_weights` (term-aware training, see
    `collate.TermWeighter`), it is the weighted mean `sum(w_t * ce_t) / sum(w_t)` over the
    supervised targets instead, `w_t` being the weight of the token being predicted
    (`loss_weights` is aligned with `labels`; its values on unsupervised tokens are ignored).
    All-ones weights equal the unweighted loss; without `loss_weights` the result is exactly the
    plain mean.

    Works for a plain model and for a peft `PeftModel` around it. Prompt and prefix tuning also
    take the selected-position path (the call goes through `PeftModel.forward`, so virtual
    tokens apply), but only with padded batches: see `packing_supported`. For MoE models that
    return a router `aux_loss`, it is added with the config's coefficient, as transformers does.

    Gradient accumulation: scale each micro-batch's loss by `count / total_count` (the loop
    does), so an unweighted step equals one big batch. With `loss_weights` the count stays the
    number of supervised targets, so the step minimizes `sum_i (n_i / N) * L_i`, each `L_i`
    the weighted mean of micro-batch i: token t of micro-batch i weighs `w_t * n_i / W_i` (W_i
    the sum of that micro-batch's weights). That equals the weighted mean over the whole step
    when every micro-batch has the same mean weight `W_i / n_i` (always so with one
    micro-batch); otherwise term tokens in a term-dense micro-batch weigh a little less than
    in a sparse one. Each micro-batch's loss keeps the scale of a cross-entropy, so logged
    losses stay comparable with unweighted runs.

    Args:
        model: a causal LM, or a peft model wrapping one.
        batch: from `collate_packed` (input_ids, labels, position_ids) or `collate_padded`
            (input_ids, labels, attention_mask), either with optional `loss_weights`.

    Returns:
        `(loss, count)`: the mean (or weighted mean) loss, a scalar with a graph, and the number
        of supervised targets. A batch with none gives a zero loss that still backpropagates.

    Raises:
        ValueError: a packed batch for a model that cannot keep it apart, or a packed batch
            that also carries an attention mask.

    Example:
        >>> batch = collate_packed([encode_record(r, tok, tpl, 512).example for r in rows])  # doctest: +SKIP
        >>> loss, n = causal_lm_loss(model, batch)                                              # doctest: +SKIP
        >>> loss.backward()                                                                     # doctest: +SKIP
    """
    logits, targets, out = supervised_logits(model, batch)
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    loss = supervised_mean(ce, batch, logits)
    if "choice_positions" in batch:
        loss = loss + closed_set_loss(logits, targets, batch)
    return add_router_loss(model, out, loss), int(ce.numel())


def closed_set_loss(logits: torch.Tensor, targets: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of each closed-set decision among the tokens the answer set allows there.

    The softmax runs over `choice_allowed` only: the distribution constrained decoding samples
    from and reports as confidence (`models/choice.py`, `train/closed_set.py`).

    Args:
        logits, targets: `supervised_logits`' `[N, V]` logits and `[N]` targets.
        batch: the batch, with `choice_positions` (flat `[B, T]` indices of supervised
            positions), `choice_allowed` and `choice_mask` (`[M, K]`).

    Returns:
        A scalar: the mean over the M decisions.
    """
    picked, target = _decision_logits(logits, targets, batch)
    right = (batch["choice_allowed"] == target[:, None]) & batch["choice_mask"]
    return (torch.logsumexp(picked, dim=1) - picked.masked_fill(~right, float("-inf")).amax(dim=1)).mean()


def _decision_logits(logits: torch.Tensor, targets: torch.Tensor,
                     batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`([M, K] logits of the allowed tokens, -inf on padding; [M] right token)` of each decision."""
    keep = (next_token_targets(batch["labels"]) != IGNORE_INDEX).flatten()
    rows = (torch.cumsum(keep.long(), 0) - 1)[batch["choice_positions"]]
    picked = logits[rows].float().gather(1, batch["choice_allowed"]).masked_fill(~batch["choice_mask"], float("-inf"))
    return picked, targets[rows]


def closed_set_hits(logits: torch.Tensor, targets: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """`(examples answered right, examples)` of a batch under greedy closed-set decoding, from its
    teacher-forced logits.

    Greedy decoding inside the answer trie picks, at each decision, the allowed token with the
    highest logit; along the right answer's path the logits are exactly the teacher-forced ones.
    So an example is answered right if and only if the right token wins among the allowed ones
    at every decision of its answer: the accuracy `eval` reports, without decoding. An example
    whose answer is not in the set has no decisions and counts as wrong.

    Args:
        logits, targets: `supervised_logits`' `[N, V]` logits and `[N]` targets.
        batch: the batch, with the `choice_*` tensors of `models.batch` (when some example is in
            the set) and `position_ids` (packed) or `attention_mask` (padded) to count examples.
    """
    if "attention_mask" in batch:
        examples = int(batch["input_ids"].shape[0])
    else:
        examples = int((batch["position_ids"] == 0).sum())
    if "choice_positions" not in batch:
        return 0, examples
    picked, target = _decision_logits(logits, targets, batch)
    right = batch["choice_allowed"].gather(1, picked.argmax(dim=1, keepdim=True))[:, 0] == target
    owner = batch["choice_example"]
    wrong = torch.zeros(examples, dtype=torch.bool, device=owner.device).index_fill_(0, owner[~right], True)
    decided = torch.zeros(examples, dtype=torch.bool, device=owner.device).index_fill_(0, owner, True)
    return int((decided & ~wrong).sum()), examples


def supervised_logits(model: Any, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Run `model` on a batch and keep the logits of supervised positions only.

    The model projects only those positions through its LM head (`logits_to_keep`), with
    `use_cache=False` so packed conversations stay apart.

    Args:
        model: a causal LM, or a peft model wrapping one.
        batch: a collated batch, as in `causal_lm_loss`.

    Returns:
        `(logits, targets, output)`: `[N, V]` logits at the N supervised positions (row-major
        order), their `[N]` target ids, and the model's output (for a router `aux_loss`).

    Raises:
        ValueError: as in `causal_lm_loss`.
    """
    targets = next_token_targets(batch["labels"])
    keep = targets != IGNORE_INDEX
    out = model(**_model_inputs(model, batch), use_cache=False, logits_to_keep=_with_virtual(model, keep))
    return _selected_logits(out.logits, keep), targets[keep], out


def supervised_mean(per_token: torch.Tensor, batch: Mapping[str, torch.Tensor],
                    logits: torch.Tensor) -> torch.Tensor:
    """Average per-target losses the way `causal_lm_loss` does: the mean, or the weighted mean.

    Args:
        per_token: `[N]` losses, one per supervised target, in `supervised_logits` order.
        batch: the batch they came from (its `loss_weights`, when present, weigh them).
        logits: the logits they were computed from; a batch without targets returns
            `logits.sum() * 0`, a zero that still backpropagates.

    Returns:
        A scalar loss.
    """
    if per_token.numel() == 0:
        return logits.sum() * 0.0
    weights = batch.get("loss_weights")
    if weights is None:
        return per_token.mean()
    keep = next_token_targets(batch["labels"]) != IGNORE_INDEX
    w = _shift_left(weights, 0)[keep].to(per_token.dtype)
    return (per_token * w).sum() / w.sum().clamp_min(torch.finfo(per_token.dtype).tiny)


def add_router_loss(model: Any, out: Any, loss: torch.Tensor) -> torch.Tensor:
    """`loss` plus an MoE model's router `aux_loss` times its config coefficient, as transformers adds it."""
    aux = getattr(out, "aux_loss", None)
    coef = getattr(getattr(model, "config", None), "router_aux_loss_coef", None)
    if aux is None or not coef:
        return loss
    return loss + coef * aux.to(loss.device)


def _shift_left(values: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.cat([values[:, 1:], torch.full_like(values[:, :1], fill)], dim=1)


def _model_inputs(model: Any, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # A batch from the frozen-layer cache (train/frozen.py) carries the states in place of the ids.
    first = "inputs_embeds" if "inputs_embeds" in batch else "input_ids"
    inputs = {k: batch[k] for k in (first, "attention_mask", "position_ids") if k in batch}
    if "position_ids" in inputs and _is_packed(inputs["position_ids"]):
        if "attention_mask" in inputs:
            raise ValueError("a packed batch must not carry an attention_mask: transformers would then "
                             "let its conversations attend to each other")
        if not packing_supported(model):
            raise ValueError("prompt/prefix tuning cannot keep packed conversations apart; collate "
                             "with collate_padded for these methods")
    return inputs


def _is_packed(position_ids: torch.Tensor) -> bool:
    return bool((position_ids[:, 1:] <= position_ids[:, :-1]).any())


def _peft_config(model: Any) -> Any:
    # A PeftModel exposes its active config; a plain transformers model has none.
    return getattr(model, "active_peft_config", None) if hasattr(model, "peft_config") else None


def _with_virtual(model: Any, keep: torch.Tensor) -> torch.Tensor:
    config = _peft_config(model)
    if config is None or str(getattr(config.peft_type, "value", config.peft_type)) not in _PREPENDED:
        return keep
    virtual = keep.new_zeros((keep.shape[0], config.num_virtual_tokens))
    return torch.cat([virtual, keep], dim=1)


def _selected_logits(logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    if logits.ndim == 2:
        return logits
    # A model that ignored `logits_to_keep` returned every position: select here instead.
    return logits[:, -keep.shape[1]:][keep]
