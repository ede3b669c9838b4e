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

from gateway.urls import http_url_problem

#: the image types every vendor here takes
MEDIA_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: names clients use for them
_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
DETAILS = frozenset({"auto", "low", "high"})
#: the longest base64 payload of one image Anthropic takes ("image exceeds 5 MB maximum:
#: 5592672 bytes > 5242880 bytes", measured on the base64 text): a longer one needs
#: ``large_images`` (``ChatRequest.needs``), which its adapter does not carry
ANTHROPIC_MAX_BASE64 = 5 * 1024 * 1024
#: RFC 2397: ``data:<type>[;parameter=value]*;base64,<data>`` (case-insensitive names)
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?:;[^;,]*)*;base64,(?P<data>.*)", re.DOTALL | re.IGNORECASE)
_URL = re.compile(r"https?://[^/\s?#]+.*", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Image:
    #: the URL as the client sent it (OpenAI and Azure get it back as is)
    url: str
    detail: str | None = None
    #: a ``data:`` URL's media type (what its bytes are) and base64 payload (None for an
    #: http(s) URL)
    media_type: str | None = None
    data: str | None = None

    @property
    def inline(self) -> bool:
        return self.data is not None

    def needs(self) -> tuple[str, ...]:
        """What of ``gateway.types.CAPABILITIES`` sending this image needs besides ``images``:
        ``image_urls`` (the vendor fetches it), ``gif_images`` (Gemini takes PNG, JPEG, WebP,
        HEIC and HEIF, and refuses a GIF with a 400 that does not fall back) and
        ``large_images`` (a payload over Anthropic's 5 MB)."""
        if self.data is None:
            return ("image_urls",)
        needs = ("gif_images",) if self.media_type == "image/gif" else ()
        return (*needs, "large_images") if len(self.data) > ANTHROPIC_MAX_BASE64 else needs


def parse_image_url(url: str, detail: str | None) -> Image:
    """An image from ``image_url.url``; ``ValueError`` says what is wrong with it."""
    url = url.strip()
    if _URL.fullmatch(url):
        if (problem := http_url_problem(url)) is not None:  # nothing a vendor could fetch
            raise ValueError(problem)
        return Image(url, detail)
    found = _DATA_URL.fullmatch(url)
    if found is None:
        raise ValueError("must be an http(s) URL or a data URL (data:image/png;base64,...)")
    declared = found["type"].strip().lower()
    declared = _ALIASES.get(declared, declared)
    if declared not in MEDIA_TYPES:
        raise ValueError(
            f"is a {declared or 'typeless'} data URL; the image types taken are {', '.join(sorted(MEDIA_TYPES))}"
        )
    data = "".join(found["data"].split())
    try:
        padded = data + "=" * (-len(data) % 4)
        url_safe = "-" in data or "_" in data
        raw = base64.b64decode(padded, altchars=b"-_" if url_safe else None, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("holds data that is not base64") from exc
    if not raw:
        raise ValueError("holds no image (the data is empty)")
    actual = _sniff(raw)
    if actual is None:
        raise ValueError("holds data that is not a PNG, JPEG, GIF or WebP image")
    if url_safe or padded != data or data != found["data"]:
        data = base64.b64encode(raw).decode()  # what the vendors take: standard, padded, one line
    return Image(url, detail, actual, data)


def _sniff(raw: bytes) -> str | None:
    """The image type its first bytes say (a vendor refuses a media type its bytes belie)."""
    if raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if raw.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if raw.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if raw.startswith(b"RIFF") and raw[8:12] == b"WEBP":
        return "image/webp"
    return None
