"""Tests for serve/codec.py: prompts are the training tokens; streamed text equals decoded text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.models.templates import get_template
from domaintune.serve.codec import Codec, TextStream, _held_back

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}]
ANSWER = {"role": "assistant", "content": "Paris is the capital."}


@pytest.fixture(scope="module")
def codec(tiny_tokenizer):
    return Codec(tiny_tokenizer, get_template("chatml", tiny_tokenizer))


def test_prompt_ids_are_the_tokens_training_sees(codec, tiny_tokenizer):
    prompt = codec.chat_prompt(CONVERSATION)
    trained_ids, trained = codec.template.encode([*CONVERSATION, ANSWER], tiny_tokenizer)
    # Training's ids for the same conversation start with exactly the served prompt, and the
    # first trained token is the first token the server asks the model for.
    assert trained_ids[:len(prompt)] == prompt
    assert trained.index(True) == len(prompt)
    rendered = codec.template.render(CONVERSATION, add_generation_prompt=True)
    assert prompt == tiny_tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_stop_ids_are_end_of_turn_and_eos(codec, tiny_tokenizer):
    im_end = tiny_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in codec.stop_ids and tiny_tokenizer.eos_token_id in codec.stop_ids
    # "<|endoftext|>" is not a token of the tiny vocabulary, so it is matched as text instead.
    assert codec.stop_strings == ("<|endoftext|>",)
    assert codec.pad_id == tiny_tokenizer.pad_token_id


def pieces(stream: TextStream, ids: list[int]) -> list[str]:
    return [stream.push(i) for i in ids] + [stream.flush()]


SAMPLES = ["Hello there, how are you today?", "你好，世界。今天天气很好", "The patient reported a mild headache."]


@pytest.mark.parametrize("text", SAMPLES)
def test_streamed_pieces_join_to_the_decoded_text(tiny_tokenizer, text):
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    out = pieces(TextStream(tiny_tokenizer), ids)
    assert "".join(out) == text
    assert all("\ufffd" not in p for p in out)  # a Chinese character split across tokens waits whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=10, max_value=511), max_size=30))
def test_any_ids_stream_to_their_full_decode(tiny_tokenizer, ids):
    stream = TextStream(tiny_tokenizer)
    assert "".join(pieces(stream, ids)) == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    assert stream.n_tokens == len(ids) and stream.finish_reason is None


def test_stop_id_ends_the_row_without_text(tiny_tokenizer):
    ids = tiny_tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_tokenizer, stop_ids=(2,))
    out = pieces(stream, [*ids, 2, *ids])
    assert "".join(out) == "Hello there" == stream.text
    assert stream.finish_reason == "stop" and stream.n_tokens == len(ids) + 1


def test_stop_string_is_cut_and_never_partly_shown(tiny_tokenizer):
    text = "Hello there, how are you today?"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_tokenizer, stop_strings=("how are",))
    out, shown = [], ""
    for i in ids:
        out.append(stream.push(i))
        shown += out[-1]
        assert "how" not in shown  # "how" could start the stop string: held back, then dropped
    assert stream.text == "Hello there, " and stream.finish_reason == "stop"
    assert stream.flush() == ""


def test_held_back_text_is_released_when_no_stop_follows(tiny_tokenizer):
    ids = tiny_tokenizer("Hello there", add_special_tokens=False)["input_ids"]
    stream = TextStream(tiny_tokenizer, stop_strings=("there!",))
    assert "".join(pieces(stream, ids)) == "Hello there" and stream.finish_reason is None


def test_held_back_is_the_longest_stop_prefix():
    assert _held_back("abc", ["cd", "bcx"]) == 2
    assert _held_back("abc", ["xyz"]) == 0
    assert _held_back("a", ["abc"]) == 1
