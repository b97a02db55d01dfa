"""Tests for domaintune.train.inputs: replay mixed in, curriculum buckets, term weights, EWC reference."""

from __future__ import annotations

import json

import pytest

from domaintune.config import CurriculumConfig, EwcConfig, ReplayConfig, TrainConfig
from domaintune.errors import UserError
from domaintune.models.templates import get_template
from domaintune.train.data import load_split
from domaintune.train.inputs import build_inputs

TEMPLATE = get_template("chatml")


def chat(question: str, answer: str, **metadata) -> dict:
    record = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}
    return {**record, "metadata": metadata} if metadata else record


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


DOMAIN = [chat(f"Code for case {i}?", f"Chapter {i % 3}.", difficulty=("easy", "medium", "hard")[i % 3])
          for i in range(9)] + [chat("Unlabelled case?", "Chapter 0."), chat("Odd case?", "Chapter 1.", difficulty="x")]
VAL = [chat("Code for case 99?", "Chapter 0.")]


def test_without_guards_inputs_are_the_plain_encodings(tiny_tokenizer):
    inputs = build_inputs(DOMAIN, VAL, TrainConfig(), tiny_tokenizer, TEMPLATE)
    assert len(inputs.train) == len(DOMAIN) and len(inputs.val) == 1
    assert (inputs.buckets, inputs.reference, inputs.facts) == (None, None, {})
    assert inputs.records == (DOMAIN, VAL)


def test_replay_adds_round_ratio_times_domain_records_and_counts_them(tiny_tokenizer, tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", [chat(f"Tell me about topic {i}.", "Sure.") for i in range(20)])
    cfg = TrainConfig(replay=ReplayConfig(data=general, ratio=0.5))
    inputs = build_inputs(DOMAIN, VAL, cfg, tiny_tokenizer, TEMPLATE)
    replay = inputs.facts["replay"]
    assert replay["records"] == round(0.5 * len(DOMAIN)) == 6 and replay["with_replacement"] is False
    assert len(inputs.train) == len(DOMAIN) + 6 and replay["examples"] == 6
    assert replay["sha256"] == load_split(general).sha256 and replay["file_records"] == 20
    again = build_inputs(DOMAIN, VAL, cfg, tiny_tokenizer, TEMPLATE)
    assert [e.input_ids for e in again.train] == [e.input_ids for e in inputs.train]  # fixed by the seed
    small = write_jsonl(tmp_path / "small.jsonl", [chat("Only one.", "Yes.")])
    many = build_inputs(DOMAIN, VAL, TrainConfig(replay=ReplayConfig(data=small, ratio=1.0)), tiny_tokenizer, TEMPLATE)
    assert many.facts["replay"]["with_replacement"] is True and len(many.train) == 2 * len(DOMAIN)
    with pytest.raises(UserError, match="not found"):
        build_inputs(DOMAIN, VAL, TrainConfig(replay=ReplayConfig(data=str(tmp_path / "no.jsonl"))), tiny_tokenizer,
                     TEMPLATE)


def test_curriculum_by_metadata_ranks_every_example_and_counts_the_rest(tiny_tokenizer, tmp_path):
    general = write_jsonl(tmp_path / "general.jsonl", [chat("General question?", "General answer.")])
    cfg = TrainConfig(curriculum=CurriculumConfig(by="metadata.difficulty"), replay=ReplayConfig(data=general, ratio=0.2))
    inputs = build_inputs(DOMAIN, VAL, cfg, tiny_tokenizer, TEMPLATE)
    assert len(inputs.buckets) == len(inputs.train) == len(DOMAIN) + 2
    assert inputs.buckets[:9] == [0, 1, 2] * 3 and inputs.buckets[9:] == [3, 3, 3, 3]
    facts = inputs.facts["curriculum"]
    assert facts["buckets"] == {"easy": 3, "medium": 3, "hard": 3, "last": 4}
    assert (facts["missing_field"], facts["unlisted_value"]) == (3, 1)  # 1 domain + 2 replayed; "x"


def test_curriculum_by_length_puts_short_examples_first(tiny_tokenizer):
    rows = [chat("Q?", "A " * n) for n in (30, 2, 12, 6, 20, 1)]
    inputs = build_inputs(rows, VAL, TrainConfig(curriculum=CurriculumConfig(by="length", length_buckets=2)),
                          tiny_tokenizer, TEMPLATE)
    lengths = [len(e) for e in inputs.train]
    short = max(n for n, b in zip(lengths, inputs.buckets) if b == 0)
    assert short < min(n for n, b in zip(lengths, inputs.buckets) if b == 1)
    assert list(inputs.facts["curriculum"]["buckets"].values()) == [3, 3]


def test_term_weights_go_to_training_examples_only(tiny_tokenizer, tmp_path):
    terms = tmp_path / "terms.csv"
    terms.write_text("canonical,variant\nchapter,ch.\n", encoding="utf-8")
    cfg = TrainConfig(terms=str(terms), term_weight=4.0)
    inputs = build_inputs(DOMAIN, [chat("Which chapter?", "Chapter 2.")], cfg, tiny_tokenizer, TEMPLATE)
    assert all(ex.weights is not None and 4.0 in ex.weights for ex in inputs.train)
    assert all(ex.weights is None for ex in inputs.val)  # validation stays the plain loss
    facts = inputs.facts["terms"]
    assert (facts["terms"], facts["weight"]) == (1, 4.0) and facts["weighted_tokens"] >= len(DOMAIN)


def test_ewc_reference_is_encoded_plain(tiny_tokenizer, tmp_path):
    reference = write_jsonl(tmp_path / "ref.jsonl", [chat("Hi?", "Hello."), chat("Bye?", "Bye.")])
    terms = tmp_path / "terms.csv"
    terms.write_text("hello\n", encoding="utf-8")
    cfg = TrainConfig(ewc=EwcConfig(reference=reference, samples=5), terms=str(terms))
    inputs = build_inputs(DOMAIN, VAL, cfg, tiny_tokenizer, TEMPLATE)
    assert len(inputs.reference) == 2 and all(ex.weights is None for ex in inputs.reference)
    assert inputs.facts["ewc"]["samples"] == 2 and inputs.facts["ewc"]["sha256"] == load_split(reference).sha256


def test_no_domain_token_to_train_fails_before_any_work(tiny_tokenizer):
    with pytest.raises(UserError, match="assistant answer"):
        build_inputs([{"messages": [{"role": "user", "content": "hi"}]}], VAL, TrainConfig(), tiny_tokenizer, TEMPLATE)


def test_replay_or_reference_without_answers_is_refused_up_front(tiny_tokenizer, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"messages": [{"role": "user", "content": "Why sleep?"}]}] * 3)
    with pytest.raises(UserError, match=r"no replay record can be trained \(2 no trained tokens\)") as err:
        build_inputs(DOMAIN, VAL, TrainConfig(replay=ReplayConfig(data=prompts)), tiny_tokenizer, TEMPLATE)
    assert "prompts.jsonl" in str(err.value) and "general_reference" in str(err.value)
    with pytest.raises(UserError, match="no EWC reference record can be used"):
        build_inputs(DOMAIN, VAL, TrainConfig(ewc=EwcConfig(reference=prompts)), tiny_tokenizer, TEMPLATE)
