"""Media URL policy: data URL checks, pixel caps before decoding, and SSRF-safe remote fetching."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest

from server.errors import MediaPolicyError
from server.media import MediaFetcher, MediaLimits, check_media, is_public_address, parse_data_url
from tests.server.fakes import (
    FakeCluster,
    chat_body,
    data_url,
    image_part,
    png_bytes,
    png_header_only,
    running_gateway,
    settings_for,
)

LIMITS = MediaLimits(max_bytes=100_000, max_pixels=4096 * 4096, max_frames=4)
PUBLIC_IP = "93.184.216.34"


def _check(url: str, kind: str = "image_url", limits: MediaLimits = LIMITS) -> None:
    media_type, data = parse_data_url(url, limits.max_bytes)
    check_media(kind, media_type, data, limits)


def test_valid_image_and_video_data_urls_pass() -> None:
    """Data URLs are the always-on media path: a real PNG, an mp4 payload and a JPEG frame list pass."""
    _check(data_url(png_bytes()))
    _check(data_url(b"\x00\x00\x00\x18ftypmp42", "video/mp4"), kind="video_url")
    jpeg = base64.b64encode(_jpeg()).decode()
    _check(f"data:video/jpeg;base64,{jpeg},{jpeg}", kind="video_url")


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("url", "kind", "needle"),
    [
        ("data:image/png,rawbytes", "image_url", "data:<type>/<subtype>;base64"),
        ("data:image/png;base64,@@@@", "image_url", "not valid base64"),
        ("data:;base64,AAAA", "image_url", "data:<type>/<subtype>;base64"),
        (data_url(b"not an image at all"), "image_url", "not a readable image"),
        (data_url(png_bytes(), "text/html"), "image_url", "image/* media type"),
        (data_url(png_bytes(), "image/png"), "video_url", "video/* media type"),
        (data_url(b"x" * 200_000, "video/mp4"), "video_url", "larger than"),
        (data_url(png_header_only(13000, 13000)), "image_url", "13000x13000"),
        (data_url(png_header_only(40000, 40000)), "image_url", "more than"),
        ("data:video/jpeg;base64," + ",".join(["AAAA"] * 5), "video_url", "5 frames"),
        (data_url(png_header_only(9000, 9000), "video/jpeg"), "video_url", "9000x9000"),
    ],
    ids=[
        "not base64 encoded", "bad base64", "no media type", "garbage image", "html as image",
        "image as video", "too many bytes", "pixel bomb", "huge bomb", "too many frames", "bomb frame",
    ],
)  # fmt: skip
def test_bad_data_urls_are_refused(url: str, kind: str, needle: str) -> None:
    """Stock vLLM answers 500/501 for several of these, and decodes pixel bombs in full before refusing."""
    with pytest.raises(MediaPolicyError) as info:
        _check(url, kind)
    assert needle in info.value.message
    assert info.value.status_code == 400


def test_pixel_cap_is_checked_from_the_header_without_decoding() -> None:
    """A 20 KB PNG claiming 13000x13000 must be refused in milliseconds: decoding it costs seconds of CPU."""
    bomb = data_url(png_header_only(13000, 13000))
    started = time.perf_counter()
    for _ in range(20):
        with pytest.raises(MediaPolicyError):
            _check(bomb)
    assert (time.perf_counter() - started) / 20 < 0.05


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.1.2.3", "10.0.0.5", "172.16.0.1", "192.168.1.1", "169.254.169.254",
        "100.100.100.200", "0.0.0.0", "255.255.255.255", "224.0.0.1", "::1", "::", "fe80::1", "fe80::1%eth0",
        "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:7f00:1::",
        "2001:0:4136:e378::1",
    ],
)  # fmt: skip
def test_non_public_addresses_are_refused(address: str) -> None:
    """Loopback, private, link-local, cloud metadata and their IPv6 wrappings must never be fetched (SSRF)."""
    assert not is_public_address(address)


@pytest.mark.parametrize("address", [PUBLIC_IP, "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    """The address filter must not block ordinary public hosts once an operator enabled remote media."""
    assert is_public_address(address)


def _fetcher(cluster: FakeCluster, client: httpx.AsyncClient, **overrides: Any) -> MediaFetcher:
    values = {"allow_remote_media": True, "media_allowed_hosts": ["images.example.com", "*.cdn.example"]}
    settings = settings_for(cluster, **(values | overrides))
    return MediaFetcher(settings, client, cluster.resolve)


def _png_response(body: bytes | None = None) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "image/png"}, content=body or png_bytes())


async def test_remote_media_disabled_by_default() -> None:
    """Remote URLs are refused unless an operator opted in: vLLM would otherwise fetch anything, anywhere."""
    cluster = FakeCluster("a")
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        fetcher = MediaFetcher(settings_for(cluster), client, cluster.resolve)
        with pytest.raises(MediaPolicyError, match="disabled"):
            await fetcher.resolve("image_url", "http://images.example.com/cat.png")
    assert cluster.media_requests == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://images.example.com/a.png",
        "gopher://x/",
        "javascript:alert(1)",
        "/local.png",
    ],
)
async def test_other_schemes_are_refused(url: str) -> None:
    """file:// gives a 500 in stock vLLM; every scheme but data and http(s) is a 400 here."""
    cluster = FakeCluster("a")
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        with pytest.raises(MediaPolicyError, match="data: or http"):
            await _fetcher(cluster, client).resolve("image_url", url)


