"""Rebuild lm-eval's HellaSwag prompts from the derived 6-lines-per-task text file.

The local file (`hellaswag_val_full.txt.bz2`, made by klosax/hellaswag_text_data's
`extract_hellaswag.cpp` from rowanz/hellaswag `hellaswag_val.jsonl`) stores, per task:

    <activity_label>: <ctx>
    <gold label 0-3>
    <ending 0> ... <ending 3>

where the extractor applied this cleanup to the label, to `ctx` and to each ending: delete the
tags `[header]`, `[step]` and `[substeps]`, replace " [title]" with ". ", delete "[title] " and
"[title].", replace double spaces once, then drop one leading and one trailing space.

lm-eval 0.4.13 (`tasks/hellaswag/utils.py`) builds instead

    query   = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
    choices = [preprocess(ending) for ending in endings]

where preprocess strips the text, replaces " [title]" with ". ", deletes every "[...]" by regex
and replaces double spaces once. Rebuilding that from the file:

- ActivityNet tasks are the first 3243 of the validation set, and their `ctx` never ends with
  ".". It ends in an incomplete noun phrase, the hub's `ctx_b`, which the file joins to `ctx_a`
  unmarked. The text after the last sentence end is taken as `ctx_b` and capitalized with
  `str.capitalize()` as lm-eval does. This is exact whenever that text is the original `ctx_b`.
- WikiHow tasks (`ctx` ends with "."; `ctx_b` is empty on the hub) need no change.
- Brackets other than the four tags survive the extractor; they are deleted here with
  lm-eval's regex followed by its double-space replacement.

What cannot be rebuilt (pinned in tests/test_zeroshot_tasks.py):

- An ending that began with a tag (for example "[substeps] Include ...") keeps, in lm-eval, the
  space that follows the deleted tag, so its continuation is "  Include ..." with two spaces.
  The extractor dropped that space, so the local continuation is " Include ...". The file
  does not record which endings began with a tag.
- Where the original `ctx_b` itself contains a sentence end, or `ctx_a` does not end with one,
  the guessed `ctx_b` is wrong. `str.capitalize()` lowercases all but the first letter, so the
  rebuilt query then differs from lm-eval's in letter case only.
"""

from __future__ import annotations

import re

HELLASWAG_LINES_PER_TASK = 6

# A sentence end: terminal punctuation, optional closing quotes or brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")
_BRACKETED = re.compile(r"\[.*?\]")


def split_context(ctx: str) -> tuple[str, str]:
    """Split a local ActivityNet context into the hub's (ctx_a, ctx_b); WikiHow contexts get ctx_b "".

    ctx_b is guessed as the text after the last sentence end, because the file joined the two
    parts with a single space and kept no boundary.
    """
    if ctx.endswith("."):
        return ctx, ""
    boundaries = list(_SENTENCE_END.finditer(ctx))
    if not boundaries:
        return "", ctx
    cut = boundaries[-1].end()
    return ctx[:cut].rstrip(), ctx[cut:]


def delete_brackets(text: str) -> str:
    """Apply lm-eval's bracket deletion and double-space replacement to text the extractor left brackets in."""
    if "[" not in text:
        return text
    return _BRACKETED.sub("", text).replace("  ", " ")


def build_query(activity_label: str, ctx_a: str, ctx_b: str) -> str:
    """Return lm-eval's HellaSwag query for already-extracted text parts."""
    # lm-eval joins with spaces even when ctx_a or ctx_b is empty, then strips the text and
    # replaces the resulting double space, so an empty part adds no space here.
    parts = [part for part in (ctx_a, ctx_b.capitalize()) if part]
    return delete_brackets(f"{activity_label}: " + " ".join(parts))


def parse_hellaswag_task(lines: list[str]) -> dict:
    """Turn one task's six lines into a row with lm-eval's fields (query, choices, label, gold).

    Also keeps the hub fields that can be rebuilt (activity_label, ctx, ctx_a, ctx_b, endings)
    and `source`, the inferred origin ("activitynet" or "wikihow"). Raises ValueError on a
    malformed task.
    """
    header, label, *endings = lines
    activity_label, separator, ctx = header.partition(": ")
    if not separator or not activity_label or not ctx:
        raise ValueError(f"expected '<activity label>: <context>', got {header[:80]!r}")
    if label not in {"0", "1", "2", "3"}:
        raise ValueError(f"gold label {label!r} is not one of 0, 1, 2, 3")
    if len(endings) != 4 or any(not ending.strip() for ending in endings):
        raise ValueError("expected four non-empty endings after the label")

    ctx_a, ctx_b = split_context(ctx)
    return {
        "activity_label": activity_label,
        "ctx": ctx,
        "ctx_a": ctx_a,
        "ctx_b": ctx_b,
        "endings": list(endings),
        "label": label,
        "source": "activitynet" if ctx_b else "wikihow",
        "query": build_query(activity_label, ctx_a, ctx_b),
        "choices": [delete_brackets(ending) for ending in endings],
        "gold": int(label),
    }
