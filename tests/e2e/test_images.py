"""Images in user messages (``image_url`` content parts): each provider gets them in its own
shape, a provider that cannot carry them is never asked, and bad images are 400s."""

from __future__ import annotations

import base64
from typing import Any

import openai
import pytest

from tests.support.gateway import RunningGateway

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()
DATA_URL = f"data:image/png;base64,{PNG}"
WEB_URL = "https://example.com/cat.jpg"


def look(url: str, detail: str | None = None) -> list[dict[str, Any]]:
    image: dict[str, Any] = {"url": url} | ({"detail": detail} if detail else {})
    content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": image}]
    return [{"role": "user", "content": content}]


async def ask(gw: RunningGateway, model: str, provider: str, messages: list[dict[str, Any]]) -> str:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_body={"provider": provider}
        )
    served: str = raw.headers["x-llm-provider"]
    return served


@pytest.mark.parametrize("provider", ["openai", "azure"])
async def test_openai_and_azure_get_the_parts_as_sent(gw: RunningGateway, provider: str) -> None:
    for url in (DATA_URL, WEB_URL):
        assert await ask(gw, "gpt-4o", provider, look(url, "low")) == provider
        [message] = gw.sims[provider].requests[-1].body["messages"]
        assert message["content"] == look(url, "low")[0]["content"]


async def test_anthropic_gets_image_blocks(gw: RunningGateway) -> None:
    assert await ask(gw, "claude-3-haiku", "anthropic", look(DATA_URL)) == "anthropic"
    [message] = gw.sims["anthropic"].requests[-1].body["messages"]
    assert message["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]
    assert await ask(gw, "claude-3-haiku", "anthropic", look(WEB_URL)) == "anthropic"
    [message] = gw.sims["anthropic"].requests[-1].body["messages"]
    assert message["content"][1] == {"type": "image", "source": {"type": "url", "url": WEB_URL}}


async def test_gemini_gets_inline_data(gw: RunningGateway) -> None:
    assert await ask(gw, "gemini-pro", "google", look(DATA_URL)) == "google"
    [turn] = gw.sims["google"].requests[-1].body["contents"]
    assert turn["parts"] == [{"text": "What is this?"}, {"inlineData": {"mimeType": "image/png", "data": PNG}}]


async def test_ollama_gets_base64_images(gw: RunningGateway) -> None:
    assert await ask(gw, "llama3", "ollama", look(DATA_URL)) == "ollama"
    [message] = gw.sims["ollama"].requests[-1].body["messages"]
    assert message == {"role": "user", "content": "What is this?", "images": [PNG]}


@pytest.mark.parametrize("provider", ["google", "ollama"])
async def test_an_image_by_url_is_not_sent_to_a_vendor_that_cannot_fetch_it(gw: RunningGateway, provider: str) -> None:
    """Gemini and Ollama take image bytes, not URLs: pinned first, they are skipped (the image
    is never dropped on the way) and the next provider serves."""
    assert await ask(gw, "gpt-4o", provider, look(WEB_URL)) == "openai"
    assert gw.sims[provider].requests == []


@pytest.mark.parametrize(
    ("messages", "param", "fragment"),
    [
        (look("ftp://example.com/a.png"), "messages[0].content[1].image_url.url", "http(s) URL or a data URL"),
        (look("data:image/tiff;base64,AAAA"), "messages[0].content[1].image_url.url", "image/tiff"),
        (look("data:image/png;base64,@@@"), "messages[0].content[1].image_url.url", "not base64"),
        (look(DATA_URL, "huge"), "messages[0].content[1].image_url.detail", "must be one of"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "messages[0].content[0].image_url.url",
            "Missing required parameter",
        ),
        (
            [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": DATA_URL}}]}],
            "messages[0].content[0]",
            "images in user messages",
        ),
    ],
)
async def test_bad_images_are_400s(
    gw: RunningGateway, messages: list[dict[str, Any]], param: str, fragment: str
) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
    assert info.value.param == param and fragment in info.value.message
    assert gw.event_log.events == []


async def test_an_image_url_no_provider_serving_the_model_can_fetch_is_a_400(gw: RunningGateway) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gemini-2.5-flash", messages=look(WEB_URL))  # type: ignore[arg-type]
    assert info.value.param == "messages" and "An image by http(s) URL" in info.value.message
    assert "data URL instead" in info.value.message and gw.sims["google"].requests == []


async def test_a_photo_sized_image_fits_the_default_body_limit(gw: RunningGateway) -> None:
    """A 3 MB image is 4 MB of base64: the default limit (20 MiB) takes it (1 MiB refused
    anything past about 750 KB of image with a 413)."""
    photo = base64.b64encode(b"\xff\xd8\xff" + b"\x01" * 3_000_000).decode()
    assert await ask(gw, "gpt-4o", "openai", look(f"data:image/jpeg;base64,{photo}")) == "openai"
    [message] = gw.sims["openai"].requests[-1].body["messages"]
    assert message["content"][1]["image_url"]["url"].endswith(photo[-64:])


JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x02" * 30).decode()


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/jpg;base64,{JPEG}",  # a common name for image/jpeg
        f"DATA:IMAGE/JPEG;BASE64,{JPEG}",  # names are case-insensitive
        f"data:image/jpeg;name=cat.jpg;base64,{JPEG}",  # RFC 2397 parameters
        f"data:image/png;base64,{JPEG}",  # declared PNG, the bytes are a JPEG: they say what it is
        f"data:image/jpeg;base64,{JPEG[:20]}\n{JPEG[20:]}",  # a line break in the base64
        f"data:image/jpeg;base64,{JPEG.rstrip('=')}",  # no padding
    ],
)
async def test_unusual_but_valid_data_urls_reach_the_vendor_as_a_jpeg(gw: RunningGateway, url: str) -> None:
    messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
    assert await ask(gw, "claude-3-haiku", "anthropic", messages) == "anthropic"
    [message] = gw.sims["anthropic"].requests[-1].body["messages"]
    assert message["content"] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": JPEG}}
    ]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("data:image/png;base64,", "holds no image"),
        ("https://", "http(s) URL or a data URL"),
        (f"data:image/png;base64,{base64.b64encode(b'not an image at all').decode()}", "not a PNG, JPEG, GIF or WebP"),
    ],
)
async def test_empty_hostless_or_foreign_images_are_400s(gw: RunningGateway, url: str, fragment: str) -> None:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=look(url))  # type: ignore[arg-type]
    assert fragment in info.value.message and gw.event_log.events == []


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://@/a.png", "without a host"),
        ("https://:443/a.png", "without a host"),
        ("http://user:pw@/a.png", "without a host"),
        ("http://example.com:abc/a.png", "not a valid http(s) URL"),
        ("http://example.com:99999/a.png", "not a valid http(s) URL"),
        ("http://exa mple.com/a.png", "blank in its host"),
    ],
)
async def test_an_http_url_a_vendor_could_not_fetch_is_a_400(gw: RunningGateway, url: str, fragment: str) -> None:
    """An empty host (a review), a port that is no port or a blank in the host (a re-test)
    passed the URL's pattern and were sent, and billed."""
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=look(url))  # type: ignore[arg-type]
    assert info.value.param == "messages[0].content[1].image_url.url" and fragment in info.value.message
    assert gw.event_log.events == []