async def test_allowlisted_host_is_fetched_from_the_checked_address() -> None:
    """The fetch must go to the address that passed the check (no second DNS lookup) and become a data URL."""
    cluster = FakeCluster("a")
    cluster.dns["images.example.com"] = [PUBLIC_IP]
    cluster.media["images.example.com/cat.png"] = _png_response()
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        url = await _fetcher(cluster, client).resolve("image_url", "http://images.example.com/cat.png")
    assert url == data_url(png_bytes())
    (request,) = cluster.media_requests
    assert request.url.host == PUBLIC_IP
    assert request.headers["host"] == "images.example.com"


@pytest.mark.parametrize(
    ("host", "addresses", "needle"),
    [
        ("evil.example.com", [PUBLIC_IP], "allowlist"),
        ("images.example.com.evil.net", [PUBLIC_IP], "allowlist"),
        ("cdn.example", [PUBLIC_IP], "allowlist"),
        ("images.example.com", ["127.0.0.1"], "non-public"),
        ("images.example.com", ["169.254.169.254"], "non-public"),
        ("images.example.com", ["fd00:ec2::254"], "non-public"),
        ("images.example.com", ["::ffff:10.0.0.1"], "non-public"),
        ("images.example.com", [PUBLIC_IP, "10.0.0.1"], "non-public"),
        ("images.example.com", [], "non-public"),
        ("unresolvable.cdn.example", None, "does not resolve"),
    ],
)
async def test_remote_host_checks(host: str, addresses: list[str] | None, needle: str) -> None:
    """Allowlist first, then every resolved address must be public; refused hosts are never contacted."""
    cluster = FakeCluster("a")
    if addresses is not None:
        cluster.dns[host] = addresses
    cluster.media[f"{host}/a.png"] = _png_response()
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        with pytest.raises(MediaPolicyError, match=needle):
            await _fetcher(cluster, client).resolve("image_url", f"http://{host}/a.png")
    assert cluster.media_requests == []


async def test_redirects_are_rechecked_per_hop() -> None:
    """vLLM follows a redirect from an allowed host to a metadata address; the gateway re-checks every hop."""
    cluster = FakeCluster("a")
    cluster.dns |= {"images.example.com": [PUBLIC_IP], "x.cdn.example": ["169.254.169.254"]}
    cluster.media["images.example.com/a.png"] = httpx.Response(
        302, headers={"location": "http://x.cdn.example/meta"}
    )
    cluster.media["images.example.com/b.png"] = httpx.Response(302, headers={"location": "/a.png"})
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        fetcher = _fetcher(cluster, client)
        with pytest.raises(MediaPolicyError, match="non-public"):
            await fetcher.resolve("image_url", "http://images.example.com/a.png")
        with pytest.raises(MediaPolicyError, match="redirects more than"):
            await _fetcher(cluster, client, media_max_redirects=1).resolve(
                "image_url", "http://images.example.com/b.png"
            )
    assert all(request.url.host == PUBLIC_IP for request in cluster.media_requests)


