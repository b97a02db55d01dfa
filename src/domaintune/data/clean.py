"""Text cleaning for `domaintune prepare`: Unicode NFKC that leaves Chinese text intact, control
characters, whitespace, and the user's own regex rules.

`Cleaner(rules)` compiles everything once. A call on a typical 300-character text with nothing to
do costs one C-level character-class scan (does the text hold a control character, a stray
``\\r`` or a character NFKC would change?) plus a few ``in`` checks for whitespace runs; only
texts that need it go on to the slower rewriting steps.

    >>> Cleaner(CleanRules())("ＡＢＣ１２３，ﬁne\\r\\n\\n\\n\\nok  ")
    'ABC123，fine\\n\\nok'
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from domaintune.errors import UserError

# Characters NFKC would fold to ASCII or split up, but that belong to Chinese typography, so they
# stay as they are: the ideographic space, full-width punctuation (，！？；：（）～ and the rest of
# FF01-FF60, including ｜ from DeepSeek control tokens such as <｜User｜>, which must stay
# detectable), full-width currency signs (￥), the ellipsis (……), and circled/parenthesized
# enumerators (①, ⑴), which would otherwise merge into the following text as bare digits.
# Full-width letters and digits (FF10-FF19, FF21-FF3A, FF41-FF5A) are not here: they normalize.
_PROTECTED_RANGES = ((0x3000, 0x3000), (0x2026, 0x2026), (0x2460, 0x24FF), (0xFF01, 0xFF0F),
                     (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF60), (0xFFE0, 0xFFE6))
# C0 and C1 controls except \t and \n (\r becomes \n first), DEL, the zero-width space and the
# BOM. U+200D (zero-width joiner) stays: it holds emoji sequences together.
_CONTROL_RANGES = ((0x00, 0x08), (0x0B, 0x1F), (0x7F, 0x9F), (0x200B, 0x200B), (0xFEFF, 0xFEFF))
# Supplementary planes are not tabulated; any character there takes the careful path.
_ASTRAL = (0x10000, 0x10FFFF)


def _char_class(ranges: list[tuple[int, int]] | tuple[tuple[int, int], ...]) -> str:
    items = (f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in ranges)
    return "[" + "".join(items) + "]"


_PROTECTED_SPLIT = re.compile(f"({_char_class(_PROTECTED_RANGES)}+)")
_CONTROL = re.compile(_char_class(_CONTROL_RANGES) + "+")
_SPACE_RUN = re.compile("[ \t]{2,}|\t")
_NEWLINE_RUN = re.compile("\n{3,}")


@dataclass(frozen=True)
class CleanRules:
    """What `Cleaner` does to each message content.

    Attributes:
        nfkc: Unicode NFKC (full-width Latin letters and digits to ASCII, ligatures split,
            compatibility forms folded), keeping Chinese punctuation and ｜ as they are.
        fold_whitespace: runs of spaces/tabs become one space, 3+ newlines become 2, trailing
            spaces of each line and both ends of the text are stripped. Never adds a space, and
            never removes the last space between two characters (CJK or not).
        strip_control: remove C0/C1 control characters except \\n and \\t, plus U+200B and U+FEFF.
        regex: user rules ``(pattern, replacement)``, applied in order after the built-ins.
    """

    nfkc: bool = True
    fold_whitespace: bool = True
    strip_control: bool = True
    regex: tuple[tuple[str, str], ...] = ()


class Cleaner:
    """Clean one text according to `CleanRules`; build once, call per message content.

    Stray ``\\r`` always becomes ``\\n`` (readers already turn CRLF into LF).

    Args:
        rules: what to do.

    Raises:
        UserError: a user regex (or its replacement) does not compile; the message names the
            pattern and the `re` error.

    Example:
        >>> clean = Cleaner(CleanRules(regex=((r" ?\\[\\d+\\]", ""),)))
        >>> clean("心梗 [12] 患者\\u200b，  ＭＲＩ正常。")
        '心梗 患者， MRI正常。'
    """

    def __init__(self, rules: CleanRules) -> None:
        self.rules = rules
        self._suspect = _suspect_pattern(rules.nfkc, rules.strip_control)
        self._user = [_compile_rule(pattern, repl) for pattern, repl in rules.regex]

    def __call__(self, text: str) -> str:
        """Return the cleaned text."""
        if self._suspect.search(text) is not None:
            if "\r" in text:
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if self.rules.strip_control:
                text = _CONTROL.sub("", text)
            if self.rules.nfkc:
                text = normalize_nfkc(text)
        if self.rules.fold_whitespace:
            text = fold_whitespace(text)
        for pattern, repl in self._user:
            text = pattern.sub(repl, text)
        return text


def normalize_nfkc(text: str) -> str:
    """NFKC-normalize `text`, keeping Chinese punctuation and the other protected characters.

    Args:
        text: any text.

    Returns:
        The text with every run between protected characters NFKC-normalized.

    Example:
        >>> normalize_nfkc("<｜User｜>ＡＢＣ，ﬁ")
        '<｜User｜>ABC，fi'
    """
    if unicodedata.is_normalized("NFKC", text) or _suspect_pattern(True, False).search(text) is None:
        return text
    pieces = _PROTECTED_SPLIT.split(text)
    # Even indexes hold the text between protected runs, odd ones the runs themselves.
    pieces[::2] = [unicodedata.normalize("NFKC", piece) for piece in pieces[::2]]
    return "".join(pieces)


def fold_whitespace(text: str) -> str:
    """Fold spaces and blank lines as `CleanRules.fold_whitespace` describes.

    Args:
        text: text whose line breaks are already ``\\n``.

    Returns:
        The folded text.

    Example:
        >>> fold_whitespace("  中文  测试 \\n\\n\\n\\nok\\t ")
        '中文 测试\\n\\nok'
    """
    if "\t" in text or "  " in text:
        text = _SPACE_RUN.sub(" ", text)
    if " \n" in text:
        text = text.replace(" \n", "\n")  # after the fold above, a line ends in one space at most
    if "\n\n\n" in text:
        text = _NEWLINE_RUN.sub("\n\n", text)
    return text.strip(" \n")


@functools.cache
def _suspect_pattern(nfkc: bool, control: bool) -> re.Pattern[str]:
    """A character class of everything the repair steps might change (always including \\r)."""
    ranges = [(0x0D, 0x0D)]
    if control:
        ranges += _CONTROL_RANGES
    if nfkc:
        ranges += _ranges(_nfkc_unstable_bmp()) + [_ASTRAL]
    return re.compile(_char_class(ranges))


def _nfkc_unstable_bmp() -> set[int]:
    """BMP characters that may change under NFKC, less the protected ones (~25 ms, done once).

    A text made only of other characters passes the NFKC quick check, so it is already
    normalized: this is every character NFKC rewrites, every combining mark (reordering), and
    every character that can be the second half of a composition (NFC_QC=Maybe).
    """
    chars = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul vowels and finals
    for code in range(0x10000):
        if 0xD800 <= code < 0xE000:
            continue
        ch = chr(code)
        if unicodedata.combining(ch) or not unicodedata.is_normalized("NFKC", ch):
            chars.add(code)
        parts = unicodedata.decomposition(ch).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            chars.add(int(parts[1], 16))
    for lo, hi in _PROTECTED_RANGES:
        chars.difference_update(range(lo, hi + 1))
    return chars


def _ranges(codes: set[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for code in sorted(codes):
        if out and out[-1][1] == code - 1:
            out[-1] = (out[-1][0], code)
        else:
            out.append((code, code))
    return out


def _compile_rule(pattern: str, repl: str) -> tuple[re.Pattern[str], str]:
    try:
        compiled = re.compile(pattern)
        compiled.sub(repl, "")  # compiles the replacement template too (bad \\g<name>, \\9)
    except (re.error, IndexError) as err:
        raise UserError(f"clean regex {pattern!r} (replacement {repl!r}) does not compile: {err}",
                        hint="fix the pattern in data.clean.regex; test it with python's re") from err
    return compiled, repl
