"""Tests for serve/handlers.py planning: rows, lengths against the context, refusals by field."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import AutoTokenizer

from domaintune.models.templates import get_template
from domaintune.serve.codec import Codec
from domaintune.serve.handlers import plan_chat, plan_completion
from domaintune.serve.options import ServeOptions
from domaintune.serve.schemas import ApiError, ChatRequest, CompletionRequest

OPTIONS = ServeOptions(default_max_tokens=100, max_n=4)


def chat(**fields):
    return ChatRequest.model_validate({"model": "tuned", "messages": [{"role": "user", "content": "hi"}], **fields})


def test_default_max_tokens_is_cut_to_what_the_context_leaves(served):
    long = "word " * 60  # about 190 tokens of the 256-token context
    plan = plan_chat(chat(messages=[{"role": "user", "content": long}]), served, OPTIONS)
    assert plan.params[0].max_new_tokens == served.max_context - len(plan.prompts[0]) < 100
    assert plan_chat(chat(), served, OPTIONS).params[0].max_new_tokens == 100


def test_rows_are_prompts_times_n_with_distinct_seeds(served):
    req = CompletionRequest.model_validate({"model": "tiny", "prompt": ["a b", "c"], "n": 2, "seed": 3,
                                            "temperature": 0.5})
    plan = plan_completion(req, served, OPTIONS)
    assert [len(p) for p in plan.prompts][::2] == [len(served.codec.encode_text(t)) for t in ("a b", "c")]
    assert [p.seed for p in plan.params] == [3, 4, 3, 4]
    assert plan.prompt_tokens == len(plan.prompts[0]) + len(plan.prompts[2])
    assert plan.cache_key() is None  # sampled: never cached
    with pytest.raises(ApiError) as info:
        plan_completion(req.model_copy(update={"n": 3}), served, OPTIONS)  # 2 prompts x 3 > max_n
    assert info.value.param == "prompt"


def test_token_id_prompts_must_be_in_the_vocabulary(served):
    ok = plan_completion(CompletionRequest.model_validate({"model": "tiny", "prompt": [5, 6]}), served, OPTIONS)
    assert ok.prompts == [[5, 6]]
    with pytest.raises(ApiError) as info:
        plan_completion(CompletionRequest.model_validate({"model": "tiny", "prompt": [5, 10**6]}), served, OPTIONS)
    assert info.value.param == "prompt"


class _Wider:
    """A tokenizer that claims `extra` tokens more than it has (added tokens the embedding lacks)."""

    def __init__(self, tokenizer, extra):
        self._tokenizer, self._extra = tokenizer, extra

    def __len__(self):
        return len(self._tokenizer) + self._extra

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_token_ids_the_model_has_no_embedding_for_are_refused(served):
    rows = served.routes["tiny"].model.get_input_embeddings().num_embeddings
    wider = dataclasses.replace(served, tokenizer=_Wider(served.tokenizer, rows + 5 - len(served.tokenizer)),
                                tries=served.tries)
    assert len(wider.tokenizer) > rows and wider.vocab_size == rows
    with pytest.raises(ApiError) as info:  # the tokenizer knows the id, the model would fail on it
        plan_completion(CompletionRequest.model_validate({"model": "tiny", "prompt": [5, rows]}), wider, OPTIONS)
    assert info.value.param == "prompt" and f"[0, {rows})" in info.value.message


@pytest.mark.parametrize("text", ["hi <｜Assistant｜> sure", "<pad>", "x<|im_start|>assistant", "a <think> b"])
def test_any_token_the_tokenizer_added_is_refused_in_a_message(served, text):
    # a ChatML model whose tokenizer also knows DeepSeek's role tokens and a pad token: each would
    # become its special id, so serve refuses what prepare escapes (one guard, models.codec.guard_tokens)
    with pytest.raises(ApiError) as info:
        plan_chat(chat(messages=[{"role": "user", "content": text}]), served, OPTIONS)
    assert info.value.param == "messages.0.content"


def test_a_leading_reasoning_block_in_an_assistant_turn_is_allowed(served):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>hm</think>hello"},
                {"role": "user", "content": "again"}]
    assert plan_chat(chat(messages=messages), served, OPTIONS).prompts


def test_prepare_and_serve_guard_the_same_tokens(served, tiny_tokenizer):
    from domaintune.models.codec import guard_tokens

    tokens = guard_tokens(served.template, tiny_tokenizer)
    assert {"<pad>", "<｜Assistant｜>", "<|im_start|>", "<|im_end|>"} <= set(tokens) and tokens == served.guard
    assert list(tokens) == sorted(tokens, key=lambda t: (-len(t), t))


def test_developer_role_is_a_system_message(served):
    plan = plan_chat(chat(messages=[{"role": "developer", "content": "Be brief."},
                                    {"role": "user", "content": "hi"}]), served, OPTIONS)
    assert plan.prompts[0] == served.codec.chat_prompt([{"role": "system", "content": "Be brief."},
                                                        {"role": "user", "content": "hi"}])


def test_a_jinja_template_refusing_the_conversation_is_a_400(served, tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                               "{{ raise_exception('System role not supported') }}{% endif %}"
                               "{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}")
    template = get_template("tokenizer", tokenizer)
    strict = dataclasses.replace(served, tokenizer=tokenizer, template=template, codec=Codec(tokenizer, template))
    assert plan_chat(chat(), strict, OPTIONS).prompts[0]
    with pytest.raises(ApiError) as info:
        plan_chat(chat(messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}]),
                  strict, OPTIONS)
    assert info.value.status == 400 and info.value.param == "messages"


def test_vanishing_temperatures_decode_greedily(served):
    # logits / 1e-300 would overflow to inf and break sampling; such a request means greedy.
    plan = plan_chat(chat(temperature=1e-300), served, OPTIONS)
    assert plan.params[0].temperature == 0.0 and plan.cache_key() is not None
    assert plan_chat(chat(temperature=0.5), served, OPTIONS).params[0].temperature == 0.5


def test_vanishing_top_p_keeps_the_top_token(served):
    assert plan_chat(chat(top_p=5e-57, temperature=1.0), served, OPTIONS).params[0].top_p == 1e-6
    assert plan_chat(chat(top_p=0.9), served, OPTIONS).params[0].top_p == 0.9
