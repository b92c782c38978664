"""Prompts of real text for the benchmarks: the licences in /usr/share/common-licenses.

``Prompts(ids).take(n)`` hands out windows of exactly ``n`` tokens, each starting with a
token that no window it handed out before started with: a prefix cache (the engine's,
llama-server's) matches from the first token, so none can serve any part of one prompt
from another, and a benchmark measures prefill where it means to.

``speculation_tasks`` are chat prompts grounded in their input (copy, edit, rewrite,
summarize licence text), where prompt-lookup drafts have something to find, and a
free-form story, where they have not.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LICENCES", "Prompts", "licence_ids", "speculation_tasks"]

LICENCES = Path("/usr/share/common-licenses")
# distinct texts (GPL, LGPL and GFDL are symlinks to some of these)
TEXTS = ("GPL-3", "Apache-2.0", "LGPL-2.1", "MPL-2.0", "GFDL-1.3", "GPL-2", "MPL-1.1")
STRIDE = 97  # tokens between candidate prompt starts
STORY = "Write a long story about a lighthouse keeper who finds a message in a bottle."


class Prompts:
    """Windows of licence text as token ids, each starting with a token no earlier window
    started with: no prefix cache can serve any part of one from another."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids
        self.cursor = 0
        self.firsts: set[int] = set()

    def take(self, n: int) -> list[int]:
        for _ in range(2 * len(self.ids)):
            if self.cursor + n > len(self.ids):
                self.cursor = (self.cursor + 1) % STRIDE  # wrap, one token further on
            start, self.cursor = self.cursor, self.cursor + STRIDE
            if self.ids[start] not in self.firsts:
                self.firsts.add(self.ids[start])
                return self.ids[start:start + n]
        raise ValueError(f"no more {n}-token prompts with a new first token")


def licence_ids(folder: Path) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    text = "\n\n".join((LICENCES / name).read_text(encoding="utf-8") for name in TEXTS)
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def excerpt(name: str, marker: str, chars: int) -> str:
    """Paragraphs of a licence from ``marker``, lines joined, about ``chars`` long."""
    text = (LICENCES / name).read_text(encoding="utf-8")
    paragraphs = [" ".join(p.split()) for p in text[text.index(marker):].split("\n\n")]
    out: list[str] = []
    for paragraph in filter(None, paragraphs):
        out.append(paragraph)
        if sum(map(len, out)) >= chars:
            break
    return "\n\n".join(out)


def with_typos(text: str) -> str:
    swaps = {"the": "teh", "and": "adn", "software": "sofware", "freedom": "freedum",
             "program": "progam", "you": "yuo"}
    return " ".join(swaps.get(w, w) if i % 3 == 0 else w for i, w in enumerate(text.split(" ")))


def speculation_tasks(quick: bool) -> list[tuple[str, str]]:
    copy = excerpt("Apache-2.0", "2. Grant of Copyright License", 900)
    tasks = [("copy", f"Copy the following text exactly, word for word:\n\n{copy}")]
    if not quick:
        edit = with_typos(excerpt("GPL-3", "The licenses for most software", 800))
        rewrite = excerpt("BSD", "Redistribution and use", 700)
        summary = excerpt("LGPL-3", "0. Additional Definitions.", 900)
        tasks += [
            ("edit", "Fix the spelling mistakes in the following text and write the "
                     f"corrected text out in full:\n\n{edit}"),
            ("rewrite", 'Rewrite the following licence conditions, replacing "the '
                        f'University" with "the Company":\n\n{rewrite}'),
            ("summarize", f"Summarize the following definitions:\n\n{summary}"),
        ]
    return [*tasks, ("story", STORY)]
