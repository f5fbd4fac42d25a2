"""The JSON that .mtd info and .mtm graph sections may hold (docs/formats.md, "JSON sections").

RFC 8259 JSON in strict UTF-8, nested at most MAX_DEPTH deep, numbers at most MAX_NUMBER
characters long. The device's MicroPython parser is lenient (it takes `[1,]`, `{"a" 1}`,
overlong UTF-8) and CPython's accepts NaN and fails deep nesting with RecursionError, so both
readers run this same check before parsing: they accept and reject the same sections. The
device copy is `_json_problem` in micropython_lib's mcutrain/dataset.py; keep them identical.
"""

from __future__ import annotations

MAX_DEPTH = 32
MAX_NUMBER = 40

_WS = b" \t\n\r"
_ESCAPES = b'"\\/bfnrtu'
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"


def _utf8_len(b: bytes, i: int) -> int:
    # Bytes of the strict UTF-8 sequence at b[i] (a non-ASCII lead byte), 0 if malformed.
    c = b[i]
    if 0xC2 <= c <= 0xDF:
        n, lo, hi = 2, 0x80, 0xBF
    elif c == 0xE0:
        n, lo, hi = 3, 0xA0, 0xBF
    elif c == 0xED:
        n, lo, hi = 3, 0x80, 0x9F  # no UTF-16 surrogates
    elif 0xE1 <= c <= 0xEF:
        n, lo, hi = 3, 0x80, 0xBF
    elif c == 0xF0:
        n, lo, hi = 4, 0x90, 0xBF
    elif 0xF1 <= c <= 0xF3:
        n, lo, hi = 4, 0x80, 0xBF
    elif c == 0xF4:
        n, lo, hi = 4, 0x80, 0x8F  # nothing above U+10FFFF
    else:
        return 0
    if i + n > len(b) or not lo <= b[i + 1] <= hi:
        return 0
    for k in range(i + 2, i + n):
        if not 0x80 <= b[k] <= 0xBF:
            return 0
    return n


def _string_end(b: bytes, i: int) -> int:
    # b[i] is '"': the index after the closing quote, or -1.
    i += 1
    n = len(b)
    while i < n:
        c = b[i]
        if c == 0x22:
            return i + 1
        if c == 0x5C:
            if i + 1 >= n or b[i + 1] not in _ESCAPES:
                return -1
            if b[i + 1] == 0x75:  # \uXXXX
                if i + 6 > n:
                    return -1
                for k in range(i + 2, i + 6):
                    if b[k] not in _HEX:
                        return -1
                i += 6
            else:
                i += 2
        elif c < 0x20:
            return -1
        elif c < 0x80:
            i += 1
        else:
            step = _utf8_len(b, i)
            if step == 0:
                return -1
            i += step
    return -1


def _number_end(b: bytes, i: int) -> int:
    # -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? at b[i]: the index after it, or -1.
    n, start = len(b), i
    if i < n and b[i] == 0x2D:
        i += 1
    if i < n and b[i] == 0x30:
        i += 1
    elif i < n and 0x31 <= b[i] <= 0x39:
        while i < n and b[i] in _DIGITS:
            i += 1
    else:
        return -1
    if i < n and b[i] == 0x2E:
        i += 1
        if i >= n or b[i] not in _DIGITS:
            return -1
        while i < n and b[i] in _DIGITS:
            i += 1
    if i < n and b[i] in b"eE":
        i += 1
        if i < n and b[i] in b"+-":
            i += 1
        if i >= n or b[i] not in _DIGITS:
            return -1
        while i < n and b[i] in _DIGITS:
            i += 1
    if i - start > MAX_NUMBER:
        return -1
    return i


def json_problem(b: bytes) -> str | None:
    """What makes b not strict JSON within the limits (a short reason), or None if it is."""
    n = len(b)
    stack = bytearray()  # open containers: '[' or '{'
    i = 0
    want = 0  # 0: a value, 1: after a value, 2: an object key (or '}' right after '{')
    first = False  # just after '[' or '{': the container may close at once
    while True:
        while i < n and b[i] in _WS:
            i += 1
        if want == 1 and not stack:
            return None if i == n else "bytes after the JSON value at %d" % i
        if i >= n:
            return "ends early"
        c = b[i]
        if want == 0:
            if c == 0x5D and first and stack[-1] == 0x5B:
                stack.pop()
                i, want, first = i + 1, 1, False
                continue
            first = False
            if c in b"[{":
                if len(stack) >= MAX_DEPTH:
                    return "nested more than %d deep" % MAX_DEPTH
                stack.append(c)
                i += 1
                want, first = (0, True) if c == 0x5B else (2, True)
                continue
            if c == 0x22:
                i = _string_end(b, i)
                if i < 0:
                    return "bad string"
            elif c == 0x2D or c in _DIGITS:
                i = _number_end(b, i)
                if i < 0:
                    return "bad number"
            else:
                for word in (b"true", b"false", b"null"):
                    if b[i : i + len(word)] == word:
                        i += len(word)
                        break
                else:
                    return "unexpected byte at %d" % i
            want = 1
        elif want == 2:
            if c == 0x7D and first:
                stack.pop()
                i, want, first = i + 1, 1, False
                continue
            first = False
            if c != 0x22:
                return "expected a key at %d" % i
            i = _string_end(b, i)
            if i < 0:
                return "bad string"
            while i < n and b[i] in _WS:
                i += 1
            if i >= n or b[i] != 0x3A:
                return "expected ':' at %d" % i
            i += 1
            want = 0
        else:  # after a value inside a container
            top = stack[-1]
            if c == 0x2C:
                i += 1
                want = 0 if top == 0x5B else 2
            elif (c == 0x5D and top == 0x5B) or (c == 0x7D and top == 0x7B):
                stack.pop()
                i += 1
            else:
                return "expected ',' or a closing bracket at %d" % i
