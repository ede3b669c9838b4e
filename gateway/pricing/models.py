"""Model-name resolution for price tables: a dated snapshot is priced as its family.

A name resolves to a chain of candidates, most specific first::

    "gpt-4o-2024-08-06"    -> ("gpt-4o-2024-08-06", "gpt-4o")
    "gpt-4-1106-preview"   -> ("gpt-4-1106-preview", "gpt-4-turbo")
    "models/gemini-1.0-pro-001" -> ("gemini-1.0-pro-001", "gemini-1.0-pro", "gemini-pro")

A price table takes the first candidate it holds, so an exact name always beats its family.
Only date/version suffixes are stripped (``-2024-08-06``, ``-20240307``, ``@20240307``, ``-0613``,
``-001``, ``-preview``, ``-latest``, ``-v1:0``, and Ollama's ``:latest`` tag, the model itself:
a price for ``llama3`` prices ``llama3:latest``, the name ``ollama list`` shows): ``gpt-4o-mini``
never becomes ``gpt-4o`` and ``gpt-4-turbo`` never becomes ``gpt-4``. Renames that no suffix rule
can express are aliases.
"""

from __future__ import annotations

import re
from functools import lru_cache

#: one trailing date/version segment
_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|@latest|:latest|-\d{3,4}|-preview|-latest|-v\d+(?::\d+)?)$")

#: names whose family no suffix rule finds, or that a suffix rule would get wrong.
#: ``None`` ends the chain: the name is its own model, not a snapshot of anything.
ALIASES: dict[str, str | None] = {
    # the first GPT-4 Turbo previews were named after gpt-4, and are priced as gpt-4-turbo
    "gpt-4-1106-preview": "gpt-4-turbo",
    "gpt-4-0125-preview": "gpt-4-turbo",
    "gpt-4-turbo-preview": "gpt-4-turbo",
    "gpt-4-vision-preview": "gpt-4-turbo",
    "gpt-4-1106-vision-preview": "gpt-4-turbo",
    # Gemini 1.0 Pro
    "gemini-1.0-pro": "gemini-pro",
    # a moving alias of Google's newest Pro model (2.5 and later), not Gemini 1.0 Pro
    "gemini-pro-latest": None,
}

#: vendor spellings of the same model (Azure drops the dot of "3.5")
_SPELLINGS = ((re.compile(r"^gpt-35-"), "gpt-3.5-"),)

_PREFIXES = ("models/",)


def normalize_model(name: str) -> str:
    """The lookup spelling of a model name: trimmed, lower case, vendor prefixes and spellings."""
    model = name.strip().lower()
    for prefix in _PREFIXES:
        if model.startswith(prefix):
            model = model[len(prefix) :]
    for pattern, replacement in _SPELLINGS:
        model = pattern.sub(replacement, model)
    return model


@lru_cache(maxsize=8192)
def model_candidates(name: str) -> tuple[str, ...]:
    """The names a price may be filed under, most specific first (see the module docstring)."""
    model = normalize_model(name)
    chain = [model]
    while True:
        if model in ALIASES:
            target = ALIASES[model]
            if target is None or target in chain:
                break
            model = target
        else:
            stripped = _SUFFIX.sub("", model)
            if stripped == model or not stripped:
                break
            model = stripped
        chain.append(model)
    return tuple(chain)
