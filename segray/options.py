"""Option parsing shared by the command line and the config files: one unit per kind of quantity
(seconds, bytes) whichever way a value arrives, and a suggestion for a misspelt name.

Standard library only, so every layer of segray can import it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

#: Duration suffixes -> seconds. A plain number is seconds.
DURATION_UNITS = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}
#: Size suffixes -> bytes (kB, MB, GB, TB are powers of 1000; KiB, MiB, GiB, TiB powers of 1024).
#: A plain number is bytes.
SIZE_UNITS = {
    "B": 1,
    "kB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_QUANTITY = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")


def parse_quantity(value: str | float, units: dict[str, float], what: str) -> float:
    """``value`` (a number, or a number with one of ``units``' suffixes, case-insensitive) in the
    base unit (the one whose factor is 1): ``"500ms"`` -> 0.5 with :data:`DURATION_UNITS`."""
    if isinstance(value, bool):
        raise ValueError(f"{what} {value!r}: give a number, optionally with a unit ({', '.join(units)})")
    if isinstance(value, (int, float)):
        return float(value)
    m = _QUANTITY.match(str(value))
    factor = {k.lower(): v for k, v in units.items()}.get(m.group(2).lower()) if m and m.group(2) else 1.0
    if m is None or factor is None:
        raise ValueError(f"{what} {value!r}: give a number, optionally with a unit ({', '.join(units)})")
    return float(m.group(1)) * factor


def duration(value: str | float) -> float:
    """Seconds from ``30``, ``30s``, ``500ms``, ``2min`` or ``1h`` (the command line and config files alike)."""
    return parse_quantity(value, DURATION_UNITS, "duration")


def size(value: str | int) -> int:
    """Bytes from ``67108864``, ``64MiB``, ``64MB`` (10^6 bytes each) or ``2GiB``: a whole number of bytes."""
    n = parse_quantity(value, SIZE_UNITS, "size")  # type: ignore[arg-type]
    if n != int(n):
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(n)


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The names in ``choices`` that look like a misspelling of ``word``, closest first."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``did you mean X?`` (or ``X or Y``) for a misspelt ``word``, or ``""`` when nothing is close."""
    close = close_matches(word, choices)
    return f"did you mean {' or '.join(close)}?" if close else ""


def _argparse_type(parse: Any, name: str) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    convert.__name__ = name  # argparse names the type in its error line
    return convert


#: argparse ``type=`` for durations and sizes (an invalid value is a usage error, exit 2).
duration_arg = _argparse_type(duration, "duration")
size_arg = _argparse_type(size, "size")


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser that adds a "did you mean" to an unknown flag and to an invalid choice (a
    misspelt subcommand). Subparsers made by ``add_subparsers`` are of the same class."""

    _argv: list[str] | None = None

    def parse_known_args(  # type: ignore[override]  # one signature for argparse's overloads
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> Any:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        hint = self._hint(message)
        super().error(f"{message}; {hint}" if hint else message)

    def _hint(self, message: str) -> str:
        m = re.search(r"invalid choice: '?(.*?)'? \(choose from (.*)\)$", message)
        if m:
            return did_you_mean(m.group(1), [c.strip(" '\"") for c in m.group(2).split(",")])
        # Any other error (an unrecognized argument, or a required one missing because it was
        # misspelt): suggest a known flag for each unknown flag given.
        parser = self._active()
        flags = [s for a in parser._actions for s in a.option_strings]
        hints = []
        for token in self._argv or []:
            flag = token.split("=", 1)[0]
            if re.match(r"^--?[A-Za-z]", flag) and flag not in flags and not any(f.startswith(flag) for f in flags):
                close = close_matches(flag, flags, n=1)
                if close:
                    hints.append((flag, close[0]))
        return "; ".join(f"{flag}: did you mean {close}?" for flag, close in hints)

    def _active(self) -> argparse.ArgumentParser:
        """The (sub)parser of the subcommand the arguments name: its flags are the ones to suggest."""
        parser: argparse.ArgumentParser = self
        for token in self._argv or []:
            subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
            if subs and token in subs[0].choices:
                parser = subs[0].choices[token]
        return parser
