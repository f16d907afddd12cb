"""Option parsing shared by the command line and the config files: one unit per kind of quantity
(seconds, bytes) whichever way a value arrives, and a suggestion for a misspelt name.

Standard library only, so every layer of segray can import it.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

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
        by_position = self._by_position()
        for a in by_position:
            a.required = False  # a value given by position instead is taken, and checked, below
        try:
            ns, rest = super().parse_known_args(args, namespace)
        finally:
            self._restore_required(by_position)
        for a in by_position:
            self._take_former_position(ns, a)
        return ns, rest

    def format_usage(self) -> str:
        self._restore_required(self._by_position())  # --help and errors show such a flag as required
        return super().format_usage()

    def format_help(self) -> str:
        self._restore_required(self._by_position())
        return super().format_help()

    def _by_position(self) -> list[argparse.Action]:
        """The flags that were formerly positional arguments (:attr:`Option.former_positional`)."""
        return [a for a in self._actions if getattr(a, _BY_POSITION_KEY, None)]

    @staticmethod
    def _restore_required(actions: list[argparse.Action]) -> None:
        for a in actions:
            a.required = bool(getattr(a, _REQUIRED_KEY, False))

    def _take_former_position(self, ns: argparse.Namespace, action: argparse.Action) -> None:
        """The value of a flag that was formerly a positional argument, from either place."""
        flag = action.option_strings[0]
        positional = getattr(action, _BY_POSITION_KEY)
        by_position = getattr(ns, positional, None)
        if hasattr(ns, positional):
            delattr(ns, positional)
        if by_position is not None:
            if getattr(ns, action.dest, None) is not None:
                self.error(f"{flag} is given twice (by the flag and by position): give {flag} only")
            setattr(ns, action.dest, by_position)
        elif getattr(action, _REQUIRED_KEY, False) and getattr(ns, action.dest, None) is None:
            self.error(f"the following arguments are required: {flag}")

    def error(self, message: str) -> NoReturn:
        missing = re.match(r"the following arguments are required: (.*)$", message)
        if missing:  # what a required flag is for, and where to find one, before the line argparse writes
            left_out = set(missing[1].split(", "))
            notes = [
                spec.when_missing
                for a in self._actions
                if (spec := declared_option(a)) and spec.when_missing and left_out & set(a.option_strings)
            ]
            message = "; ".join([*notes, message])
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


def parse_window(text: str) -> tuple[int, int]:
    """``--window`` for large frames: ``HxW`` (``512x256``) or one number for a square (``512``)."""
    h, sep, w = text.lower().partition("x")
    try:
        return (int(h), int(w)) if sep else (int(h), int(h))
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"--window {text!r}: expected HxW, e.g. 512x256, or one number for a square"
        ) from e


def key_values(items: Sequence[str]) -> dict[str, str]:
    """``["region=north", "date=2026-11-21"]`` -> ``{"region": "north", ...}`` (a repeated flag's values)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE")
        out[key] = value
    return out


# --- Options dataclasses: one declaration per option ------------------------------------------------
#
# A field of an options dataclass (``segray.labelling.job.LabelOptions``) is declared with :func:`opt`:
# its default, flag, help, unit and bounds in one place. :func:`add_dataclass_arguments` makes the
# command line's flags from it, :func:`from_namespace` the dataclass from the parsed flags, and
# :func:`check_bounds` (called by the dataclass's ``__post_init__``) checks every value however the
# dataclass was made, naming the field and its flag.

#: The key of a field's ``metadata`` that holds its :class:`Option`.
OPTION_KEY = "segray.option"
#: Units that also say how a flag's text is parsed (``30s``, ``64MiB``); any other unit is a word for the help.
UNIT_PARSERS: dict[str, Callable[[str], Any]] = {"seconds": duration_arg, "bytes": size_arg}


@dataclass(frozen=True)
class Option:
    """How one field of an options dataclass is given on the command line, and the values it takes."""

    help: str
    #: ``--flag``; None: not on the command line (set by the program).
    flag: str | None = None
    #: The default in words, for a None default (or one worked out at run time): ``(default: <this>)``.
    default_help: str | None = None
    #: ``seconds`` / ``bytes`` (parsed with :func:`duration` / :func:`size`), or a word such as ``metres``.
    unit: str | None = None
    min: float | None = None  # value >= min
    max: float | None = None  # value <= max
    above: float | None = None  # value > above
    choices: tuple[str, ...] | None = None
    #: The flag's text -> value (argparse's ``type``); default: from the unit, else the field's type.
    parse: Callable[[str], Any] | None = None
    #: ``append``: a repeatable flag, whose list of values ``convert`` makes the field's value;
    #: ``count``: how many times the flag is given (``-vv``: 2).
    action: str | None = None
    #: A one-letter spelling listed beside the flag (``-v`` for ``--verbose``).
    short: str | None = None
    convert: Callable[[Any], Any] | None = None
    metavar: str | None = None
    #: The ``--help`` section the flag is listed in (None: the command's options).
    group: str | None = None
    #: Given by position (named by the field, or ``metavar``), not by a flag.
    positional: bool = False
    #: argparse's ``nargs`` (``*``, ``+``): several values, as a list.
    nargs: str | None = None
    #: The parsed arguments' attribute, where it is not the field's name (a flag named before the field).
    dest: str | None = None
    #: The default as the help shows it, in the flag's own terms: ``(default <this>)`` (``10ms``, ``64MiB``).
    shown_default: str | None = None
    #: Earlier spellings of the flag, still taken and not listed in ``--help``.
    former_flags: tuple[str, ...] = ()
    #: The flag was a positional argument (after any declared positional ones): a value given there is
    #: still taken, unlisted in ``--help``, so that older scripts keep working.
    former_positional: bool = False
    #: Said when a required flag is left out, before argparse's own line: what it is for, where to find one.
    when_missing: str | None = None

    def requirement(self) -> str | None:
        """What the bounds ask for, in words (``>= 1``, ``within [0, 1]``), or None when there are none."""
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        if self.above == 0:
            return "a positive number" + (f" of {self.unit}" if self.unit else "")
        parts = []
        if self.min is not None and self.max is not None:
            parts.append(f"within [{_number(self.min)}, {_number(self.max)}]")
        elif self.min is not None:
            parts.append(f">= {_number(self.min)}")
        elif self.max is not None:
            parts.append(f"<= {_number(self.max)}")
        if self.above is not None:
            parts.append(f"> {_number(self.above)}")
        return " and ".join(parts) or None


def opt(
    default: Any = MISSING,
    *,
    help: str,
    flag: str | None = None,
    default_factory: Callable[[], Any] | Any = MISSING,
    **spec: Any,
) -> Any:
    """A dataclass field with its :class:`Option` (``spec``: the Option's other fields) in its metadata."""
    metadata = {OPTION_KEY: Option(help=help, flag=flag, **spec)}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def option_of(f: Field[Any]) -> Option | None:
    """The :class:`Option` a field was declared with, or None."""
    spec = f.metadata.get(OPTION_KEY)
    return spec if isinstance(spec, Option) else None


class OutOfBounds(ValueError):
    """An option's value outside its bounds: says which field and flag, what is allowed and what was given."""

    def __init__(self, name: str, spec: Option, value: Any) -> None:
        self.name, self.flag, self.value = name, spec.flag, value
        self.allowed = spec.requirement() or ""
        super().__init__(f"{name} must be {self.allowed}, got {value!r}" + (f" ({self.flag})" if self.flag else ""))

    def for_command_line(self) -> str:
        """The message as a command-line user needs it: the flag, not the field."""
        return f"{self.flag or self.name} must be {self.allowed}, got {self.value!r}"


def apply_units(obj: Any) -> None:
    """Turns the text of each field of ``obj`` whose unit is ``seconds`` or ``bytes`` into the number
    (``"500ms"`` -> 0.5, ``"64MiB"`` -> 67108864): a config file takes the units the command line takes."""
    for f in fields(obj):
        spec = option_of(f)
        value = getattr(obj, f.name)
        if spec is not None and value is not None and spec.unit in ("seconds", "bytes"):
            setattr(obj, f.name, duration(value) if spec.unit == "seconds" else size(value))


def check_bounds(obj: Any) -> None:
    """Raises :class:`OutOfBounds` for the first field of the options dataclass ``obj`` whose value is
    outside its Option's bounds or choices (None, an unset optional value, is always allowed)."""
    for f in fields(obj):
        spec = option_of(f)
        value = getattr(obj, f.name)
        if spec is None or value is None or spec.requirement() is None:
            continue
        if spec.choices is not None:
            ok = value in spec.choices
        else:
            ok = (
                (spec.min is None or value >= spec.min)
                and (spec.max is None or value <= spec.max)
                and (spec.above is None or value > spec.above)
            )
        if not ok:
            raise OutOfBounds(f.name, spec, value)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    *,
    defaults_elsewhere: bool = False,
) -> None:
    """One flag per field of the options dataclass ``cls`` that has an :class:`Option` with a flag, or
    one positional argument per positional field (``only`` those fields, if given, less ``skip``),
    stored under the field's name. A flag's help ends with its default: ``(default 8)``, ``(default 30
    seconds)``, or ``(default: <default_help>)``; a field without a default is a required flag, a bool
    one a switch (``--x`` for a False default, ``--no-x`` for a True one). Each argument made here
    carries its Option (:func:`declared_option`). ``defaults_elsewhere``: the flags set nothing when not
    given (the defaults are the caller's ``set_defaults`` on a parent parser), so that options every
    command takes may come before or after the command's name."""
    hints = typing.get_type_hints(cls)
    wanted = None if only is None else set(only)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(cls):
        spec = option_of(f)
        if spec is None or (spec.flag is None and not spec.positional):
            continue
        if (wanted is not None and f.name not in wanted) or f.name in skip:
            continue
        target: Any = parser
        if spec.group is not None and isinstance(parser, argparse.ArgumentParser):
            target = groups.get(spec.group) or groups.setdefault(spec.group, parser.add_argument_group(spec.group))
        kwargs = _argparse_kwargs(cls, f, spec, hints[f.name])
        if defaults_elsewhere and not spec.positional:
            kwargs["default"] = argparse.SUPPRESS
        if spec.positional:
            actions = [target.add_argument(f.name, **kwargs)]
        else:
            dest = spec.dest or f.name
            flags = [spec.short, spec.flag] if spec.short else [spec.flag]
            actions = [target.add_argument(*flags, dest=dest, **kwargs)]
            for former in spec.former_flags:
                actions.append(target.add_argument(former, dest=dest, **{**kwargs, "help": argparse.SUPPRESS}))
            if spec.former_positional:
                by_position = f"{dest}{_BY_POSITION_SUFFIX}"
                setattr(actions[0], _BY_POSITION_KEY, by_position)
                setattr(actions[0], _REQUIRED_KEY, actions[0].required)
                hidden = {"nargs": "?", "default": None, "type": kwargs.get("type"), "help": argparse.SUPPRESS}
                actions.append(target.add_argument(by_position, metavar=kwargs.get("metavar"), **hidden))
        for action in actions:
            setattr(action, _ACTION_KEY, spec)


