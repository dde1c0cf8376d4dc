"""Chunked linear attention (an intra-block masked product plus a state carried across the
blocks of the sequence): read from the structure and emitted. Not generated yet:
:func:`analyze_chunked` finds no such cascade."""
from __future__ import annotations


def analyze_chunked(c, alias, out):
    return None
