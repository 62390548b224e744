"""The answers listed in ``docs/errors.md`` outside the case table are the code's own words.

The section "More answers" of ``docs/errors.md`` quotes the start of each sentence pixelwise
writes (errors, warnings, notes, summaries), with capitalised placeholders (PATH, N, SIZE ...)
where the code fills in a value. This test reads every string and f-string literal of
``pixelwise/`` (an f-string's values become wildcards) and checks that the literal parts of each
quoted answer occur, in order, in one of them: a reworded message fails here until its row is.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "errors.md"
SECTION = "## More answers"
HOLE = "\0"  # where an f-string puts a value
# A placeholder: a word in capitals (PATH, N, SIZE, 'NAME'), not part of a longer word.
PLACEHOLDER = re.compile(r"'?(?<![A-Za-z0-9])[A-Z][A-Z0-9_]*(?![a-z0-9])'?")
# Printed before a sentence by another literal than the sentence's own.
PREFIXES = ("error: ", "warning: ", "note: ")


def _render(node: ast.AST) -> str | None:
    """A string expression's text with a HOLE for each value; None for anything else."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else None
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else HOLE for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _render(node.left), _render(node.right)
        if left is None and right is None:
            return None
        return (left if left is not None else HOLE) + (right if right is not None else HOLE)
    return None


@lru_cache(maxsize=1)
def templates() -> tuple[str, ...]:
    found = []
    for path in sorted((ROOT / "pixelwise").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            text = _render(node)
            if text:
                found.append(text)
    return tuple(found)


def quoted_answers() -> list[str]:
    """The answer column (the first ``...`` code span of each row) of the section's tables."""
    text = DOCS.read_text()
    assert SECTION in text, f"docs/errors.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    answers = []
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith("| area") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        match = re.fullmatch(r"``\s?(.*?)\s?``", cells[1])
        assert match, f"the answer of this row is not one ``code span``: {line}"
        answers.append(match.group(1))
    return answers


def pattern(answer: str) -> re.Pattern[str]:
    # The spaces around a placeholder go with it: an optional clause the code glues to a word
    # ("its own size{asked}, so") is written "its own size SCALES, so".
    pieces = [p.strip(" ") for p in PLACEHOLDER.split(answer) if p.strip(" ")]
    return re.compile(".*?".join(re.escape(p) for p in pieces), re.DOTALL)


def found_in_code(answer: str) -> bool:
    candidates = [answer] + [answer[len(p) :] for p in PREFIXES if answer.startswith(p)]
    return any(pattern(text).search(template) for text in candidates for template in templates())


ANSWERS = quoted_answers()


def test_the_section_lists_answers():
    assert len(ANSWERS) >= 40
    assert len(set(ANSWERS)) == len(ANSWERS), "an answer is listed twice"


@pytest.mark.parametrize("answer", ANSWERS, ids=[a[:40] for a in ANSWERS])
def test_each_answer_is_written_so_in_the_code(answer):
    assert found_in_code(answer), f"no string in pixelwise/ reads {answer!r}"


def test_a_reworded_answer_is_caught():
    assert found_in_code("Checkpoint PATH is a folder without best.pt or last.pt; FIX.")
    assert not found_in_code("Checkpoint PATH is a directory without best.pt or last.pt; FIX.")
