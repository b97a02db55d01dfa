"""Tests for models/batch.py: label masks, truncation, packing, collation, length grouping, term weights."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.models.templates import IM_END, get_template
from domaintune.models.batch import (
    IGNORE_INDEX, SKIP_NO_TRAINED_TOKENS, SKIP_TOO_LONG, Example, TermWeighter, collate_packed, collate_padded,
    encode_record, length_grouped_order, pack_examples,
)

CHAT = {"messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": "What is the capital of France?"},
                     {"role": "assistant", "content": "The capital of France is Paris."},
                     {"role": "user", "content": "And of China?"},
                     {"role": "assistant", "content": "北京是中国的首都。"}],
        "metadata": {"id": 1}}


def trained_runs(example: Example, tokenizer) -> list[str]:
    """Decode each maximal run of trained labels."""
    runs, current = [], []
    for label in [*example.labels, IGNORE_INDEX]:
        if label != IGNORE_INDEX:
            current.append(label)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


@pytest.mark.parametrize("name", ["chatml", "tokenizer", "deepseek_v3"])
def test_only_answers_and_end_of_turn_are_trained(name, tiny_tokenizer):
    template = get_template(name, tiny_tokenizer)
    enc = encode_record(CHAT, tiny_tokenizer, template, max_len=512)
    ids, mask = template.encode(CHAT["messages"], tiny_tokenizer)
    assert enc.reason is None and enc.example.input_ids == ids
    assert enc.example.labels == [IGNORE_INDEX] + [t if m else IGNORE_INDEX for t, m in zip(ids[1:], mask[1:])]
    end = IM_END if name != "deepseek_v3" else "<｜end▁of▁sentence｜>"
    runs = [r.strip() for r in trained_runs(enc.example, tiny_tokenizer)]
    assert runs == [f"The capital of France is Paris.{end}", f"北京是中国的首都。{end}"]


def test_train_on_prompt_trains_all_but_the_first_token(tiny_tokenizer):
    enc = encode_record(CHAT, tiny_tokenizer, get_template("chatml"), 512, train_on_prompt=True)
    assert enc.example.labels[0] == IGNORE_INDEX
    assert enc.example.labels[1:] == enc.example.input_ids[1:]


def test_text_record_is_all_trained_and_ends_with_eos(tiny_tokenizer):
    enc = encode_record({"text": "The quick brown fox.", "metadata": {}}, tiny_tokenizer, get_template("chatml"), 512)
    ex = enc.example
    assert ex.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert ex.input_ids[:-1] == tiny_tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"]
    assert ex.labels == [IGNORE_INDEX] + ex.input_ids[1:]


def test_drop_skips_a_record_that_is_too_long(tiny_tokenizer):
    template = get_template("chatml")
    full = encode_record(CHAT, tiny_tokenizer, template, 512).example
    assert encode_record(CHAT, tiny_tokenizer, template, len(full)).example == full
    assert encode_record(CHAT, tiny_tokenizer, template, len(full) - 1) == (None, SKIP_TOO_LONG)


def test_truncate_keeps_the_first_tokens(tiny_tokenizer):
    template = get_template("chatml")
    full = encode_record(CHAT, tiny_tokenizer, template, 512).example
    cut = encode_record(CHAT, tiny_tokenizer, template, len(full) - 5, truncation="truncate").example
    assert cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]


def test_truncation_that_removes_every_answer_skips_the_record(tiny_tokenizer):
    template = get_template("chatml")
    prompt_len = len(template.encode(CHAT["messages"][:2], tiny_tokenizer)[0])
    enc = encode_record(CHAT, tiny_tokenizer, template, prompt_len, truncation="truncate")
    assert enc == (None, SKIP_NO_TRAINED_TOKENS)


def test_a_conversation_without_answers_is_skipped(tiny_tokenizer):
    record = {"messages": [{"role": "user", "content": "Hello there"}]}
    assert encode_record(record, tiny_tokenizer, get_template("chatml"), 512).reason == SKIP_NO_TRAINED_TOKENS


def test_bad_truncation_and_bad_record_are_user_errors(tiny_tokenizer):
    with pytest.raises(UserError, match="truncation"):
        encode_record(CHAT, tiny_tokenizer, get_template("chatml"), 512, truncation="cut")
    with pytest.raises(UserError, match="neither"):
        encode_record({"metadata": {}}, tiny_tokenizer, get_template("chatml"), 512)


def fake(n: int, start: int = 1) -> Example:
    ids = list(range(start, start + n))
    return Example(ids, [IGNORE_INDEX] + ids[1:])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 64), max_size=80), st.integers(64, 200))
def test_packing_uses_every_example_once_and_never_overflows(lengths, max_tokens):
    examples = [fake(n) for n in lengths]
    rows = pack_examples(examples, max_tokens)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= max_tokens for row in rows)
    # Any-fit packing leaves at most one row at most half full (else its items would have fit).
    assert sum(2 * sum(lengths[i] for i in row) <= max_tokens for row in rows) <= 1
    assert pack_examples(examples, max_tokens) == rows


def test_packing_fills_rows_tightly():
    rows = pack_examples([fake(n) for n in [6, 5, 4, 3, 2]], 10)
    assert rows == [[0, 2], [1, 3, 4]]


def test_packing_refuses_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match="more than max_tokens"):
        pack_examples([fake(3), fake(11)], 10)


def test_collate_packed_restarts_positions_and_never_trains_across_borders():
    a, b, c = fake(4, 10), fake(2, 20), fake(3, 30)
    batch = collate_packed([a, b, Example(c.input_ids, c.input_ids)])  # c's first label set on purpose
    assert set(batch) == {"input_ids", "labels", "position_ids"}  # an attention_mask would disable packing
    assert batch["input_ids"].tolist() == [a.input_ids + b.input_ids + c.input_ids]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, 11, 12, 13, -100, 21, -100, 31, 32]]


def test_collate_padded_pads_right_and_masks_padding():
    batch = collate_padded([fake(3, 10), fake(1, 20)], pad_id=0)
    assert batch["input_ids"].tolist() == [[10, 11, 12], [20, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 11, 12], [-100, -100, -100]]
    assert all(t.dtype == torch.long for t in batch.values())


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 500), min_size=1, max_size=300), st.integers(1, 4), st.integers(0, 99))
def test_length_grouping_is_a_deterministic_grouped_permutation(lengths, batch_size, seed):
    order = length_grouped_order(lengths, batch_size, seed)
    assert sorted(order) == list(range(len(lengths)))
    assert order == length_grouped_order(lengths, batch_size, seed)
    assert lengths[order[0]] == max(lengths)
    size = 50 * batch_size
    for start in range(0, len(order), size):
        chunk = [lengths[i] for i in order[start:start + size]][1:]  # [0] may be the swapped-in longest
        assert chunk == sorted(chunk, reverse=True)


def test_length_grouping_depends_on_the_seed():
    lengths = list(range(1, 1001))
    assert length_grouped_order(lengths, 2, 0) != length_grouped_order(lengths, 2, 1)


# ---- term-aware loss weights -------------------------------------------------------------------

TERM_CHAT = {"messages": [
    {"role": "user", "content": "Is Paris the capital of France? 北京呢"},
    {"role": "assistant", "content": "PARIS is the capital of France, not Parisian. 北京是中国的首都。"}]}
TERMS = ["paris", "capital of France", "北京"]


def weighted_runs(example: Example, tokenizer) -> list[str]:
    """Decode each maximal run of tokens whose weight is not 1."""
    runs, current = [], []
    for token, weight in zip([*example.input_ids, None], [*example.weights, 1.0]):
        if weight != 1.0:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def test_term_weights_sit_exactly_on_trained_term_tokens(tiny_tokenizer):
    weighter = TermWeighter(TERMS, 3.0)
    ex = encode_record(TERM_CHAT, tiny_tokenizer, get_template("chatml"), 256, term_weighter=weighter).example
    assert len(ex.weights) == len(ex.input_ids)
    assert set(ex.weights) == {1.0, 3.0}
    # Hand-checked: the prompt's "Paris"/"capital of France"/"北京" are not trained, so weigh 1;
    # "PARIS" matches case-insensitively, "Parisian" is not on a word boundary, and the token
    # holding 京's last byte also holds 是, so it overlaps the term.
    assert weighted_runs(ex, tiny_tokenizer) == ["PARIS", " capital of France", "北京是"]
    assert all(label != IGNORE_INDEX for label, w in zip(ex.labels, ex.weights) if w != 1.0)


def test_weighting_changes_neither_ids_nor_labels(tiny_tokenizer):
    weighter = TermWeighter(TERMS, 2.5)
    for name in ("chatml", "tokenizer", "deepseek_r1"):
        template = get_template(name, tiny_tokenizer)
        for train_on_prompt in (False, True):
            plain = encode_record(TERM_CHAT, tiny_tokenizer, template, 256, train_on_prompt=train_on_prompt)
            weighted = encode_record(TERM_CHAT, tiny_tokenizer, template, 256, train_on_prompt=train_on_prompt,
                                     term_weighter=weighter)
            assert plain.example.weights is None
            assert (weighted.example.input_ids, weighted.example.labels) == (plain.example.input_ids,
                                                                             plain.example.labels), name
    prompt_too = encode_record(TERM_CHAT, tiny_tokenizer, get_template("chatml"), 256, train_on_prompt=True,
                               term_weighter=weighter).example
    assert weighted_runs(prompt_too, tiny_tokenizer)[:2] == [" Paris", " capital of France"]


def test_truncation_cuts_the_weights_too(tiny_tokenizer):
    weighter, template = TermWeighter(TERMS, 3.0), get_template("chatml")
    full = encode_record(TERM_CHAT, tiny_tokenizer, template, 256, term_weighter=weighter).example
    cut = encode_record(TERM_CHAT, tiny_tokenizer, template, len(full) - 20, truncation="truncate",
                        term_weighter=weighter).example
    assert cut.weights == full.weights[:len(full) - 20] and len(cut.weights) == len(cut.input_ids)


def test_text_records_are_weighted_and_records_without_terms_are_not(tiny_tokenizer):
    weighter, template = TermWeighter(["quick brown fox"], 4.0), get_template("chatml")
    ex = encode_record({"text": "The QUICK brown fox."}, tiny_tokenizer, template, 64, term_weighter=weighter).example
    assert weighted_runs(ex, tiny_tokenizer) == ["QUICK brown fox"]
    assert ex.weights[-1] == 1.0 and ex.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert encode_record(CHAT, tiny_tokenizer, template, 512, term_weighter=weighter).example.weights is None


def test_term_weighter_reads_every_form_of_a_dictionary_file(tmp_path):
    path = tmp_path / "terms.csv"
    path.write_text("canonical,variant\nmyocardial infarction,heart attack\nmyocardial infarction,MI\n心肌梗死,心梗\n",
                    encoding="utf-8")
    weighter = TermWeighter.from_file(path, 2.0)
    text = "Heart attack (MI), not MINE; 急性心梗 and myocardial infarction."
    found = [text[a:b] for a, b in weighter.term_spans(text)]
    assert found == ["Heart attack", "MI", "心梗", "myocardial infarction"]


@pytest.mark.parametrize("weight", [0, -1.0, float("nan"), float("inf"), "2"])
def test_a_bad_term_weight_is_a_user_error(weight):
    with pytest.raises(UserError, match="term weight"):
        TermWeighter(["x"], weight)


def test_zero_width_and_untrained_tokens_keep_weight_one():
    weighter = TermWeighter(["abc"], 2.0)
    offsets = [(0, 1), (1, 1), (1, 3), (3, 4)]
    assert weighter.token_weights("abc d", offsets, [True, True, True, True]) == (2.0, 1.0, 2.0, 1.0)
    assert weighter.token_weights("abc d", offsets, [False, True, True, True]) == (1.0, 1.0, 2.0, 1.0)
    assert weighter.token_weights("abcd", offsets, [True] * 4) is None  # not on a word boundary


def weighted(n: int, start: int, weights: tuple[float, ...] | None) -> Example:
    ex = fake(n, start)
    return Example(ex.input_ids, ex.labels, weights)


def test_collate_adds_loss_weights_only_when_an_example_has_them():
    a, b = weighted(3, 10, (1.0, 2.0, 3.0)), weighted(2, 20, None)
    assert "loss_weights" not in collate_packed([fake(3), fake(2)])
    assert "loss_weights" not in collate_padded([fake(3), fake(2)], pad_id=0)
    packed = collate_packed([a, b])
    assert packed["loss_weights"].dtype == torch.float32
    assert packed["loss_weights"].tolist() == [[1.0, 2.0, 3.0, 1.0, 1.0]]
    padded = collate_padded([b, a], pad_id=0)
    assert padded["loss_weights"].shape == padded["labels"].shape
    assert padded["loss_weights"].tolist() == [[1.0, 1.0, 1.0], [1.0, 2.0, 3.0]]


WORDS = ["the", "capital", "of", "France", "Paris", "PARIS", "Parisian", "北京", "是", "中国", "report", "fox"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(WORDS), min_size=1, max_size=8), st.lists(st.sampled_from(WORDS), min_size=1,
                                                                       max_size=8))
def test_weighting_never_changes_encoding_and_fires_iff_an_answer_holds_a_term(tiny_tokenizer, prompt, answer):
    record = {"messages": [{"role": "user", "content": " ".join(prompt)},
                           {"role": "assistant", "content": " ".join(answer)}]}
    template, weighter = get_template("chatml"), TermWeighter(TERMS, 2.0)
    plain = encode_record(record, tiny_tokenizer, template, 256).example
    weighted = encode_record(record, tiny_tokenizer, template, 256, term_weighter=weighter).example
    assert (weighted.input_ids, weighted.labels) == (plain.input_ids, plain.labels)
    spaced = f" {' '.join(answer).lower()} "
    has_term = " paris " in spaced or " capital of france " in spaced or "北京" in spaced
    assert (weighted.weights is not None) == has_term