#: The attribute of an argparse action made by :func:`add_dataclass_arguments` that holds its Option.
_ACTION_KEY = "segray_option"
#: The attribute of a flag's action that names the hidden positional argument it was formerly given as.
_BY_POSITION_KEY = "segray_by_position"
_BY_POSITION_SUFFIX = "__by_position"
#: The attribute of such a flag's action that says whether it is required (one place or the other).
_REQUIRED_KEY = "segray_required"


def declared_option(action: argparse.Action) -> Option | None:
    """The :class:`Option` an argument was made from by :func:`add_dataclass_arguments`; None for one
    added by hand."""
    spec = getattr(action, _ACTION_KEY, None)
    return spec if isinstance(spec, Option) else None


def _argparse_kwargs(cls: type, f: Field[Any], spec: Option, hint: Any) -> dict[str, Any]:
    """add_argument's keywords (but the flag and dest) for a field."""
    kind = _base_type(hint)
    if spec.nargs is not None and typing.get_origin(kind) in (list, tuple):
        kind = typing.get_args(kind)[0]  # the type of each value
    help_text = spec.help.replace("%", "%%")  # argparse formats help with %
    if spec.positional:
        kw: dict[str, Any] = {"metavar": spec.metavar, "help": help_text, "type": _flag_type(cls, f, spec, kind)}
        if spec.nargs is not None:
            kw["nargs"] = spec.nargs
        return kw
    if kind is bool:
        if f.default not in (True, False):
            raise TypeError(f"{cls.__name__}.{f.name}: a switch needs a default of True or False")
        return {"action": "store_false" if f.default else "store_true", "help": help_text}
    kw = {"metavar": spec.metavar}
    if spec.nargs is not None:
        kw["nargs"] = spec.nargs
    if spec.action == "count":
        return {"action": "count", "default": f.default, "help": f"{help_text} {_default_text(cls, f, spec)}"}
    if spec.action is not None:
        kw.update(action=spec.action, default=[])
    elif f.default is not MISSING:
        kw["default"] = f.default
    elif f.default_factory is MISSING:
        kw["required"] = True
    if not kw.get("required"):
        help_text += " " + _default_text(cls, f, spec).replace("%", "%%")
    if spec.action is None:
        kw["type"] = _flag_type(cls, f, spec, kind)
    if spec.choices is not None:
        kw["choices"] = spec.choices
    elif spec.metavar is None:
        kw["metavar"] = (spec.flag or f.name).lstrip("-").upper().replace("-", "_")  # as argparse would
    return {**kw, "help": help_text}


