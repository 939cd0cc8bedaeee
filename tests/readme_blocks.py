"""The README's fenced code blocks and the shell commands in its ```bash blocks, as tests/test_readme_snippets.py
runs them. Parsing only: what a block needs to run (placeholder folders, shortened schedules) is that test's
table."""

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

FENCE = re.compile(r"^```(\S*)\s*$")
HEADING = re.compile(r"^#{1,6}\s+(.*\S)\s*$")


@dataclass(frozen=True)
class Block:
    language: str  # the word after the opening fence ("" for plain text)
    code: str
    section: str  # the heading above the block
    line: int  # README line of the opening fence (1-based)

    @property
    def name(self) -> str:
        return f"README.md:{self.line} ({self.section})"


@dataclass(frozen=True)
class Command:
    """One shell command of a ```bash block: continuation lines joined, comments dropped, `a && b` split in two.
    A `<placeholder>` is one token, whatever its spaces. The README writes optional arguments in brackets (`[--encoder context|target]`, `[--only NAME ...]`):
    `argv` keeps them (first alternative, no ellipsis), so a dry parse also checks the optional flags;
    `required_argv` drops them, which is what a real run uses."""

    text: str
    env: dict[str, str] = field(hash=False)
    argv: tuple[str, ...]
    required_argv: tuple[str, ...]
    line: int

    @property
    def name(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def fenced_blocks(readme: Path) -> list[Block]:
    blocks, section, opened, language, lines = [], "", None, "", []
    for number, line in enumerate(readme.read_text().splitlines(), start=1):
        fence = FENCE.match(line)
        if opened is None:
            if fence:
                opened, language, lines = number, fence.group(1), []
            elif heading := HEADING.match(line):
                section = heading.group(1)
        elif fence and not fence.group(1):
            blocks.append(Block(language, "\n".join(lines) + "\n", section, opened))
            opened = None
        else:
            lines.append(line)
    if opened is not None:
        raise ValueError(f"README.md:{opened}: a code block is never closed.")
    return blocks


def _logical_lines(block: Block):
    """(first line number, text) of each command line, continuations joined."""
    pending, start = "", None
    for offset, line in enumerate(block.code.splitlines(), start=1):
        start = start if pending else block.line + offset
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        raise ValueError(f"README.md:{start}: the last command ends with a line continuation.")


def _expand_optional(tokens: list[str], keep: bool) -> list[str]:
    out, inside = [], False
    for token in tokens:
        if token.startswith("["):
            if inside:
                raise ValueError(f"Nested optional brackets at {token!r}.")
            inside, token = True, token[1:]
        in_group = inside
        if inside and token.endswith("]"):
            inside, token = False, token[:-1]
        if not in_group:
            out.append(token)
        elif keep and token not in ("", "..."):
            out.append(token.split("|")[0])  # `context|target`: the first alternative
    if inside:
        raise ValueError("An optional bracket is never closed.")
    return out


def _join_angle_placeholders(tokens: list[str]) -> list[str]:
    """`<name or folder>` is one placeholder, not three words."""
    out, open_placeholder = [], None
    for token in tokens:
        if open_placeholder is None and token.startswith("<") and not token.endswith(">"):
            open_placeholder = token
        elif open_placeholder is not None:
            open_placeholder += " " + token
            if token.endswith(">"):
                out.append(open_placeholder)
                open_placeholder = None
        else:
            out.append(token)
    if open_placeholder is not None:
        raise ValueError(f"A <placeholder> is never closed: {open_placeholder!r}.")
    return out


def bash_commands(block: Block) -> list[Command]:
    commands = []
    for line, text in _logical_lines(block):
        tokens = _join_angle_placeholders(shlex.split(text, comments=True))
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            part, tokens = tokens[:cut], tokens[cut + 1 :]
            env = {}
            while part and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", part[0]):
                key, value = part.pop(0).split("=", 1)
                env[key] = value
            commands.append(
                Command(
                    text=" ".join([*(f"{k}={v}" for k, v in env.items()), *part]),
                    env=env,
                    argv=tuple(_expand_optional(part, keep=True)),
                    required_argv=tuple(_expand_optional(part, keep=False)),
                    line=line,
                )
            )
    return commands
