"""How deeply a JSON document nests, measured on its raw bytes before anything decodes it.

msgspec (and every recursive decoder after it: Litestar's, graphql-core's variable coercion) recurses once
per ``[`` or ``{``: 60 KB of ``[[[[...`` exhausts the stack and surfaced as a 500 (a 4500 close over
WebSocket). Every edge measures a body with :func:`nests_deeper_than` first and refuses it as the client's
mistake. The measure is linear and runs in C except for one pass over the brackets of documents that hold
more brackets than the limit (real requests hold a handful).
"""

from __future__ import annotations

import re
from itertools import accumulate

__all__ = ["MAX_JSON_DEPTH", "nests_deeper_than"]

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects accepted in a request body or WebSocket message. The deepest real
document (a GraphQL submission: body, variables, input, answers, answer) nests 5 levels."""

# A JSON string, escapes included: brackets inside strings are text, not structure. Written as the unrolled
# loop "normal* (escape normal*)*" so that matching never backtracks.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# Opening brackets become +1, closing ones -1 (0xFF read as a signed byte).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def nests_deeper_than(document: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``document`` opens more than ``limit`` arrays or objects inside one another.

    Not a validator: a malformed document is left to the decoder, which says what is wrong with it.
    """
    if document.count(b"[") + document.count(b"{") <= limit:
        return False
    steps = _STRING.sub(b"", document).translate(_STEPS, _NOT_BRACKETS)
    if steps.count(1) <= limit:
        return False
    if b"\x01" * (limit + 1) in steps:  # the usual attack, ``[[[[...``, found in C
        return True
    return max(accumulate(memoryview(steps).cast("b"))) > limit
