"""Tests for domaintune.data.pii: each kind masked when valid, left alone when not, priorities."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domaintune.data.pii import PII_KINDS, PLACEHOLDERS, PiiMasker, luhn_valid
from domaintune.errors import UserError

MASK = PiiMasker()
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def cn_id(first17: str) -> str:
    """Complete 17 digits with the ISO 7064 MOD 11-2 check character."""
    return first17 + "10X98765432"[sum(int(d) * w for d, w in zip(first17, _WEIGHTS)) % 11]


def luhn_complete(prefix: str) -> str:
    """Append the digit that makes `prefix` Luhn-valid."""
    return next(prefix + d for d in "0123456789" if luhn_valid(prefix + d))


VALID_ID = cn_id("11010519900307123")  # Beijing, born 1990-03-07
WRONG_ID = VALID_ID[:-1] + ("0" if VALID_ID[-1] != "0" else "1")


def masked(text: str) -> str:
    return MASK(text)[0]


# --- email ---------------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["zhang.san@example.com", "li+tag@mail.hospital.com.cn", "a_b-c@x-y.org"])
def test_email_masked(address: str) -> None:
    assert masked(f"联系邮箱：{address}。") == "联系邮箱：<EMAIL>。"


@pytest.mark.parametrize("text", ["user@localhost", "@someone said", "a@b", "price 5 @ 3.99"])
def test_not_an_email(text: str) -> None:
    assert masked(text) == text


# --- phone -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("请拨打13812345678联系", "请拨打<PHONE>联系"),
    ("手机：138-1234-5678；备用 138 1234 5678", "手机：<PHONE>；备用 <PHONE>"),
    ("+86 138 1234 5678", "<PHONE>"),
    ("+8613912345678。", "<PHONE>。"),  # not Luhn-valid, else a card would outrank it
    ("0086 13812345678", "<PHONE>"),
    ("86-13912345678", "<PHONE>"),
    ("座机010-12345678，深圳0755-1234567", "座机<PHONE>，深圳<PHONE>"),
    ("电话(0755)1234567", "电话<PHONE>"),
    ("Call +44 20 7946 0958 today", "Call <PHONE> today"),
    ("Call +1 (555) 123-4567.", "Call <PHONE>."),
    ("Call (555) 123-4567 or 555-123-4567 or 1-800-555-1234", "Call <PHONE> or <PHONE> or <PHONE>"),
])
def test_phone_masked(text: str, want: str) -> None:
    assert masked(text) == want


@pytest.mark.parametrize("text", [
    "2024-01-15 复诊", "2024年1月15日", "于2023年入院", "12:30 服药", "08:30:00", "I21.4 急性心梗", "ICD-10 I21.09",
    "¥1,299.00", "$12.50", "价格 13800 元", "v1.2.3", "版本 1.2.3.4.5", "BP 120/80 mmHg", "HR 102 bpm",
    "编号 138123456789", "+5% 与 +10 mg", "C++11", "2023-2024 年度", "第 3 床 12 号",
])
def test_not_a_phone(text: str) -> None:
    assert masked(text) == text


# --- cn_id -----------------------------------------------------------------------------------

def test_valid_id_masked() -> None:
    assert masked(f"身份证号{VALID_ID}，住址北京") == "身份证号<ID_CARD>，住址北京"
    assert MASK(VALID_ID)[1] == Counter({"cn_id": 1})


def test_id_with_x_check_character() -> None:
    x_id = next(i for i in (cn_id(f"4403011985071{n:04d}"[:17]) for n in range(1000)) if i.endswith("X"))
    assert masked(f"证件 {x_id} 有效") == "证件 <ID_CARD> 有效"
    assert masked(f"证件 {x_id.lower()} 有效") == "证件 <ID_CARD> 有效"


def test_wrong_checksum_is_not_an_id() -> None:
    assert not luhn_valid(WRONG_ID) or MASK(WRONG_ID)[1] == Counter({"bank_card": 1})
    text, counts = MASK(f"身份证号{WRONG_ID}")
    assert "cn_id" not in counts
    if not luhn_valid(WRONG_ID):
        assert text == f"身份证号{WRONG_ID}"


def test_impossible_birth_date_is_not_an_id() -> None:
    bad_date = cn_id("11010519901307123")  # month 13, checksum right
    assert "cn_id" not in MASK(bad_date)[1]


def test_id_inside_longer_digit_run_is_not_masked() -> None:
    assert "cn_id" not in MASK(f"9{VALID_ID}")[1]
    assert "cn_id" not in MASK(f"{VALID_ID}5")[1]


# --- bank_card ---------------------------------------------------------------------------------

@pytest.mark.parametrize("card", ["4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
                                  "3782 822463 10005", luhn_complete("622202123456789012")])
def test_luhn_valid_card_masked(card: str) -> None:
    assert luhn_valid(card.replace(" ", "").replace("-", ""))
    assert masked(f"卡号{card}，请核对") == "卡号<BANK_CARD>，请核对"


def test_luhn_invalid_card_not_masked() -> None:
    assert masked("卡号4111111111111112") == "卡号4111111111111112"
    assert masked("卡号 4111 1111 1111 1112") == "卡号 4111 1111 1111 1112"


def test_card_inside_longer_digit_run_not_masked() -> None:
    run = "9" + "4111111111111111" + "9"
    assert masked(run) == run


# --- ip --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("服务器192.168.1.1。", "服务器<IP>。"),
    ("from 10.0.0.255 to 8.8.8.8.", "from <IP> to <IP>."),
    ("v6 2001:db8::8a2e:370:7334 ok", "v6 <IP> ok"),
    ("full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "full <IP>"),
    ("本地 ::1 与 fe80::1", "本地 <IP> 与 <IP>"),
    ("mapped ::ffff:192.0.2.1", "mapped <IP>"),
])
def test_ip_masked(text: str, want: str) -> None:
    assert masked(text) == want


@pytest.mark.parametrize("text", ["256.1.1.1", "版本 1.2.3.4.5", "v1.2.3.4", "12:30:45", "std::vector<int>",
                                  "a::b", "1.2.3", "I21.4"])
def test_not_an_ip(text: str) -> None:
    assert masked(text) == text


# --- together --------------------------------------------------------------------------------

def test_counts_per_kind() -> None:
    text = (f"患者张三，身份证{VALID_ID}，电话13812345678，备用 010-12345678，"
            "邮箱 zs@example.com，卡号 4111 1111 1111 1111，IP 10.1.2.3。")
    out, counts = MASK(text)
    assert counts == Counter({"cn_id": 1, "phone": 2, "email": 1, "bank_card": 1, "ip": 1})
    assert not re.search(r"\d{7,}", out)
    for kind, n in counts.items():
        assert out.count(PLACEHOLDERS[kind]) == n


def test_email_outranks_phone() -> None:
    assert MASK("13812345678@163.com") == ("<EMAIL>", Counter({"email": 1}))


def test_id_outranks_card() -> None:
    both = next(i for i in (cn_id(f"11010519900307{n:03d}") for n in range(1000)) if luhn_valid(i))
    assert both.isdigit()
    assert MASK(f"号码{both}")[1] == Counter({"cn_id": 1})
    assert PiiMasker(["bank_card"])(f"号码{both}")[1] == Counter({"bank_card": 1})


def test_card_outranks_international_phone() -> None:
    card = luhn_complete("41111111111111")  # 15 digits: could also pass as +CC phone
    assert MASK(f"+{card}")[1] == Counter({"bank_card": 1})
    assert PiiMasker(["phone"])(f"+{card}")[1] == Counter({"phone": 1})


def test_only_selected_kinds() -> None:
    masker = PiiMasker(["email"])
    assert masker("a@b.com 13812345678") == ("<EMAIL> 13812345678", Counter({"email": 1}))


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as err:
        PiiMasker(["email", "passport"])
    assert "passport" in str(err.value)
    for kind in PII_KINDS:
        assert kind in str(err.value)


def test_fast_path_returns_same_text() -> None:
    text = "患者无明显诱因出现胸痛，伴大汗。"
    out, counts = MASK(text)
    assert out is text and counts == Counter()


# --- properties --------------------------------------------------------------------------------

_PIECES = st.one_of(
    st.text(alphabet="0123456789 -.:@+()xX", max_size=12),
    st.text(alphabet="abc中文，。", max_size=4),
    st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
    st.from_regex(r"[0-9]{12,18}", fullmatch=True).map(luhn_complete),
    st.from_regex(r"[1-8][0-9]{5}(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|1[0-9])[0-9]{3}",
                  fullmatch=True).map(cn_id),
    st.sampled_from(["a@b.cn", "192.168.0.1", "fe80::1", "+44 20 7946 0958", "010-12345678",
                     "4111 1111 1111 1111"]),
)
_TEXT = st.lists(_PIECES, max_size=12).map("".join)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_masking_is_idempotent(text: str) -> None:
    once, _ = MASK(text)
    assert MASK(once)[0] == once


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_no_luhn_valid_card_number_survives(text: str) -> None:
    out, _ = MASK(text)
    for run in re.findall(r"(?<![0-9])[0-9]{13,19}(?![0-9])", out):
        assert not luhn_valid(run), (text, out)


# --- nested values (record metadata) --------------------------------------------------------

def test_mask_values_masks_every_string_leaf_and_integer_lookalikes() -> None:
    value = {"patient_email": "a.b@example.com", "contact": ["call 13812345678", {"id": VALID_ID}],
             "phone": 13812345678, "age": 54, "weight": 72.5, "ok": True, "none": None}
    out, counts = MASK.mask_values(value)
    assert out == {"patient_email": "<EMAIL>", "contact": ["call <PHONE>", {"id": "<ID_CARD>"}],
                   "phone": "<PHONE>", "age": 54, "weight": 72.5, "ok": True, "none": None}
    assert counts == Counter({"email": 1, "phone": 2, "cn_id": 1})
    assert value["contact"][0] == "call 13812345678"          # the input is not changed
