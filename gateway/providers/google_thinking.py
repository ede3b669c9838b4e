"""``reasoning_effort`` as Gemini's ``generationConfig.thinkingConfig``.

Google maps the OpenAI knob on its own OpenAI-compatible endpoint (ai.google.dev/gemini-api/docs/
openai): ``low``, ``medium`` and ``high`` are thinking budgets of 1,024, 8,192 and 24,576 tokens,
and ``none`` turns thinking off. The native API takes that as ``thinkingBudget`` on Gemini 2.5,
and a ``thinkingLevel`` on Gemini 3 and later (the budget is deprecated there), whose levels
depend on the model: the Pro models take ``low`` and ``high`` only, the Flash ones ``minimal``,
``low``, ``medium`` and ``high``. Each effort goes as the nearest value the model takes, never
as one it answers a 400 for: a Pro model cannot think less than its least (Gemini 2.5 Pro's
budget is 128 to 32,768, 0 is its 400; Gemini 3 Pro has no ``minimal``). Models before 2.5
(and names that are no Gemini version, a Gemma or a ``-latest`` alias, and the image, speech
and live-audio models) have no thinking switch: they lack the option, so a request that sets it is not sent to them.
"""

from __future__ import annotations

import re
from typing import Any

from gateway import errors

#: ``gemini-<major>[.<minor>]-<tier>``, as bare or ``models/`` names; ``-lite`` after the tier
_VERSIONED = re.compile(r"(?:^|/)gemini-(\d+)(?:\.(\d+))?-(flash|pro)(-lite)?(?:-|$)")
#: the models of a generation made for another output (images, speech, live audio): no switch
_OTHER_OUTPUT = re.compile(r"-(?:image|tts|live|audio)(?:-|$)")

#: Google's budgets for the OpenAI levels (Gemini 2.5); ``minimal`` and ``xhigh`` as the nearest
BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576, "xhigh": 24576}
#: Gemini 2.5 Pro cannot turn thinking off: ``none`` is its least budget
PRO_LEAST_BUDGET = 128

#: Gemini 3 and later: the level each effort asks for, on the Flash models and on the Pro ones
FLASH_LEVELS = {
    "none": "minimal", "minimal": "minimal", "low": "low", "medium": "medium", "high": "high", "xhigh": "high"
}  # fmt: skip
PRO_LEVELS = {"none": "low", "minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high"}

_LACKS_EFFORT = frozenset({"reasoning_effort"})
_LACKS_NOTHING: frozenset[str] = frozenset()


def _version(model: str) -> tuple[tuple[int, int], bool] | None:
    """The model's (major, minor) and whether it is a Pro, None for a name of no such shape."""
    found = _VERSIONED.search(model)
    if found is None or _OTHER_OUTPUT.search(model, found.end() - 1):
        return None
    return (int(found.group(1)), int(found.group(2) or 0)), found.group(3) == "pro"


def effort_lacks(model: str) -> frozenset[str]:
    """``ModelOptions.model_lacks``: ``reasoning_effort`` for a model that has no thinking switch."""
    version = _version(model)
    return _LACKS_NOTHING if version is not None and version[0] >= (2, 5) else _LACKS_EFFORT


_LACKS_JSON_WITH_TOOLS = frozenset({"tools_with_response_format"})


def json_with_tools_lacks(model: str) -> frozenset[str]:
    """``tools_with_response_format`` for a model before Gemini 3 (and a name of no version):
    their 400 "Tool use with a response mime type: 'application/json' is unsupported" does not
    fall back (a review)."""
    version = _version(model)
    return _LACKS_NOTHING if version is not None and version[0] >= (3, 0) else _LACKS_JSON_WITH_TOOLS


def thinking_config(model: str, effort: str) -> dict[str, Any]:
    """The ``thinkingConfig`` for ``effort`` on ``model`` (one that :func:`effort_lacks` keeps)."""
    version = _version(model)
    if version is None:  # effort_lacks kept the request from this model
        raise errors.InvalidRequest(f"{model!r} takes no 'reasoning_effort'", param="reasoning_effort")
    (major_minor, pro) = version
    if effort not in BUDGETS:  # the router keeps such a request from Gemini ("reasoning_effort_level")
        raise errors.InvalidRequest(
            f"'reasoning_effort' {effort!r} is no level Gemini takes: one of {', '.join(BUDGETS)}",
            param="reasoning_effort",
            code="invalid_value",
        )
    if major_minor >= (3, 0):
        return {"thinkingLevel": (PRO_LEVELS if pro else FLASH_LEVELS)[effort]}
    budget = BUDGETS[effort]
    return {"thinkingBudget": max(budget, PRO_LEAST_BUDGET) if pro else budget}
