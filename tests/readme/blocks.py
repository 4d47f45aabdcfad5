"""README.md's fenced code blocks, as CommonMark parses them (markdown-it-py, which rich brings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# hello with input {"name": "ana"}: the golden of tests/engine_service/run/test_engine.py, which the
# README's Python block prints too.
HELLO_ANA_FLOW_FINGERPRINT = "cb21e09b5d53bc58972bc54038ba8aca7aac41c299cbdc9ad58367b630068df5"


@dataclass(frozen=True)
class Block:
    info: str
    content: str
    line: int  # 1-based line of the opening fence

    @property
    def first_line(self) -> str:
        return next((line for line in self.content.splitlines() if line.strip()), "")

    @property
    def key(self) -> tuple[str, str]:
        return (self.info, self.first_line)

    @property
    def lines(self) -> list[str]:
        return [line for line in self.content.splitlines() if line.strip()]


def readme_blocks() -> list[Block]:
    blocks = []
    for token in MarkdownIt().parse(README.read_text()):
        if token.type == "fence":
            assert token.map is not None
            blocks.append(Block(token.info.strip(), token.content, token.map[0] + 1))
    return blocks


def readme_block(info: str, starts_with: str) -> Block:
    """The one block of language ``info`` whose first line starts with ``starts_with``."""
    found = [
        b for b in readme_blocks() if b.info == info and b.first_line.startswith(starts_with)
    ]  # fmt: skip
    assert len(found) == 1, f"README has {len(found)} ```{info} blocks starting {starts_with!r}"
    return found[0]
