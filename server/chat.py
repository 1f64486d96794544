"""`POST /v1/chat/completions`: validate, apply the AIM knob, check media, proxy, annotate usage.

The body the replica receives is the client's body minus `aim` and the engine overrides
(`schemas.ENGINE_OVERRIDES`), plus `mm_processor_kwargs` from the validated knob; streams always
ask the replica for the final usage chunk (`stream_options.include_usage`), which reaches the
client only when the client asked for it too.

`usage.aim` in every answer: the engine's object unchanged, plus `"level"` (the normalised knob,
`aim_vllm.core.level` text form); `{"level": ...}` alone when the engine sent none. Metrics aggregate the
engine's fields under the knob's bounded label.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from server import jsonio
from server.body import read_json_object
from server.config import Settings
from server.errors import GatewayError, InvalidRequestError, UpstreamError
from server.frames import frames_to_videos
from server.knob import AimLevel, resolve_knob
from server.media import MediaFetcher
from server.metrics import GatewayMetrics
from server.schemas import ENGINE_OVERRIDES, GATEWAY_FIELDS, MEDIA_PART_TYPES, validate_chat_request
from server.upstream import Opened, ProxyStreamResponse, Upstream, UpstreamCall, status_error

logger = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class PreparedChat:
    """A validated request, ready for a replica."""

    body: bytes
    knob: AimLevel
    stream: bool
    client_wants_usage: bool
    has_media: bool
    started: float


def build_upstream_body(raw: dict[str, Any], knob: AimLevel) -> dict[str, Any]:
    """The body a replica receives (see module docstring)."""
    body = {key: value for key, value in raw.items() if key not in ENGINE_OVERRIDES | GATEWAY_FIELDS}
    body["mm_processor_kwargs"] = knob.engine_kwargs()
    if raw.get("stream"):
        body["stream_options"] = {**(raw.get("stream_options") or {}), "include_usage": True}
    return body


def annotate_usage(payload: dict[str, Any], knob: AimLevel) -> dict[str, Any] | None:
    """Add `level` to `payload["usage"]["aim"]`; returns the engine's own aim object, if any."""
    usage = payload.get("usage")
    if not isinstance(usage, dict):
        return None
    engine_aim = usage.get("aim") if isinstance(usage.get("aim"), dict) else None
    usage["aim"] = {**(engine_aim or {}), "level": knob.text}
    return engine_aim


