"""Images in a user message (OpenAI's ``image_url`` content parts), vendor-neutral.

An image is a ``data:`` URL (the bytes, base64) or an ``http(s)`` URL the vendor fetches.
Every adapter that maps images says ``"images"`` in ``Provider.options``; one whose vendor can
also fetch a URL says ``"image_urls"``. A request is never sent to a provider that would drop
its images (``ChatRequest.needs``).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

#: the image types every vendor here takes
MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
DETAILS = frozenset({"auto", "low", "high"})
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+);base64,(?P<data>.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Image:
    #: the URL as the client sent it (OpenAI and Azure get it back as is)
    url: str
    detail: str | None = None
    #: a ``data:`` URL's media type and base64 payload (None for an http(s) URL)
    media_type: str | None = None
    data: str | None = None

    @property
    def inline(self) -> bool:
        return self.data is not None


def parse_image_url(url: str, detail: str | None) -> Image:
    """An image from ``image_url.url``; ``ValueError`` says what is wrong with it."""
    if url.startswith(("https://", "http://")):
        return Image(url, detail)
    found = _DATA_URL.fullmatch(url)
    if found is None:
        raise ValueError("must be an http(s) URL or a data URL (data:image/png;base64,...)")
    media_type = found["type"].lower()
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"is a {media_type} data URL; the image types taken are {', '.join(sorted(MEDIA_TYPES))}")
    data = "".join(found["data"].split())
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("holds data that is not base64") from exc
    return Image(url, detail, media_type, data)
