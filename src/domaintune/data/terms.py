"""Domain terminology normalization for `domaintune prepare`: every variant of a term ("heart
attack", "MI", "心梗") is rewritten to its canonical form ("myocardial infarction", "心肌梗死"),
and every occurrence is counted for the prepare report.

The dictionary is a CSV (``canonical,variant`` rows, header optional) or a YAML mapping
(``{canonical: [variants...]}`` or ``{canonical: variant}``). Terms that begin or end with an ASCII
letter or digit match on ASCII word boundaries ("MI" is not found in "MINE", but is in
"患者MI入院"); Chinese terms match anywhere. Matching is case-insensitive and the longest term wins.

Speed does not depend on the dictionary's size. Terms are grouped by an anchor: their first ASCII
word ("heart" for "heart attack") or else their first character ("心" for "心梗"). One C-level
pass lists the text's words and anchor characters; a set intersection says which anchors occur
(usually none: the text is returned at once), and only those anchors' regexes run, each a trie
that starts with a literal `re` can search for quickly. (One alternation over all terms would be
simpler, but `re` tries its alternatives one by one at every position: hundreds of µs per text
for a thousand terms.)

    >>> terms = TermDict.from_mapping({"myocardial infarction": ["heart attack", "MI"]})
    >>> terms.normalize("Heart attack (MI), not MINE.")[0]
    'myocardial infarction (myocardial infarction), not MINE.'
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import yaml

from domaintune.errors import UserError

# Letters, digits and underscore of ASCII: the characters a word boundary is about.
_WORD = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_WORD_AFTER = "(?![a-z0-9_])"  # matched against lower-cased text
_WORDS = re.compile("[a-z0-9_]+")
_FEW_WORDS = 24
_YAML_NULL = "tag:yaml.org,2002:null"

# (canonical, variant or None for "just the canonical term", line in the file or None)
_Entry = tuple[str, str | None, int | None]


class TermDict:
    """A terminology dictionary: canonical terms and their variants.

    Build it with `TermDict.from_file` or `TermDict.from_mapping`.

    Args:
        entries: ``(canonical, variant or None, line or None)`` triples.
        file: the file the entries came from, for error messages.

    Raises:
        UserError: an empty term, or one form listed for two canonical terms (a variant under
            two terms, or a variant that is itself another canonical term; case is ignored).

    Example:
        >>> terms = TermDict.from_mapping({"心肌梗死": ["心梗", "急性心梗"]})
        >>> terms.normalize("急性心梗患者，心肌梗死。")
        ('心肌梗死患者，心肌梗死。', Counter({('心肌梗死', '急性心梗'): 1, ('心肌梗死', '心肌梗死'): 1}))
    """

    def __init__(self, entries: Iterable[_Entry], file: str | None = None) -> None:
        # lower-cased form -> (canonical, the form as listed)
        self._lookup: dict[str, tuple[str, str]] = {}
        self._terms: dict[str, None] = {}  # an ordered set
        for canonical, variant, line in entries:
            canonical = _checked(canonical, file, line)
            self._add(canonical, canonical, file, line)
            if variant is not None:
                self._add(canonical, _checked(variant, file, line), file, line)
        self._compile()

    @classmethod
    def from_file(cls, path: str) -> TermDict:
        """Load a dictionary from a CSV or YAML file.

        Args:
            path: a ``.csv`` file with ``canonical,variant`` rows (several rows per canonical
                term; a header row ``canonical,variant`` is optional; a row with only a
                canonical term is allowed), or a ``.yaml``/``.yml`` file mapping each canonical
                term to a list of variants or to one variant.

        Returns:
            The dictionary.

        Raises:
            UserError: the file is missing, not UTF-8, malformed, or lists a variant twice; the
                message gives the file and line.
        """
        file = Path(path)
        if not file.is_file():
            raise UserError("term dictionary not found", file=str(path),
                            hint="check data.terms in the recipe")
        suffix = file.suffix.lower()
        if suffix not in (".csv", ".yaml", ".yml"):
            raise UserError(f"term dictionary must be .csv, .yaml or .yml, not {suffix!r}", file=str(path))
        try:
            text = file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as err:
            raise UserError(f"term dictionary is not UTF-8 ({err.reason})", file=str(path),
                            hint="save it as UTF-8, e.g. iconv -f gbk -t utf-8") from err
        entries = list(_read_csv(text, str(path)) if suffix == ".csv" else _read_yaml(text, str(path)))
        return cls(entries, file=str(path))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Iterable[str]]) -> TermDict:
        """Build a dictionary from ``{canonical: variants}`` (a single variant may be a str).

        Args:
            mapping: canonical term to its variants.

        Returns:
            The dictionary.

        Raises:
            UserError: a term is empty or a variant is listed twice.

        Example:
            >>> TermDict.from_mapping({"高血压": "高血压病"}).terms
            ['高血压']
        """
        def entries() -> Iterator[_Entry]:
            for canonical, variants in mapping.items():
                yield canonical, None, None
                for variant in [variants] if isinstance(variants, str) else variants or ():
                    yield canonical, variant, None
        return cls(entries())

    @property
    def terms(self) -> list[str]:
        """The canonical terms, in the order they were first listed."""
        return list(self._terms)

    def normalize(self, text: str) -> tuple[str, Counter[tuple[str, str]]]:
        """Replace every variant in `text` by its canonical term.

        Args:
            text: any text.

        Returns:
            The normalized text, and a count per ``(canonical, form)`` of what was seen, where
            form is the variant (or the canonical term itself) as listed in the dictionary.
            Canonical terms are counted but left as written.
        """
        counts: Counter[tuple[str, str]] = Counter()
        lowered = text.lower()
        if len(lowered) != len(text):  # "İ".lower() is two characters; keep offsets aligned
            lowered = "".join(ch if len(ch.lower()) != 1 else ch.lower() for ch in text)
        anchors = self._anchors_in(lowered)
        if not anchors:
            return text, counts
        spans = sorted((span for a in anchors for span in self._spans(a, lowered)),
                       key=lambda span: (span[0], -span[1]))
        parts: list[str] = []
        last = 0
        for start, end in spans:
            if start < last:
                continue  # overlaps a term already taken (leftmost, then longest, wins)
            canonical, form = self._lookup[lowered[start:end]]
            counts[(canonical, form)] += 1
            parts += (text[last:start], canonical if form != canonical else text[start:end])
            last = end
        parts.append(text[last:])
        return "".join(parts), counts

    def _compile(self) -> None:
        groups: dict[str, list[str]] = {}
        for key in self._lookup:
            word = _WORDS.match(key)
            groups.setdefault(word.group() if word else key[0], []).append(key)
        self._patterns = {anchor: re.compile(_trie_pattern(keys)) for anchor, keys in groups.items()}
        self._words = frozenset(a for a in groups if a[0] in _WORD)
        # Listing the text's words costs ~3-5 µs; with few anchor words one regex over them
        # finds the ones present faster (~1 µs). Its cost grows with the number of anchors (`re`
        # tries alternatives one by one), so large dictionaries list the words instead.
        few = 0 < len(self._words) <= _FEW_WORDS
        self._word_filter = re.compile(_trie_pattern(self._words)) if few else None
        self._chars = frozenset(a for a in groups if a[0] not in _WORD)
        chars = "".join(re.escape(c) for c in sorted(self._chars))
        self._char_finder = re.compile(f"[{chars}]") if chars else None
        self._ascii_chars = any(c.isascii() for c in self._chars)

    def _anchors_in(self, lowered: str) -> set[str]:
        found: set[str] = set()
        if self._word_filter is not None:
            # Matches may start inside a word (a superset), but each ends at a word's end, so
            # none hides an anchor that starts a word.
            found.update(m.group() for m in self._word_filter.finditer(lowered))
        elif self._words:
            found.update(self._words.intersection(_WORDS.findall(lowered)))
        if self._char_finder is not None and (self._ascii_chars or not lowered.isascii()):
            found.update(self._chars.intersection(self._char_finder.findall(lowered)))
        return found

    def _spans(self, anchor: str, lowered: str) -> Iterator[tuple[int, int]]:
        """Every match of the terms under `anchor`, including overlapping ones."""
        pattern = self._patterns[anchor]
        check_start = anchor[0] in _WORD
        m = pattern.search(lowered)
        while m is not None:
            start = m.start()
            # The leading word boundary is checked here: a lookbehind in front of the pattern
            # would stop `re` from searching for its literal prefix.
            if not (check_start and start and lowered[start - 1] in _WORD):
                yield start, m.end()
            m = pattern.search(lowered, start + 1)

    def _add(self, canonical: str, form: str, file: str | None, line: int | None) -> None:
        key = form.lower()
        seen = self._lookup.get(key)
        if seen is None:
            self._lookup[key] = (canonical, form)
        elif seen[0] != canonical:
            raise UserError(f"{form!r} is listed for both {seen[0]!r} and {canonical!r}", file=file,
                            line=line, hint="list each variant under one canonical term only")
        self._terms[canonical] = None


def _checked(term: object, file: str | None, line: int | None) -> str:
    if not isinstance(term, str) or not term.strip():
        raise UserError(f"empty or non-text term {term!r}", file=file, line=line)
    return term.strip()


def _trie_pattern(keys: Iterable[str]) -> str:
    trie: dict = {}
    for key in keys:
        node = trie
        for ch in key:
            node = node.setdefault(ch, {})
        node[""] = {}  # end of a term
    return _node_pattern(trie, "")


def _node_pattern(node: dict, last: str) -> str:
    # Longer terms come before the end of this one, so the regex prefers the longest match
    # and backtracks to a shorter term when a longer one fails its word boundary.
    alts = [re.escape(ch) + _node_pattern(child, ch) for ch, child in node.items() if ch]
    if "" in node:
        alts.append(_WORD_AFTER if last in _WORD else "")
    return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"


def _read_csv(text: str, file: str) -> Iterator[_Entry]:
    reader = csv.reader(text.splitlines())
    first = True
    for row in reader:
        cells = [cell.strip() for cell in row]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        if first and [c.lower() for c in cells] == ["canonical", "variant"]:
            first = False
            continue
        first = False
        if len(cells) > 2 or not cells[0]:
            raise UserError(f"expected 'canonical,variant', got {row!r}", file=file, line=reader.line_num,
                            hint="one variant per row; quote terms that contain a comma")
        yield cells[0], cells[1] if len(cells) == 2 else None, reader.line_num


def _read_yaml(text: str, file: str) -> Iterator[_Entry]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise UserError(f"bad YAML: {getattr(err, 'problem', None) or err}", file=file,
                        line=mark.line + 1 if mark else None) from err
    if not isinstance(root, yaml.MappingNode):
        raise UserError("term dictionary must map each canonical term to its variants",
                        file=file, line=root.start_mark.line + 1 if root else None,
                        hint="write e.g. '心肌梗死: [心梗, 急性心梗]'")
    for key, value in root.value:
        line = key.start_mark.line + 1
        if not isinstance(key, yaml.ScalarNode):
            raise UserError("a canonical term must be plain text", file=file, line=line)
        yield key.value, None, line
        items = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for item in items:
            if not isinstance(item, yaml.ScalarNode):
                raise UserError(f"variants of {key.value!r} must be text or a list of text",
                                file=file, line=item.start_mark.line + 1)
            if item.tag != _YAML_NULL:
                yield key.value, item.value, item.start_mark.line + 1