class ChatService:
    def __init__(
        self, settings: Settings, upstream: Upstream, media: MediaFetcher, metrics: GatewayMetrics
    ) -> None:
        self.settings = settings
        self.default_knob = settings.default_knob
        self.upstream = upstream
        self.media = media
        self.metrics = metrics

    async def read(self, request: Request) -> dict[str, Any]:
        """The whole body, checked to be a JSON object within the caps.

        Call it before `until_disconnect`: its watcher consumes `receive` messages, and would
        take pieces of a body still arriving.
        """
        return await read_json_object(request, self.settings.body_limit, self.settings.max_json_depth)

    async def handle(self, request: Request, raw: dict[str, Any], level_header: str | None) -> Response:
        """The request whose body `read` returned: prepare, send to a replica, answer (JSON or SSE);
        `level_header`: the `X-AIM-Level` header, if sent."""
        prepared = await self.prepare(raw, level_header)
        request_id = request.scope.get("state", {}).get("request_id", "")
        call = UpstreamCall("POST", CHAT_PATH, prepared.body, prepared.stream, request_id, prepared.has_media)
        deadline = self.upstream.deadline()
        opened = await self.upstream.open(call, deadline)
        logger.debug("chat level=%s replica=%s", prepared.knob.text, opened.replica.url)
        if prepared.stream and opened.status == 200:
            events = self.upstream.relay(opened, StreamUsage(self, prepared).transform, deadline)
            return ProxyStreamResponse(events, opened.close)
        return await self._complete(opened, prepared)

    async def prepare(self, raw: dict[str, Any], level_header: str | None) -> PreparedChat:
        started = time.monotonic()
        settings = self.settings
        checked = validate_chat_request(raw)
        knob = resolve_knob(checked.aim, level_header, self.default_knob)
        as_video = (
            settings.frames_as_video if checked.aim_frames_as_video is None else checked.aim_frames_as_video
        )
        # frames that become videos are capped per video (max_video_frames), not as items
        _check_media_count(
            checked.media_count, settings.max_media_items * (settings.max_video_frames if as_video else 1)
        )
        await self._resolve_media(raw["messages"])
        if as_video:
            await anyio.to_thread.run_sync(frames_to_videos, raw["messages"], self.media.limits)
            _check_media_count(_media_parts(raw["messages"]), settings.max_media_items)
        dropped = sorted(ENGINE_OVERRIDES.intersection(raw))
        if dropped:
            logger.debug("dropped engine overrides from the request: %s", dropped)
        body = jsonio.dumps(build_upstream_body(raw, knob))
        wants_usage = bool(checked.stream_options and checked.stream_options.include_usage)
        stream, has_media = bool(checked.stream), checked.media_count > 0
        return PreparedChat(body, knob, stream, wants_usage, has_media, started)

    async def _resolve_media(self, messages: list[dict[str, Any]]) -> None:
        """Check every media URL in place; remote ones are replaced by the fetched data URL."""
        for i, message in enumerate(messages):
            parts = message.get("content")
            for j, part in enumerate(parts if isinstance(parts, list) else ()):
                kind = part.get("type")
                if kind not in MEDIA_PART_TYPES:
                    continue
                try:
                    part[kind]["url"] = await self.media.resolve(kind, part[kind]["url"])
                except GatewayError as exc:
                    exc.param = exc.param or f"messages[{i}].content[{j}].{kind}.url"
                    raise

    async def _complete(self, opened: Opened, prepared: PreparedChat) -> Response:
        await opened.close()
        status = opened.status
        if status != 200:
            raise status_error(status, opened.head)
        try:
            payload = jsonio.loads(opened.head)
        except (ValueError, RecursionError):
            raise UpstreamError("the replica's answer is not JSON") from None
        if not isinstance(payload, dict):
            raise UpstreamError("the replica's answer is not a JSON object")
        self.observe(prepared.knob, annotate_usage(payload, prepared.knob))
        return Response(jsonio.dumps(payload), media_type="application/json")

    def observe(self, knob: AimLevel, engine_aim: dict[str, Any] | None) -> None:
        if engine_aim:
            self.metrics.observe_aim(knob.label, engine_aim)


def _media_parts(messages: list[dict[str, Any]]) -> int:
    return sum(
        isinstance(part, dict) and part.get("type") in MEDIA_PART_TYPES
        for message in messages
        for part in (message.get("content") if isinstance(message.get("content"), list) else ())
    )


def _check_media_count(count: int, limit: int) -> None:
    if count > limit:
        raise InvalidRequestError(f"{count} images/videos in one request; at most {limit}", param="messages")


class StreamUsage:
    """Per-stream event rewriting: TTFT on the first event, `usage.aim.level` on the usage chunk."""

    def __init__(self, service: ChatService, prepared: PreparedChat) -> None:
        self.service = service
        self.prepared = prepared
        self.first = True

    def transform(self, event: bytes) -> bytes | None:
        if self.first:
            self.first = False
            elapsed = time.monotonic() - self.prepared.started
            self.service.metrics.ttft.labels(self.prepared.knob.label).observe(elapsed)
        if b'"usage"' not in event or not event.startswith(b"data:"):
            return event
        try:
            payload = jsonio.loads(event[len(b"data:") :])
        except (ValueError, RecursionError):
            return event
        if not isinstance(payload, dict) or not isinstance(payload.get("usage"), dict):
            return event
        self.service.observe(self.prepared.knob, annotate_usage(payload, self.prepared.knob))
        if not self.prepared.client_wants_usage and not payload.get("choices"):
            return None  # the usage-only chunk the gateway asked for on its own behalf
        return b"data: " + jsonio.dumps(payload)
