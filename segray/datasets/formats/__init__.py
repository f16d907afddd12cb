"""Converters from the field's dataset formats into the canonical layout (see :mod:`.writer`).

``FORMATS`` maps a format name to its converter; :func:`convert` runs one. Each format module's
docstring says what it reads and every choice it makes (ignore ids, colours, overlaps).
"""

from segray.datasets.formats.base import ConvertError, ConvertOptions
from segray.datasets.formats.convert import ConvertReport, convert
from segray.datasets.formats.registry import FORMATS

__all__ = ["FORMATS", "ConvertError", "ConvertOptions", "ConvertReport", "convert"]
