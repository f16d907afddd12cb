"""Regenerate the options tables in docs/*.md from the flags' declarations (``segray.options.opt``).

A table sits between ``<!-- options: segray COMMAND... -->`` and ``<!-- end options -->``; everything
between the two markers is rewritten. Run from the repository root after adding or changing a flag:

    python docs/gen_options.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from segray.cli import build_parser, subcommand
from segray.options import options_table

DOCS = Path(__file__).resolve().parent
MARKED = re.compile(r"(<!-- options: segray ([a-z -]+?) -->\n)(.*?)(<!-- end options -->)", re.S)


def rendered(text: str) -> str:
    """``text`` with every marked table replaced by the one the command's declarations make."""
    parser = build_parser()
    return MARKED.sub(lambda m: m[1] + options_table(subcommand(parser, m[2].split())) + m[4], text)


def main() -> int:
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text()
        new = rendered(text)
        if new != text:
            path.write_text(new)
            print(f"rewrote the options table(s) of {path.relative_to(DOCS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
