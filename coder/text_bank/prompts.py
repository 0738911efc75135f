"""ATG prompts (versioned) and the parsers of their answers.

The questions are METHOD.md's; the one-shot example answers are ours. A re-ask
after a malformed answer adds a format reminder, which also gives it a new
cache key.
"""

from __future__ import annotations

import re

PROMPT_VERSION = "coder-atg-1"
SYSTEM = "You are a precise visual expert. Answer only with short bulleted lists, one item per line, starting with '- '."
REMINDER = "\nAnswer ONLY with a bulleted list: one short item per line, each starting with '- '."

_ATT_EXAMPLE = ("What are useful visual features for distinguishing a lemur in a photo?",
                "- four-limbed primate\n- black, grey, white, brown or red-brown fur\n- wet and hairless nose with"
                " curved nostrils\n- long tail\n- large eyes\n- furry bodies\n- clawed hands and feet")
_ANA_EXAMPLE = ("What other objects are lemurs visually similar to?",
                "- monkey\n- squirrel\n- raccoon\n- sloth\n- cat")
_PAIR_EXAMPLE = ("What are different visual features between the lemur and the monkey in a photo? "
                 "Focus on their key differences.",
                 "lemur:\n- pointed fox-like snout\n- large reflective eyes\n- long striped bushy tail\n"
                 "monkey:\n- flat face with a short muzzle\n- forward-facing smaller eyes\n- thin or no tail")


def _one_shot(example: tuple[str, str], question: str, attempt: int) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": example[0]}, {"role": "assistant", "content": example[1]},
            {"role": "user", "content": question + (REMINDER * min(attempt, 1)) + (f" (try {attempt + 1})" if attempt > 1 else "")}]


def att_messages(c: str, attempt: int = 0) -> list[dict]:
    return _one_shot(_ATT_EXAMPLE, f"What are useful visual features for distinguishing a {c} in a photo?", attempt)


def ana_messages(c: str, exclude: list[str] = (), attempt: int = 0) -> list[dict]:
    q = f"What other objects are {c} visually similar to?"
    if exclude:
        q += " Do not name any of: " + ", ".join(exclude) + "."
    return _one_shot(_ANA_EXAMPLE, q, attempt)


def pair_messages(c: str, o: str, attempt: int = 0) -> list[dict]:
    q = (f"What are different visual features between the {c} and the {o} in a photo? Focus on their key "
         f"differences. Give a '{c}:' list and a '{o}:' list.")
    return _one_shot(_PAIR_EXAMPLE, q, attempt)


_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+(.*\S)\s*$")


def parse_bullets(text: str, max_len: int = 120) -> list[str]:
    """Items of a bulleted/numbered list; other lines ignored. Unique, trailing period dropped."""
    items = []
    for line in text.splitlines():
        m = _BULLET.match(line)
        if m:
            item = m.group(1).strip().rstrip(".").strip()
            if item and len(item) <= max_len:
                items.append(item)
    return list(dict.fromkeys(items))


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())


def parse_pair(text: str, c: str, o: str) -> tuple[list[str], list[str]] | None:
    """(c's features, o's features) from an answer with one header line per class; None if malformed."""
    sections: dict[str, list[str]] = {c: [], o: []}
    current = None
    nc, no = _norm(c), _norm(o)
    for line in text.splitlines():
        if _BULLET.match(line):
            if current is not None:
                sections[current].extend(parse_bullets(line))
            continue
        head = _norm(line)
        if not head:
            continue
        padded = f" {head} "
        has_c, has_o = f" {nc} " in padded, f" {no} " in padded  # whole words: "cat" is not in "caterpillar"
        if has_c and has_o:  # "the cat and the dog differ..." - take the one named first
            current = c if padded.index(f" {nc} ") <= padded.index(f" {no} ") else o
        elif has_c or has_o:
            current = c if has_c else o
    if not sections[c] or not sections[o]:
        return None
    return list(dict.fromkeys(sections[c])), list(dict.fromkeys(sections[o]))