async def test_redirect_to_an_allowed_public_host_is_followed() -> None:
    """Re-checking hops must still allow ordinary CDN redirects."""
    cluster = FakeCluster("a")
    cluster.dns |= {"images.example.com": [PUBLIC_IP], "img.cdn.example": ["8.8.8.8"]}
    cluster.media["images.example.com/a.png"] = httpx.Response(
        301, headers={"location": "https://img.cdn.example/z"}
    )
    cluster.media["img.cdn.example/z"] = _png_response()
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        url = await _fetcher(cluster, client).resolve("image_url", "http://images.example.com/a.png")
    assert url.startswith("data:image/png;base64,")
    assert cluster.media_requests[-1].extensions["sni_hostname"] == "img.cdn.example"


class _EndlessBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield b"\0" * 65536


class _SilentBody(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        await anyio.Event().wait()
        yield b""


@pytest.mark.parametrize(
    ("response", "needle"),
    [
        (
            httpx.Response(
                200,
                headers={"content-type": "image/png", "content-length": "999999999"},
                stream=_EndlessBody(),
            ),
            "larger than",
        ),
        (httpx.Response(200, headers={"content-type": "image/png"}, stream=_EndlessBody()), "larger than"),
        (
            httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"),
            "image/\\* media type",
        ),
        (httpx.Response(404), "HTTP 404"),
        (httpx.Response(200, headers={"content-type": "image/png"}, stream=_SilentBody()), "longer than"),
        (_png_response(png_header_only(20000, 20000)), "pixels"),
    ],
    ids=["declared too big", "endless body", "wrong type", "not found", "never finishes", "pixel bomb"],
)
async def test_remote_bodies_are_capped(response: httpx.Response, needle: str) -> None:
    """Byte, time, type and pixel caps apply to fetched media exactly as to data URLs."""
    cluster = FakeCluster("a")
    cluster.dns["images.example.com"] = [PUBLIC_IP]
    cluster.media["images.example.com/a.png"] = response
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        fetcher = _fetcher(cluster, client, max_media_bytes=200_000, media_fetch_timeout_s=0.2)
        with pytest.raises(MediaPolicyError, match=needle):
            await fetcher.resolve("image_url", "http://images.example.com/a.png")


async def test_remote_credentials_and_unreachable_hosts() -> None:
    """URLs with credentials are refused; connection failures are a 400 about the URL, not a 500."""
    cluster = FakeCluster("a")
    cluster.dns["images.example.com"] = [PUBLIC_IP]
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        fetcher = _fetcher(cluster, client)
        with pytest.raises(MediaPolicyError, match="credentials"):
            await fetcher.resolve("image_url", "http://user:pw@images.example.com/a.png")
        with pytest.raises(MediaPolicyError, match="could not fetch"):
            await fetcher.resolve("image_url", "http://images.example.com/missing.png")


async def test_gateway_forwards_fetched_media_as_data_url_and_names_the_part() -> None:
    """End to end: the replica receives a data URL, and a refused part is named in the error's param."""
    cluster = FakeCluster("a")
    cluster.dns["images.example.com"] = [PUBLIC_IP]
    cluster.media["images.example.com/cat.png"] = _png_response()
    remote = {"allow_remote_media": True, "media_allowed_hosts": ["images.example.com"]}
    async with running_gateway(cluster, **remote) as (_, client):
        good = chat_body([{"type": "text", "text": "what?"}, image_part("http://images.example.com/cat.png")])
        assert (await client.post("/v1/chat/completions", json=good)).status_code == 200
        bad = chat_body([image_part(data_url(png_bytes())), image_part("file:///etc/passwd")])
        response = await client.post("/v1/chat/completions", json=bad)
    sent = cluster["a"].bodies[0]["messages"][0]["content"][1]["image_url"]["url"]
    assert sent == data_url(png_bytes())
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages[0].content[1].image_url.url"
    assert len(cluster["a"].bodies) == 1


async def test_too_many_media_items_are_refused() -> None:
    """The per-request item cap bounds the preprocessing work one request can demand from a replica."""
    cluster = FakeCluster("a")
    async with running_gateway(cluster, max_media_items=2) as (_, client):
        parts = [image_part(data_url(png_bytes()))] * 3
        response = await client.post("/v1/chat/completions", json=chat_body(parts))
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
