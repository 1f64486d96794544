"""Media URL policy: what image and video URLs the gateway accepts and how they reach vLLM.

- `data:` URLs are always accepted once checked: base64 (`;base64` required), media type
  `image/*` for `image_url` parts and `video/*` for `video_url` parts, at most `max_media_bytes`
  decoded. Images are opened with PIL only far enough to read width and height from the header
  (no pixel decoding) and refused above `max_image_pixels`; `video/jpeg` frame lists (vLLM's
  comma-separated base64 JPEGs) are capped at `max_video_frames` frames, each checked as an image.
  Other video types are capped by bytes; vLLM samples their frames itself.
- `http(s)` URLs are refused unless `allow_remote_media` is set and the host is allowlisted.
  The gateway then fetches them itself: every address the name resolves to must be public
  (no private, loopback, link-local, metadata, CGNAT, NAT64 or reserved address), the connection
  goes to the address that was checked (no second DNS lookup), redirects are re-checked hop by
  hop, and bytes and time are capped. vLLM receives the result as a data URL.
- Every other scheme (`file:`, `ftp:`, ...) is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import re
import socket
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import httpx
from PIL import Image

from server.config import Settings
from server.errors import MediaPolicyError

# host, port -> the IP addresses it resolves to (injectable so tests never touch DNS).
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Formats PIL may open: the common image formats only, not every plugin PIL ships.
_IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_KIND_PREFIX = {"image_url": "image/", "video_url": "video/"}
# Addresses `is_global` lets through that still reach internal hosts (NAT64 prefixes).
_BLOCKED_NETWORKS = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48"))
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
_MAX_URL_IN_MESSAGE = 80


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def is_public_address(text: str) -> bool:
    """True only for globally routable unicast addresses (IPv4 inside IPv6 is unwrapped)."""
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None or any(ip in net for net in _BLOCKED_NETWORKS):
            return False
        ip = ip.ipv4_mapped or ip.sixtofour or ip
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_loopback or ip.is_link_local)


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int
    max_pixels: int
    max_frames: int

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaLimits:
        return cls(settings.max_media_bytes, settings.max_image_pixels, settings.max_video_frames)


def check_media(kind: str, media_type: str, data: bytes | list[bytes], limits: MediaLimits) -> None:
    """Check decoded media of a `kind` part ("image_url"/"video_url") against the limits."""
    if not _MEDIA_TYPE.fullmatch(media_type) or not media_type.startswith(_KIND_PREFIX[kind]):
        raise MediaPolicyError(f"{kind} needs a {_KIND_PREFIX[kind]}* media type, got {media_type[:40]!r}")
    frames = data if isinstance(data, list) else [data]
    if len(frames) > limits.max_frames:
        raise MediaPolicyError(f"video has {len(frames)} frames; at most {limits.max_frames} are accepted")
    if sum(len(frame) for frame in frames) > limits.max_bytes:
        raise MediaPolicyError(f"media is larger than {limits.max_bytes} bytes")
    if kind == "image_url" or media_type == "video/jpeg":
        for frame in frames:
            check_image_header(frame, limits.max_pixels)


def check_image_header(data: bytes, max_pixels: int) -> None:
    """Read width and height from the image header (no decoding) and refuse over `max_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=_IMAGE_FORMATS) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise MediaPolicyError(f"image has more than {max_pixels} pixels") from None
    except Exception:  # PIL raises many types for hostile headers; all mean "not an image we take"
        raise MediaPolicyError(f"not a readable image (formats: {', '.join(_IMAGE_FORMATS)})") from None
    if width * height > max_pixels:
        raise MediaPolicyError(f"image is {width}x{height} pixels; at most {max_pixels} pixels are accepted")


def parse_data_url(url: str, max_bytes: int) -> tuple[str, bytes | list[bytes]]:
    """(media type, decoded bytes) of a base64 data URL; `video/jpeg` gives one item per frame."""
    header, comma, payload = url.partition(",")
    params = header.removeprefix("data:").split(";")
    media_type = params[0].strip().lower()
    if not comma or params[-1].strip().lower() != "base64" or "/" not in media_type:
        raise MediaPolicyError("data URLs must look like data:<type>/<subtype>;base64,<data>")
    if len(payload) * 3 // 4 > max_bytes + 3:
        raise MediaPolicyError(f"media is larger than {max_bytes} bytes")
    try:
        if media_type == "video/jpeg":
            return media_type, [base64.b64decode(frame, validate=True) for frame in payload.split(",")]
        return media_type, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaPolicyError("data URL payload is not valid base64") from None


def to_data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


class MediaFetcher:
    """Checks every media URL of a request and fetches allowlisted remote ones (see module doc)."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient, resolver: Resolver) -> None:
        self.limits = MediaLimits.from_settings(settings)
        self.allow_remote = settings.allow_remote_media
        self.allowed_hosts = settings.media_allowed_hosts
        self.timeout_s = settings.media_fetch_timeout_s
        self.max_redirects = settings.media_max_redirects
        self.client = client
        self.resolver = resolver

    async def resolve(self, kind: str, url: str) -> str:
        """The URL to forward for a `kind` part: the checked data URL itself, or a fetched one."""
        scheme = url.partition(":")[0].strip().lower()
        if scheme == "data":
            media_type, data = parse_data_url(url, self.limits.max_bytes)
            await anyio.to_thread.run_sync(check_media, kind, media_type, data, self.limits)
            return url
        if scheme not in ("http", "https"):
            raise MediaPolicyError(f"{kind} URLs must be data: or http(s): URLs, got scheme {scheme[:16]!r}")
        if not self.allow_remote:
            raise MediaPolicyError("remote media URLs are disabled on this gateway; send a data: URL instead")
        try:
            with anyio.fail_after(self.timeout_s):
                media_type, data = await self._fetch(url)
        except TimeoutError:
            raise MediaPolicyError(f"fetching {_short(url)} took longer than {self.timeout_s} s") from None
        await anyio.to_thread.run_sync(check_media, kind, media_type, data, self.limits)
        return to_data_url(media_type, data)

    async def _fetch(self, url: str) -> tuple[str, bytes]:
        """GET with every hop checked; returns (media type, body)."""
        for _ in range(self.max_redirects + 1):
            try:
                target = httpx.URL(url)
            except httpx.InvalidURL:
                raise MediaPolicyError(f"invalid media URL {_short(url)}") from None
            address = await self._checked_address(target)
            async with self._get(target, address) as response:
                if response.is_redirect:
                    url = str(target.join(response.headers.get("location", "")))
                    continue
                if response.status_code != 200:
                    raise MediaPolicyError(f"{_short(url)} answered HTTP {response.status_code}")
                return await self._read_body(url, response)
        raise MediaPolicyError(f"{_short(url)} redirects more than {self.max_redirects} times")

    async def _checked_address(self, url: httpx.URL) -> str:
        """An address of the URL's host, after the scheme, allowlist and address checks."""
        if url.scheme not in ("http", "https") or not url.host:
            raise MediaPolicyError(f"media URLs must be http(s) with a host, got {_short(str(url))}")
        if url.userinfo:
            raise MediaPolicyError("media URLs must not carry credentials")
        if not self._host_allowed(url.host):
            raise MediaPolicyError(f"media host {url.host!r} is not on this gateway's allowlist")
        try:
            addresses = await self.resolver(url.host, url.port or (443 if url.scheme == "https" else 80))
        except (OSError, UnicodeError):
            raise MediaPolicyError(f"media host {url.host!r} does not resolve") from None
        if not addresses or not all(is_public_address(address) for address in addresses):
            raise MediaPolicyError(f"media host {url.host!r} resolves to a non-public address")
        return addresses[0]

    def _host_allowed(self, host: str) -> bool:
        host = host.lower()
        for allowed in self.allowed_hosts:
            suffix = allowed.removeprefix("*")
            if host == allowed or (allowed.startswith("*.") and host.endswith(suffix)):
                return True
        return False

    @asynccontextmanager
    async def _get(self, url: httpx.URL, address: str) -> AsyncIterator[httpx.Response]:
        """GET `url` from the checked `address` (Host header and TLS name stay the original host)."""
        request = self.client.build_request(
            "GET",
            url.copy_with(host=address),
            headers={"Host": url.netloc.decode("ascii"), "Accept": "image/*, video/*"},
            extensions={"sni_hostname": url.host},
            timeout=self.timeout_s,
        )
        try:
            response = await self.client.send(request, stream=True, follow_redirects=False)
            try:
                yield response
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            raise MediaPolicyError(f"could not fetch {_short(str(url))} ({type(exc).__name__})") from None

    async def _read_body(self, url: str, response: httpx.Response) -> tuple[str, bytes]:
        media_type = response.headers.get("content-type", "").partition(";")[0].strip().lower()
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limits.max_bytes:
            raise MediaPolicyError(f"{_short(url)} is larger than {self.limits.max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self.limits.max_bytes:
                raise MediaPolicyError(f"{_short(url)} is larger than {self.limits.max_bytes} bytes")
        return media_type, bytes(body)


def _short(url: str) -> str:
    """A URL cut short for error messages (data URLs never reach here)."""
    return repr(url if len(url) <= _MAX_URL_IN_MESSAGE else url[:_MAX_URL_IN_MESSAGE] + "...")
