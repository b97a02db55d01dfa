"""Tests for domaintune.train.data: reading splits, encoding (with term weights), the batch order.

Covers: every example once per epoch and reproducible; epochs shuffled differently; a stream that
crosses epochs; curriculum epochs bucket by bucket, later epochs as usual; encode_indexed keeps
the record index; term weights reach the examples (and so the batches) only when asked.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.errors import UserError
from domaintune.models.templates import get_template
from domaintune.models.batch import Example, TermWeighter
from domaintune.train.data import (BatchStream, collate_rows, curriculum_batches, encode_indexed, encode_split,
                                   epoch_batches, load_split)

def fake_examples(lengths: list[int]) -> list[Example]:
    return [Example([1] * n, [-100] + [1] * (n - 1)) for n in lengths]


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(2, 40), min_size=1, max_size=60), packing=st.booleans(),
       seed=st.integers(0, 5), epoch=st.integers(0, 3))
def test_epoch_batches_cover_every_example_once_and_are_reproducible(lengths, packing, seed, epoch):
    examples = fake_examples(lengths)
    rows = epoch_batches(examples, epoch, seed, packing, batch_tokens=32, batch_size=3)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert rows == epoch_batches(examples, epoch, seed, packing, batch_tokens=32, batch_size=3)
    for row in rows:
        if packing:  # an example longer than a row travels alone
            assert sum(lengths[i] for i in row) <= 32 or len(row) == 1
        else:
            assert len(row) <= 3


def test_epochs_are_shuffled_differently_and_the_stream_crosses_them():
    examples = fake_examples([5 + i % 7 for i in range(40)])
    assert epoch_batches(examples, 0, 0, True, 24, 4) != epoch_batches(examples, 1, 0, True, 24, 4)
    stream = BatchStream(examples, seed=0, packing=False, batch_tokens=24, batch_size=4, pad_id=0)
    assert stream.per_epoch == 10
    batches, position, n_examples = stream.take(0, 9, 3)
    assert position == (1, 2) and n_examples == 12 and len(batches) == 3
    assert stream.epochs(position) == 1.2


def test_load_split_reports_the_bad_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": broken}\n')
    with pytest.raises(UserError, match=r"train.jsonl:3: not a JSON line"):
        load_split(path)
    with pytest.raises(UserError, match="not found"):
        load_split(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------ curriculum

@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(2, 40), min_size=1, max_size=50), data=st.data(), packing=st.booleans(),
       seed=st.integers(0, 5))
def test_curriculum_epoch_runs_bucket_by_bucket_and_covers_every_example(lengths, data, packing, seed):
    buckets = data.draw(st.lists(st.integers(0, 3), min_size=len(lengths), max_size=len(lengths)))
    examples = fake_examples(lengths)
    rows = curriculum_batches(examples, buckets, seed, packing, batch_tokens=32, batch_size=3)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(len({buckets[i] for i in row}) == 1 for row in rows)  # no row mixes buckets
    order = [buckets[row[0]] for row in rows]
    assert order == sorted(order)  # easy first, then the next bucket, ...
    assert rows == curriculum_batches(examples, buckets, seed, packing, batch_tokens=32, batch_size=3)


def test_curriculum_shuffles_inside_a_bucket_by_the_seed():
    examples = fake_examples([6] * 30)
    buckets = [i % 2 for i in range(30)]
    a, b = (curriculum_batches(examples, buckets, seed, True, 12, 4) for seed in (0, 1))
    assert a != b and sorted(map(sorted, a)) != sorted(map(sorted, b))  # other rows, not just another order


def test_stream_runs_the_curriculum_first_epoch_then_shuffles_as_usual():
    examples = fake_examples([4 + i % 9 for i in range(40)])
    buckets = [0 if i < 20 else 1 for i in range(40)]
    stream = BatchStream(examples, seed=0, packing=True, batch_tokens=24, batch_size=4, pad_id=0, buckets=buckets)
    first = stream.rows(0)
    assert first == curriculum_batches(examples, buckets, 0, True, 24, 4)
    assert stream.rows(1) == epoch_batches(examples, 1, 0, True, 24, 4)
    assert stream.first_epoch == len(first) and stream.per_epoch == len(stream.rows(2))
    assert stream.epochs((0, stream.first_epoch)) == 1.0 == stream.epochs((1, 0))
    assert stream.batches_in(1.5) == stream.first_epoch + 0.5 * stream.per_epoch
    plain = BatchStream(examples, seed=0, packing=True, batch_tokens=24, batch_size=4, pad_id=0)
    assert plain.rows(0) == epoch_batches(examples, 0, 0, True, 24, 4) and plain.batches_in(2) == 2 * plain.per_epoch


# ---------------------------------------------------------------------------------------- encoding

def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_encode_indexed_names_the_record_of_each_kept_example(tiny_tokenizer):
    rows = [chat("Hi", "Hello there."), {"messages": [{"role": "user", "content": "no answer"}]},
            chat("Long " * 200, "x"), chat("Bye", "See you.")]
    examples, kept, dropped = encode_indexed(rows, tiny_tokenizer, get_template("chatml"), 64)
    assert kept == [0, 3] and len(examples) == 2
    assert dropped == {"no_trained_tokens": 1, "too_long": 1}
    assert encode_split(rows, tiny_tokenizer, get_template("chatml"), 64) == (examples, dropped)


def test_term_weights_reach_examples_and_batches_only_when_asked(tiny_tokenizer):
    rows = [chat("What is an infarction?", "A myocardial infarction is a heart attack."), chat("Hi", "Hello.")]
    template = get_template("chatml")
    plain, _ = encode_split(rows, tiny_tokenizer, template, 256)
    weighted, _ = encode_split(rows, tiny_tokenizer, template, 256, term_weighter=TermWeighter(["infarction"], 3.0))
    assert all(ex.weights is None for ex in plain)
    assert [ex.input_ids for ex in weighted] == [ex.input_ids for ex in plain]
    first = weighted[0].weights
    assert first is not None and len(first) == len(weighted[0]) and 3.0 in first and set(first) <= {1.0, 3.0}
    # only answer tokens weigh more: the prompt's "infarction" is not trained
    assert all(w == 1.0 for w, label in zip(first, weighted[0].labels) if label == -100)
    assert weighted[1].weights is None  # no term, no weights
    batch = collate_rows(weighted, [[0, 1]], True, 0)[0]
    assert "loss_weights" in batch and "loss_weights" not in collate_rows(plain, [[0, 1]], True, 0)[0]
