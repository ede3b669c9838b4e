"""Query strings of the GET endpoints, checked as strictly as bodies are."""

from __future__ import annotations

from multidict import MultiMapping

from gateway.errors import InvalidRequest


def only_parameters(query: MultiMapping[str], known: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> None:
    """Refuse a parameter the endpoint does not read, or one given twice: ``from=``/``to=`` were
    ignored and the all-time total answered for a day's question (a review), and a second
    ``start=`` was dropped. ``prefixes``: families of names it reads (``metadata.<key>``)."""
    seen: set[str] = set()
    for name, _ in query.items():
        if name not in known and not name.startswith(prefixes):
            reads = ", ".join((*known, *(f"{p}<key>" for p in prefixes)))
            raise InvalidRequest(
                f"Unrecognized query parameter: {name!r} (this endpoint reads {reads})",
                param=name,
                code="unknown_parameter",
            )
        if name in seen:
            raise InvalidRequest(f"Query parameter {name!r} given more than once", param=name)
        seen.add(name)
