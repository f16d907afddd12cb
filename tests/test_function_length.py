"""No function or method in segray/ is longer than MAX_LINES: a long function is split into steps
that each do one job, so each can be read, named and tested on its own."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segray"
#: Lines per function, decorators and docstring included.
MAX_LINES = 80


def long_functions(source: str, name: str, limit: int = MAX_LINES) -> list[str]:
    """``name:function (N lines)`` for every function or method in ``source`` longer than ``limit``
    (nested functions are checked too, on their own)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=name)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            assert node.end_lineno is not None
            lines = node.end_lineno - first + 1
            if lines > limit:
                found.append(f"{name}:{node.name} ({lines} lines)")
    return found


def test_no_function_in_segray_is_over_80_lines() -> None:
    paths = sorted(PACKAGE.rglob("*.py"))
    assert len(paths) > 50  # the walk found the package
    found = [hit for path in paths for hit in long_functions(path.read_text(), str(path.relative_to(ROOT).as_posix()))]
    assert not found, f"functions over {MAX_LINES} lines (split them into steps):\n" + "\n".join(found)


def test_the_check_finds_a_long_function_and_passes_a_short_one() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(79))  # 79 lines: with its def line, 80
    assert long_functions(f"def f():\n{body}    return 0\n\n\ndef short():\n    return 1\n", "f.py") == [
        "f.py:f (81 lines)"
    ]
    assert long_functions(f"def at_limit():\n{body}", "f.py") == []
    method = "class C:\n    @staticmethod\n    def m():\n" + "".join("    " + line + "\n" for line in body.splitlines())
    assert long_functions(method, "c.py") == ["c.py:m (81 lines)"]  # its decorator counts
    assert long_functions(f"async def a():\n{body}    return 0\n", "a.py") == ["a.py:a (81 lines)"]
