"""Tests for domaintune.data.clean: NFKC that keeps Chinese intact, whitespace, controls, user rules."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.clean import CleanRules, Cleaner, fold_whitespace, normalize_nfkc
from domaintune.data.injection import find_control_tokens
from domaintune.errors import UserError

CLEAN = Cleaner(CleanRules())
ZH_PUNCT = "，。！？；：（）「」【】《》、～￥……"


@pytest.mark.parametrize(("raw", "want"), [
    ("ＡＢＣ１２３", "ABC123"),
    ("ﬁle ﬂow", "file flow"),
    ("剂量 5㎎，体积 2㎖", "剂量 5mg，体积 2ml"),
    ("ＭＲＩ检查：正常。", "MRI检查：正常。"),
    ("ｈｅｌｌｏ，世界！", "hello，世界！"),
    ("e\u0301", "\u00e9"),  # composition happens too
])
def test_nfkc_normalizes_latin_and_compat_forms(raw: str, want: str) -> None:
    assert CLEAN(raw) == want


def test_chinese_punctuation_is_kept() -> None:
    text = "患者：男，54岁！是否吸烟？否；（既往）「高血压」【诊断】《指南》、3～5天，￥120……"
    assert CLEAN(text) == text
    assert CLEAN(ZH_PUNCT.strip()) == ZH_PUNCT.strip()


def test_deepseek_tokens_survive_and_stay_detectable() -> None:
    text = "<｜User｜>你好<｜Assistant｜>"
    cleaned = CLEAN(text)
    assert cleaned == text
    assert find_control_tokens(cleaned, "user") == ["<｜User｜>", "<｜Assistant｜>"]


def test_nfkc_can_be_turned_off() -> None:
    assert Cleaner(CleanRules(nfkc=False))("ＡＢＣ，") == "ＡＢＣ，"


@pytest.mark.parametrize(("raw", "want"), [
    ("中文  测试", "中文 测试"),
    ("中文测试", "中文测试"),  # no space is ever added between CJK characters
    ("中 文", "中 文"),  # nor the last one removed
    ("a\t\tb \t c", "a b c"),
    ("第一行   \n第二行", "第一行\n第二行"),
    ("a\n\n\n\n\nb", "a\n\nb"),
    ("a\n  \n \n\nb", "a\n\nb"),
    ("第一段\n\n第二段\n第三行", "第一段\n\n第二段\n第三行"),
    ("  \n 前后空白 \n\n ", "前后空白"),
    ("　　第一条　内容", "　　第一条　内容"),  # ideographic spaces are Chinese layout, kept
])
def test_whitespace_folding(raw: str, want: str) -> None:
    assert CLEAN(raw) == want
    assert fold_whitespace(raw) == want


def test_stray_carriage_returns_become_newlines() -> None:
    assert CLEAN("a\r\nb\rc") == "a\nb\nc"
    assert Cleaner(CleanRules(strip_control=False, fold_whitespace=False))("a\rb") == "a\nb"


def test_control_characters_are_removed() -> None:
    assert CLEAN("a\x00b\x07c\x1b[0m\x85d\x7f\u200b零宽\ufeff") == "abc[0md零宽"


def test_zero_width_joiner_and_tab_newline_survive_control_stripping() -> None:
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    rules = CleanRules(fold_whitespace=False)
    assert Cleaner(rules)(f"家庭{family}\x01\ta\nb") == f"家庭{family}\ta\nb"


def test_control_stripping_can_be_turned_off() -> None:
    assert Cleaner(CleanRules(strip_control=False))("a\x07b") == "a\x07b"


def test_user_rules_apply_in_order_after_builtins() -> None:
    rules = CleanRules(regex=((r"\s*\[\d+\]", ""), ("甲", "乙"), ("乙", "丙")))
    # NFKC runs first, so the full-width digits are already ASCII when the rule runs.
    assert Cleaner(rules)("见文献 [１２]，甲方") == "见文献，丙方"


def test_user_rule_with_group_reference() -> None:
    rules = CleanRules(regex=((r"(\d+)\s*mg", r"\1 mg"),))
    assert Cleaner(rules)("口服50mg，每日两次") == "口服50 mg，每日两次"


@pytest.mark.parametrize(("pattern", "repl", "fragment"), [
    ("(unclosed", "", "missing ), unterminated subpattern"),
    ("a", r"\9", "invalid group reference"),
    ("(?P<x>a)", r"\g<y>", "unknown group name"),
])
def test_bad_user_regex_names_pattern_and_error(pattern: str, repl: str, fragment: str) -> None:
    with pytest.raises(UserError) as err:
        Cleaner(CleanRules(regex=((pattern, repl),)))
    assert repr(pattern) in str(err.value)
    assert fragment in str(err.value)


def test_nothing_to_do_returns_equal_text() -> None:
    text = "Patient is stable.\n患者病情稳定，继续观察。"
    assert CLEAN(text) == text


def _protected(ch: str) -> bool:
    code = ord(ch)
    return ch in "\u3000\u2026" or 0x2460 <= code <= 0x24FF or any(
        lo <= code <= hi for lo, hi in ((0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40),
                                        (0xFF5B, 0xFF60), (0xFFE0, 0xFFE6)))


def test_every_bmp_character_is_normalized_unless_protected() -> None:
    # The fast path trusts a table of the characters NFKC may change; one missing from it would
    # silently skip normalization. Check the table against unicodedata, character by character.
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        ch = chr(code)
        want = ch if _protected(ch) else unicodedata.normalize("NFKC", ch)
        assert normalize_nfkc(ch) == want, hex(code)


_INTERESTING = st.sampled_from(list(
    "ＡＢ１２ﬁ㎎，。！？（）｜<>\r\n\t \u3000\u200b\u200d\ufeff\x00\x07\x85e\u0301\u0308\u1100\u1161\u11a8"
    "中文心梗①…～￥"))
_TEXT = st.lists(st.one_of(st.text(max_size=8), _INTERESTING), max_size=40).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TEXT, st.booleans(), st.booleans(), st.booleans())
def test_cleaning_is_idempotent(text: str, nfkc: bool, fold: bool, strip: bool) -> None:
    clean = Cleaner(CleanRules(nfkc=nfkc, fold_whitespace=fold, strip_control=strip))
    once = clean(text)
    assert clean(once) == once


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_nfkc_matches_unicodedata_away_from_protected_characters(text: str) -> None:
    if not any(_protected(ch) for ch in text):
        assert normalize_nfkc(text) == unicodedata.normalize("NFKC", text)
    assert "".join(ch for ch in normalize_nfkc(text) if _protected(ch)) == "".join(
        ch for ch in text if _protected(ch))
