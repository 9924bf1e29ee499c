"""The strict value codec between the sandboxed child and the trusted parent.

The child evaluates a test's call expressions and sends their values here encoded; the parent decodes them
and decides the verdict itself. Only values made of exact builtin types cross (``type(v) is int``, never a
subclass, never an object with its own ``__eq__``): ``None``, ``bool``, ``int``, ``float``, ``complex``,
``str``, ``bytes``, ``list``, ``tuple``, ``dict``, ``set``, ``frozenset``, nested at most ``MAX_DEPTH``
deep, with at most ``MAX_NODES`` values and ``MAX_CHARS`` characters of encoding.

Encoding: JSON, where lists, ``None``, booleans, numbers and strings stand for themselves and the other
types are one-key objects: ``{"t": [...]}`` tuple, ``{"s": [...]}`` set, ``{"f": [...]}`` frozenset,
``{"d": [[k, v], ...]}`` dict, ``{"b": "hex"}`` bytes, ``{"c": [re, im]}`` complex, ``{"i": "hex"}`` an int
of 64 bits or more (hexadecimal is not bound by Python's limit on decimal digits).

>>> text = encode([(1, "a"), {2.5: None}, {True}, b"\\x00"])
>>> text
'[{"t":[1,"a"]},{"d":[[2.5,null]]},{"s":[true]},{"b":"00"}]'
>>> decode(text)
[(1, 'a'), {2.5: None}, {True}, b'\\x00']
>>> class Always:
...     def __eq__(self, other):
...         return True
>>> for value in (Always(), type("MyInt", (int,), {})(3), float("nan")):
...     try:
...         print(decode(encode([value])))
...     except Unencodable as e:
...         print(e)
a value of type Always: only exact builtin values are compared
a value of type MyInt: only exact builtin values are compared
[nan]
"""

from __future__ import annotations

import re

from trl_mars.sandbox.protocol import dumps, loads

MAX_DEPTH = 48
MAX_NODES = 200_000
MAX_CHARS = 60_000  # below the zygote's cap on one record field
_SCALARS = (type(None), bool, int, float, str)
_TAGS = {"t": tuple, "s": set, "f": frozenset}
_BIG = 1 << 63


class Unencodable(ValueError):
    """The value is not made of exact builtin types, or is too large or too deep."""


def _tree(value, depth: int, budget: list[int]):
    budget[0] -= 1
    if budget[0] < 0:
        raise Unencodable(f"the value has more than {MAX_NODES} parts")
    if depth > MAX_DEPTH:
        raise Unencodable(f"the value is nested more than {MAX_DEPTH} levels deep")
    kind = type(value)
    if kind is int and not -_BIG < value < _BIG:
        return {"i": format(value, "x")}
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_tree(v, depth + 1, budget) for v in value]
    if kind is tuple:
        return {"t": [_tree(v, depth + 1, budget) for v in value]}
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [_tree(v, depth + 1, budget) for v in value]}
    if kind is dict:
        return {"d": [[_tree(k, depth + 1, budget), _tree(v, depth + 1, budget)] for k, v in value.items()]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise Unencodable(f"a value of type {kind.__name__}: only exact builtin values are compared")


def encode(values: list) -> str:
    """JSON text of ``values`` (a list), or ``Unencodable``."""
    try:
        text = dumps(_tree(values, 0, [MAX_NODES]))
    except Unencodable:
        raise
    except ValueError as e:  # e.g. an int too long for str()
        raise Unencodable(str(e)) from None
    if len(text) > MAX_CHARS:
        raise Unencodable(f"the value's encoding is longer than {MAX_CHARS} characters")
    return text


def _value(tree, depth: int):
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    kind = type(tree)
    if kind in _SCALARS:
        return tree
    if kind is list:
        return [_value(v, depth + 1) for v in tree]
    if kind is not dict or len(tree) != 1:
        raise ValueError(f"malformed value {type(tree).__name__}")
    ((tag, body),) = tree.items()
    if tag in _TAGS and type(body) is list:
        return _TAGS[tag](_value(v, depth + 1) for v in body)
    if tag == "d" and type(body) is list and all(type(p) is list and len(p) == 2 for p in body):
        return {_value(k, depth + 1): _value(v, depth + 1) for k, v in body}
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "i" and type(body) is str and re.fullmatch("-?[0-9a-f]+", body):
        return int(body, 16)
    if tag == "c" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(*body)
    raise ValueError(f"malformed value tag {tag!r}")


def decode(text) -> list:
    """The values of an ``encode`` text; ``ValueError`` for anything else (the text may be forged)."""
    if type(text) is not str or len(text) > MAX_CHARS:
        raise ValueError("no value, or a value too long")
    try:
        tree = loads(text)
        values = tree if "{" not in text else _value(tree, 0)  # without objects it is plain lists and scalars
    except (RecursionError, TypeError, MemoryError) as e:  # TypeError: an unhashable set element or key
        raise ValueError(str(e)) from None
    if type(values) is not list:
        raise ValueError("malformed values")
    return values