def _default_text(cls: type, f: Field[Any], spec: Option) -> str:
    if spec.shown_default is not None:
        return f"(default {spec.shown_default})"
    if spec.default_help is not None:
        return f"(default: {spec.default_help})"
    if f.default is MISSING or f.default is None:
        raise TypeError(f"{cls.__name__}.{f.name}: an option without a default value needs default_help")
    return f"(default {_number(f.default)}{' ' + spec.unit if spec.unit else ''})"


def _flag_type(cls: type, f: Field[Any], spec: Option, kind: Any) -> Callable[[str], Any]:
    if spec.parse is not None:
        return _argparse_type(spec.parse, getattr(spec.parse, "__name__", f.name))
    if spec.unit in UNIT_PARSERS:
        return UNIT_PARSERS[spec.unit]
    if kind in (int, float, str):
        return kind  # type: ignore[no-any-return]
    raise TypeError(f"{cls.__name__}.{f.name}: a {kind} option needs parse= (its flag's text -> value)")


def _base_type(hint: Any) -> Any:
    """``int`` for ``int``, ``int | None`` and ``Optional[int]``; the annotation itself otherwise."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _number(value: Any) -> str:
    """A default or bound as the help shows it: ``268,435,456``, ``0.5``, ``2``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def from_namespace(cls: type[T], ns: argparse.Namespace, **given: Any) -> T:
    """The options dataclass ``cls`` from flags parsed by a parser that :func:`add_dataclass_arguments`
    made: each field from its flag's value (fields given here, or without a flag there, are left to
    ``given`` and to their defaults). A value outside its bounds is a ValueError naming the flag."""
    kwargs: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        spec = option_of(f)
        if f.name in given or spec is None or (spec.flag is None and not spec.positional):
            continue
        dest = spec.dest or f.name
        if not hasattr(ns, dest):
            continue
        value = getattr(ns, dest)
        if spec.convert is not None:
            try:
                value = spec.convert(value)
            except ValueError as e:
                raise ValueError(f"{spec.flag} {e}") from None
        kwargs[f.name] = value
    try:
        return cls(**kwargs, **given)
    except OutOfBounds as e:
        raise ValueError(e.for_command_line()) from None


def options_table(parser: argparse.ArgumentParser) -> str:
    """A Markdown table of a command's flags (option, default, meaning), one row per flag in ``--help``
    order, made from the same declarations as the flags: the docs list what the command takes."""
    rows = ["| option | default | meaning |", "| --- | --- | --- |"]
    for action in parser._actions:
        spec = declared_option(action)
        if spec is None or spec.positional or not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        help_text = str(action.help).replace("%%", "%")
        meaning, default = help_text, ""
        if help_text.startswith(spec.help) and help_text != spec.help:
            meaning, default = spec.help, help_text[len(spec.help) :].strip()
            default = re.sub(r"^\(default:? (.*)\)$", r"\1", default)
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            default = "off"
        elif action.required:
            default = "required"
        name = action.option_strings[0] + (f" {spec.metavar}" if spec.metavar else "")
        rows.append(f"| `{name}` | {_cell(default)} | {_cell(meaning)} |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell: a ``|`` would end the cell."""
    return text.replace("|", "\\|")
