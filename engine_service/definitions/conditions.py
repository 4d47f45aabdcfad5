"""``when`` conditions: JMESPath expressions over a step's view of the flow (decision 0010).

The expression sees ``{"input": <flow input>, "variables": {...}, "results": {step_id:
[output payloads]}}``. It is true unless its result is JMESPath-false (null, false, an empty
string, array or object); ``0`` is true, as in JMESPath. No eval: JMESPath cannot call out.
"""

from __future__ import annotations

import jmespath
from jmespath.exceptions import JMESPathError

from flowledger.canonical import JsonValue

MAX_EXPRESSION_LENGTH = 1024


class ConditionError(Exception):
    """The expression failed while evaluating (a type error in a function call, ...)."""


def problem(expression: str) -> str:
    """Why ``expression`` is not a usable condition ("" when it is)."""
    if not isinstance(expression, str) or not 1 <= len(expression) <= MAX_EXPRESSION_LENGTH:
        return f"must be a JMESPath expression of 1..{MAX_EXPRESSION_LENGTH} characters"
    try:
        jmespath.compile(expression)
    except JMESPathError as exc:
        return f"not a valid JMESPath expression: {exc}"
    return ""


def holds(expression: str, data: JsonValue) -> bool:
    """Whether the condition is true of ``data``. ConditionError when evaluation fails."""
    try:
        result = jmespath.search(expression, data)
    except JMESPathError as exc:
        raise ConditionError(str(exc)) from exc
    if result is None or result is False:
        return False
    return not (isinstance(result, list | dict | str) and not result)
