"""The pages cannot drift from the code: every `coop-*` command line in a code block (fenced or indented)
of README.md and the docs runs `--help` (with its subcommand, for coop-client), and every flag it uses is one
that command's --help lists. The README stays a front page: at most 150 lines, the two commands first."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT

PAGES = [ROOT / "README.md", ROOT / "models" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def code_blocks(text: str) -> list[str]:
    """The fenced blocks, and the indented ones (four spaces after a blank line) outside them."""
    blocks = FENCE.findall(text)
    indented, previous = [], ""
    for line in FENCE.sub("", text).splitlines():
        if line.startswith("    ") and (indented and indented[-1] is not None or not previous.strip()):
            indented.append(line)
        elif indented and indented[-1] is not None:
            indented.append(None)  # the block ended
        previous = line
    blocks.append("\n".join(line for line in indented if line is not None))
    return blocks


def command_lines(page: Path) -> list[str]:
    """The `coop-*` lines of the page's code blocks, continuations joined."""
    lines = []
    for block in code_blocks(page.read_text()):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(".venv/bin/coop-"):
                line = line[len(".venv/bin/") :]
            if line.startswith("coop-"):
                lines.append(line)
    return lines


CASES = [(page, line) for page in PAGES for line in command_lines(page)]


@functools.cache
def help_text(command: str, sub: str | None) -> str:
    argv = [str(BIN / command), *([sub] if sub else []), "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]}"
    return done.stdout


def test_the_readme_is_a_front_page_with_the_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    first = FENCE.search(text).group(1)
    assert "make demo" in first and "make test" in first
    assert "<!-- demo -->" in text and "<!-- /demo -->" in text


def test_the_readme_shows_all_five_entry_points():
    shown = {line.split()[0] for line in command_lines(ROOT / "README.md")}
    assert {"coop-train", "coop-serve", "coop-client", "coop-complete", "coop-eval"} <= shown


IDS = [f"{page.relative_to(ROOT)}:{line.split()[0]}-{i}" for i, (page, line) in enumerate(CASES)]


@pytest.mark.parametrize("page,line", CASES, ids=IDS)
def test_every_documented_command_and_flag_exists(page, line):
    words = shlex.split(line, comments=True)
    command = words[0]
    assert (BIN / command).exists(), f"{page.name}: {command} is not an installed command"
    sub = words[1] if command == "coop-client" and len(words) > 1 and not words[1].startswith("-") else None
    text = help_text(command, sub)
    for word in words[1:]:
        flag = word.strip("[]").split("=")[0]
        if flag.startswith("--") and len(flag) > 2:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                f"{page.relative_to(ROOT)}: `{line}` uses {flag}, which `{command} {sub or ''} --help` lacks"
            )