@pytest.mark.parametrize("blank", ["\n", " ", "\t\n "])
async def test_anthropic_gets_no_text_block_of_whitespace_beside_an_image(gw: RunningGateway, blank: str) -> None:
    """Anthropic refuses a text block of whitespace alone with a 400 that does not fall back; a
    review found ``"\\n"`` beside an image sent as one. It joins the text before it, or goes."""
    image = {"type": "image_url", "image_url": {"url": DATA_URL}}
    space, look_at = {"type": "text", "text": blank}, {"type": "text", "text": "Look:"}
    shapes = [
        ([space, image], [{"type": "image"}]),
        ([look_at, space, image], [{"text": "Look:" + blank}, {"type": "image"}]),
        ([image, space, image], [{"type": "image"}, {"type": "image"}]),
    ]
    for content, expected in shapes:
        messages = [{"role": "user", "content": content}]
        assert await ask(gw, "claude-3-haiku", "anthropic", messages) == "anthropic"
        [message] = gw.sims["anthropic"].requests[-1].body["messages"]
        got = [{"type": b["type"]} if b["type"] == "image" else {"text": b["text"]} for b in message["content"]]
        assert got == expected


GIF = base64.b64encode(b"GIF89a" + b"\0" * 16).decode()


async def refused(gw: RunningGateway, model: str, messages: list[dict[str, Any]]) -> openai.BadRequestError:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model=model, messages=messages)  # type: ignore[arg-type]
    return info.value


async def test_a_gif_is_not_sent_to_gemini(gw: RunningGateway) -> None:
    """Gemini takes PNG, JPEG, WebP, HEIC and HEIF: a GIF is its 400, which does not fall back
    (a review). Pinned first, Google is skipped; for a model only Google serves, a 400 here."""
    gif = look(f"data:image/gif;base64,{GIF}")
    assert await ask(gw, "gpt-4o", "google", gif) == "openai"
    assert gw.sims["google"].requests == []
    refusal = await refused(gw, "gemini-2.5-flash", gif)
    assert refusal.param == "messages" and "A GIF image" in refusal.message
    assert gw.sims["google"].requests == [] and gw.event_log.events[-1].provider == "openai"
    assert await ask(gw, "gemini-2.5-flash", "google", look(DATA_URL)) == "google"  # a PNG goes


async def test_an_image_over_anthropics_5_mb_is_not_sent_to_anthropic(gw: RunningGateway) -> None:
    """Anthropic refuses an image of more than 5 MiB of base64 ("image exceeds 5 MB maximum"),
    a 400 that does not fall back, where OpenAI takes 20 MB (a review): not sent to it."""
    big = base64.b64encode(b"\xff\xd8\xff" + b"\x03" * (4 * 1024 * 1024)).decode()  # 5.3 MiB of base64
    assert len(big) > 5 * 1024 * 1024
    photo = look(f"data:image/jpeg;base64,{big}")
    assert await ask(gw, "gpt-4o", "anthropic", photo) == "openai"
    assert gw.sims["anthropic"].requests == []
    refusal = await refused(gw, "claude-3-5-sonnet-20241022", photo)
    assert refusal.param == "messages" and "more than 5 MiB" in refusal.message
    small = base64.b64encode(b"\xff\xd8\xff" + b"\x03" * (3 * 1024 * 1024)).decode()  # 4 MiB: goes
    assert await ask(gw, "claude-3-haiku", "anthropic", look(f"data:image/jpeg;base64,{small}")) == "anthropic"
