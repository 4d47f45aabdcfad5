"""Flow id prefixes, as git takes commit prefixes: ``ListFlowRuns(flow_id_prefix=...)``.

Flow ids are UUIDs in canonical form (``xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx``, lower-case). A
prefix is the first characters of that form, hyphens where the form has them; every id it can
begin lies between the prefix padded with ``0`` and padded with ``f``, which is one range scan of
an index on the id (UUIDs sort as their canonical text does).
"""

from __future__ import annotations

_FORM = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
_LOW = _FORM.replace("x", "0")
_HIGH = _FORM.replace("x", "f")
_HEX = frozenset("0123456789abcdef")


def is_id_prefix(text: str) -> bool:
    """Whether ``text`` is 1..36 characters of a canonical UUID."""
    return 0 < len(text) <= len(_FORM) and all(
        ch == "-" if form == "-" else ch in _HEX for ch, form in zip(text, _FORM, strict=False)
    )


def id_range(prefix: str) -> tuple[str, str]:
    """The least and the greatest id that begins with ``prefix`` (an :func:`is_id_prefix`)."""
    return prefix + _LOW[len(prefix) :], prefix + _HIGH[len(prefix) :]


def canonical_prefix(text: str) -> str:
    """What a person typed as the start of an id (any case, hyphens or not) in canonical form;
    the text unchanged when it cannot be one (the check then says why)."""
    digits = text.strip().lower().replace("-", "")
    if not digits or len(digits) > 32 or not set(digits) <= _HEX:
        return text
    out: list[str] = []
    for ch in digits:
        if _FORM[len(out)] == "-":
            out.append("-")
        out.append(ch)
    return "".join(out)
