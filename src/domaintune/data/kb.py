"""The knowledge base: entries a model reads before it answers, one lexical index for every command.

A knowledge base (KB) is a folder of plain files, no pickles:

    KB/manifest.json    format, tokenizer, sources, entry count, the sha256 of every file
    KB/entries.jsonl    one entry a line: {"id", "text", "answer", "source", "ref"}
    KB/bm25/            the BM25 index (bm25s: .npy arrays saved without pickle, JSON vocabulary)

Entries come from prepared training pairs (text = the prompt, answer = the final answer: the
default), from documents (text or Markdown cut into word windows with `data.chunk`, the
character offset kept) and from tables (a CSV row an entry, "column: value" pairs). Text is
tokenised for the index by `kb_tokens`: lower-cased words, with runs of Chinese characters
segmented by jieba, so Chinese queries find Chinese entries.

`KnowledgeBase.search` returns the top-k entries of each query by BM25 score. `exclude` leaves out
entries whose text equals the query's (after whitespace and case folding): at training time each
example is looked up with its own text excluded, so the model learns to read its neighbours, not
to copy itself or a duplicate of itself.

    kb = KnowledgeBase.build(entries_from_records(train_records), sources=["prepared/train.jsonl"])
    kb.save(Path("kb"))
    hits = KnowledgeBase.load(Path("kb")).search(["chest pain after exercise"], k=3)[0]
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domaintune.data.answers import final_answer, prompt_text
from domaintune.errors import UserError
from domaintune.files import publish_folder

FORMAT = "domaintune-kb/1"
TOKENIZER = "words+jieba/1"
MANIFEST, ENTRIES, INDEX = "manifest.json", "entries.jsonl", "bm25"
DOC_WORDS, DOC_OVERLAP = 120, 20  # document windows, in words
_CJK = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Entry:
    """One thing the model may read: `text`, and for a training pair its `answer`."""

    id: int
    text: str
    answer: str | None = None
    source: str = ""
    ref: str = ""


@dataclass(frozen=True)
class Hit:
    """A retrieved entry and its BM25 score."""

    entry: Entry
    score: float


def kb_tokens(text: str) -> list[str]:
    """Index tokens: lower-cased words; Chinese runs segmented with jieba."""
    out: list[str] = []
    for i, part in enumerate(_CJK.split(text.lower())):
        if i % 2:
            out += [t for t in _jieba().lcut(part) if t.strip()]
        else:
            out += _WORD.findall(part)
    return out


def _jieba() -> Any:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def norm_text(text: str) -> str:
    """The form two texts are compared in for `exclude`: case and whitespace folded."""
    return " ".join(text.lower().split())


# ---- entries -------------------------------------------------------------------------------------

def entries_from_records(records: Iterable[Mapping[str, Any]], source: str = "train") -> list[Entry]:
    """One entry per chat record with an answer: its prompt is the text, its final answer the answer."""
    out = []
    for i, record in enumerate(records):
        answer = final_answer(record)
        if answer is None:
            continue
        origin = (record.get("metadata") or {}).get("origin") or {}
        ref = f"{origin.get('file', '')}:{origin.get('line', i + 1)}" if origin else str(i + 1)
        out.append(Entry(len(out), prompt_text(record), answer, source, ref))
    return out


def entries_from_document(path: Path, start_id: int = 0) -> list[Entry]:
    """Windows of a text or Markdown document (`DOC_WORDS` words, `DOC_OVERLAP` shared), offsets kept."""
    from domaintune.data.chunk import chunk_by_tokens

    text = _read(path)
    out, offset = [], 0
    for piece in chunk_by_tokens(text, None, DOC_WORDS, DOC_OVERLAP):
        offset = text.find(piece, max(0, offset - len(piece)))
        if piece.strip():
            out.append(Entry(start_id + len(out), piece.strip(), None, path.name, f"offset {max(offset, 0)}"))
    return out


def entries_from_table(path: Path, start_id: int = 0) -> list[Entry]:
    """A CSV/TSV row an entry: "column: value; ..." (a code list, a terminology dictionary)."""
    out = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = csv.DictReader(fh, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        for line, row in enumerate(rows, start=2):
            text = "; ".join(f"{k}: {v}" for k, v in row.items() if k and v and v.strip())
            if text:
                out.append(Entry(start_id + len(out), text, None, path.name, f"line {line}"))
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    for line_no, line in enumerate(_read(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"not valid JSON ({exc.msg})", file=str(path), line=line_no,
                            hint="give the train.jsonl that `domaintune prepare` wrote") from None
        if isinstance(record, dict):
            out.append(record)
    return out


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError("no such file", file=str(path), hint="check the path of the knowledge-base source") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path),
                        hint="save the document as UTF-8") from None


# ---- the index -----------------------------------------------------------------------------------

class KnowledgeBase:
    """Entries and their BM25 index; `sha256` names exactly this content (runs record it)."""

    def __init__(self, entries: Sequence[Entry], retriever: Any, manifest: dict[str, Any],
                 folder: Path | None = None) -> None:
        self.entries, self.retriever, self.manifest, self.folder = list(entries), retriever, manifest, folder
        self._norms = [norm_text(e.text) for e in self.entries]

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def build(cls, entries: Sequence[Entry], sources: Sequence[str] = ()) -> KnowledgeBase:
        """Index `entries` (ids must be 0..n-1 in order).

        Raises:
            UserError: no entries.
        """
        import bm25s

        if not entries:
            raise UserError("the knowledge base would be empty",
                            hint="give prepared records with answers, documents with text, or a CSV with rows")
        if any(e.id != i for i, e in enumerate(entries)):
            raise ValueError("entry ids must be 0..n-1 in order")
        retriever = bm25s.BM25()
        retriever.index([kb_tokens(e.text) or [""] for e in entries], show_progress=False)
        manifest = {"format": FORMAT, "tokenizer": TOKENIZER, "entries": len(entries), "sources": list(sources),
                    "sha256": content_sha256(entries)}
        return cls(entries, retriever, manifest)

    def search(self, queries: Sequence[str], k: int, exclude: Sequence[str | None] | None = None) -> list[list[Hit]]:
        """The `k` best entries for each query (fewer when fewer match), best first.

        Args:
            queries: the texts to look up.
            k: entries per query.
            exclude: per query, a text whose equal entries (`norm_text`) are left out (None: none).
        """
        out = []
        for i, query in enumerate(queries):
            ids = self.retriever.get_tokens_ids(kb_tokens(query))
            if not ids:
                out.append([])
                continue
            scores = self.retriever.get_scores_from_ids(ids)
            skip = norm_text(exclude[i]) if exclude is not None and exclude[i] is not None else None
            out.append(self._top(scores, k, skip))
        return out

    def _top(self, scores: np.ndarray, k: int, skip: str | None) -> list[Hit]:
        """The `k` best positive scores, ties broken by id (lower first), `skip` texts left out."""
        want = min(len(scores), k + 8 if skip is not None else k)
        if want < len(scores):  # every entry tied with the want-th best is a candidate
            kth = np.partition(-scores, want - 1)[want - 1]
            candidates = np.flatnonzero(-scores <= kth)
        else:
            candidates = np.arange(len(scores))
        order = candidates[np.lexsort((candidates, -scores[candidates]))]
        hits = []
        for j in order:
            if scores[j] <= 0:
                return hits  # no other entry shares a word with the query
            if skip is not None and self._norms[j] == skip:
                continue
            hits.append(Hit(self.entries[j], float(scores[j])))
            if len(hits) == k:
                return hits
        if len(candidates) < len(scores):  # many duplicates of the query were skipped: look further
            return self._top_all(scores, k, skip)
        return hits

    def _top_all(self, scores: np.ndarray, k: int, skip: str | None) -> list[Hit]:
        order = np.lexsort((np.arange(len(scores)), -scores))
        hits = [Hit(self.entries[j], float(scores[j])) for j in order if scores[j] > 0 and self._norms[j] != skip]
        return hits[:k]

    # ---- files -----------------------------------------------------------------------------------
    def save(self, folder: Path) -> KnowledgeBase:
        """Write the KB into `folder` whole or not at all (a sibling temp folder renamed into place)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with (tmp / ENTRIES).open("w", encoding="utf-8") as fh:
                for entry in self.entries:
                    fh.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
            self.retriever.save(str(tmp / INDEX), allow_pickle=False)
            files = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            self.manifest = {**self.manifest, "files": files}
            (tmp / MANIFEST).write_text(json.dumps(self.manifest, indent=2, ensure_ascii=False) + "\n",
                                        encoding="utf-8")
            publish_folder(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.folder = folder
        return self

    @classmethod
    def load(cls, folder: Path) -> KnowledgeBase:
        """Read a KB, checking its format, tokenizer and every file's hash.

        Raises:
            UserError: not a KB folder, another format or tokenizer, a changed or missing file.
        """
        import bm25s

        folder = Path(folder)
        manifest = _manifest(folder)
        for name, digest in manifest["files"].items():
            path = folder / name
            if not path.is_file() or _sha256(path) != digest:
                raise UserError(f"knowledge-base file {name} is missing or changed since it was built",
                                file=str(folder), hint="build it again with `domaintune kb build`")
        entries = [Entry(**json.loads(line)) for line in
                   (folder / ENTRIES).read_text(encoding="utf-8").split("\n") if line.strip()]
        if content_sha256(entries) != manifest["sha256"]:
            raise UserError("the knowledge base's entries do not match its manifest", file=str(folder),
                            hint="build it again with `domaintune kb build`")
        retriever = bm25s.BM25.load(str(folder / INDEX), load_corpus=False, allow_pickle=False)
        return cls(entries, retriever, manifest, folder)


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError("not a knowledge base (no manifest.json)", file=str(folder),
                        hint="build one with `domaintune kb build SOURCES -o KB/`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the manifest ({exc})", file=str(path), hint="build the knowledge base again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or "sha256" not in manifest:
        raise UserError("the manifest lists no files or no sha256", file=str(path), hint="build the knowledge base again")
    if manifest.get("format") != FORMAT:
        raise UserError(f"knowledge-base format {manifest.get('format')!r} is not {FORMAT!r}", file=str(path),
                        hint="build it again with this version of domaintune")
    if manifest.get("tokenizer") != TOKENIZER:
        raise UserError(f"the knowledge base was indexed with tokenizer {manifest.get('tokenizer')!r}, "
                        f"this version searches with {TOKENIZER!r}", file=str(path),
                        hint="build it again with `domaintune kb build`")
    return manifest


def neighbour_votes(kb: KnowledgeBase, queries: Sequence[str], k: int) -> list[dict[str, float]]:
    """Per query, a distribution over answers: the answers of its `k` best entries (training pairs
    only), the entry at rank r voting 1/r, normalised to sum to 1 ({} when no entry with an answer
    matches). Rank weights, not BM25 scores: scores are not comparable across queries."""
    votes = []
    for hits in kb.search(queries, k):
        vote: dict[str, float] = {}
        for rank, hit in enumerate([h for h in hits if h.entry.answer is not None], start=1):
            answer = hit.entry.answer.strip()
            vote[answer] = vote.get(answer, 0.0) + 1.0 / rank
        total = sum(vote.values())
        votes.append({a: w / total for a, w in vote.items()} if total else {})
    return votes


def content_sha256(entries: Sequence[Entry]) -> str:
    """The hash that names a knowledge base: its entries, format and tokenizer (not the index bytes)."""
    digest = hashlib.sha256(f"{FORMAT}\n{TOKENIZER}\n".encode())
    for entry in entries:
        digest.update(json.dumps(asdict(entry), ensure_ascii=False, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_kb(sources: Sequence[str | Path], out: Path) -> KnowledgeBase:
    """`domaintune kb build`: entries from each source by its kind, indexed and saved into `out`.

    A prepared folder (holds train.jsonl) or a .jsonl of chat records gives training pairs; a
    .csv/.tsv file gives table rows; .txt and .md files give document windows.

    Raises:
        UserError: a missing or unreadable source, or nothing to index.
    """
    entries: list[Entry] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            path = path / "train.jsonl"
        if not path.is_file():
            raise UserError("no such file or prepared folder", file=str(source),
                            hint="give a prepared folder, a .jsonl of chat records, a .csv table or .txt/.md files")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            found = entries_from_records(_jsonl(path), source=path.name)
            found = [Entry(len(entries) + i, e.text, e.answer, e.source, e.ref) for i, e in enumerate(found)]
        elif suffix in (".csv", ".tsv"):
            found = entries_from_table(path, start_id=len(entries))
        else:
            found = entries_from_document(path, start_id=len(entries))
        entries += found
    return KnowledgeBase.build(entries, sources=[str(s) for s in sources]).save(out)
