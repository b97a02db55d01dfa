"""Tests for domaintune.data.chunk: token windows cut as slices of the original text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domaintune.data.chunk import chunk_by_tokens
from domaintune.errors import UserError

DOC = ("The patient reported a mild headache. She was advised to rest and drink water.\n\n"
       "Contract law covers agreements between parties, including offer and acceptance. ") * 4
ZH = "你好，世界。今天天气很好，我们去公园散步吧。魑魅魍魉出没于山林之间，行人小心。" * 3


def _offsets(tokenizer, text: str) -> list[tuple[int, int]]:
    return tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]


def _positions(text: str, chunks: list[str]) -> list[int]:
    """Where each chunk starts in `text`, checking the chunks are in-order substrings."""
    positions, at = [], 0
    for chunk in chunks:
        at = text.find(chunk, at)
        assert at >= 0, f"{chunk!r} is not a substring of the text after the previous chunk"
        positions.append(at)
    return positions


def test_words_stand_in_for_tokens_without_a_tokenizer():
    text = "one two  three\nfour five six seven"
    assert chunk_by_tokens(text, None, max_tokens=3) == ["one two  three\n", "four five six ", "seven"]
    assert chunk_by_tokens(text, None, max_tokens=4, overlap=2) == \
        ["one two  three\nfour ", "three\nfour five six ", "five six seven"]


def test_text_that_fits_is_returned_unchanged():
    assert chunk_by_tokens("  short text \n", None, max_tokens=2) == ["  short text \n"]
    assert chunk_by_tokens("", None, max_tokens=1) == [""]


@pytest.mark.parametrize("text", [DOC, ZH])
def test_windows_respect_max_tokens_and_rejoin_to_the_original(tiny_tokenizer, text):
    chunks = chunk_by_tokens(text, tiny_tokenizer, max_tokens=16)
    assert len(chunks) > 2
    assert "".join(chunks) == text
    spans = _offsets(tiny_tokenizer, text)
    for start, chunk in zip(_positions(text, chunks), chunks):
        inside = [s for s in spans if start <= s[0] < start + len(chunk)]
        assert 0 < len(inside) <= 16


def test_overlapping_windows_share_text(tiny_tokenizer):
    chunks = chunk_by_tokens(DOC, tiny_tokenizer, max_tokens=20, overlap=5)
    positions = _positions(DOC, chunks)
    for (start, chunk), next_start in zip(zip(positions, chunks), positions[1:]):
        assert start < next_start < start + len(chunk)  # the next window starts inside this one
    assert positions[0] == 0 and positions[-1] + len(chunks[-1]) == len(DOC)


def test_cjk_characters_split_into_byte_tokens_are_never_cut(tiny_tokenizer):
    rare = "魑魅魍魉"  # each is three byte-level tokens with the same character offsets
    spans = _offsets(tiny_tokenizer, rare)
    assert len(spans) == 12
    for max_tokens in (2, 4, 5):  # 2 is smaller than one character: the window grows to hold it
        chunks = chunk_by_tokens(rare, tiny_tokenizer, max_tokens=max_tokens)
        assert "".join(chunks) == rare and all(chunks)
    assert chunk_by_tokens(rare, tiny_tokenizer, max_tokens=5) == ["魑", "魅", "魍", "魉"]
    assert chunk_by_tokens(rare, tiny_tokenizer, max_tokens=6, overlap=3) == ["魑魅", "魅魍", "魍魉"]


@given(words=st.lists(st.text(alphabet="abc", min_size=1, max_size=3), max_size=40),
       gaps=st.lists(st.sampled_from([" ", "  ", "\n", "\t "]), min_size=41, max_size=41),
       max_tokens=st.integers(1, 8), overlap=st.integers(0, 7))
def test_word_windows_properties(words, gaps, max_tokens, overlap):
    overlap = min(overlap, max_tokens - 1)
    text = gaps[0] + "".join(w + g for w, g in zip(words, gaps[1:]))
    chunks = chunk_by_tokens(text, None, max_tokens, overlap)
    _positions(text, chunks)
    assert all(len(c.split()) <= max_tokens for c in chunks)
    if overlap == 0:
        assert "".join(chunks) == text
    if len(chunks) > 1:
        assert sum(len(c.split()) for c in chunks) - overlap * (len(chunks) - 1) == len(words)
        for left, right in zip(chunks, chunks[1:]):
            assert left.split()[len(left.split()) - overlap:] == right.split()[:overlap]


@pytest.mark.parametrize("max_tokens, overlap", [(0, 0), (4, 4), (4, 9), (4, -1)])
def test_bad_window_settings_raise_user_error(max_tokens, overlap):
    with pytest.raises(UserError) as err:
        chunk_by_tokens(DOC, None, max_tokens, overlap)
    assert "fix:" in str(err.value)


def test_tokenizer_without_offsets_raises_user_error():
    class SlowTokenizer:
        def __call__(self, text, **kwargs):
            raise NotImplementedError("return_offset_mapping is not available")

    with pytest.raises(UserError, match="fast tokenizer"):
        chunk_by_tokens(DOC, SlowTokenizer(), max_tokens=8)
