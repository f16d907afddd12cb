"""Shared pieces of the tests: constants, data writers, local servers and small readers.

Test files import from here, never from each other or from ``conftest.py``; ``tests/`` is on
``sys.path`` (the conftest puts it there), so ``from helpers.common import ROOT`` works from any folder.
"""
