"""Gateway settings: `AIM_GW_*` environment variables, or flags of `aim-vllm gateway`/`serve`.

List settings read from the environment take commas (`AIM_GW_UPSTREAMS=http://a:8001,http://b:8001`)
or a JSON list. Keys are kept as `SecretStr`, so they never appear in reprs or logs.

Replicas come from `upstreams` (a static list), `upstream_dns` (every A/AAAA record of one name,
re-resolved each health interval: a Kubernetes headless Service), or both; at least one is needed.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from server.knob import AimLevel, parse_level
from server.routing import RoutingPolicy

_MIB = 1024 * 1024
BODY_BYTES = 32 * _MIB  # the request body cap unless set
# ... with frames_as_video (lmms-eval's videos: 32 sampled frames as base64 PNG image parts, about
# 85-170 MB at 1080p, which lmms-eval cannot shrink): every such request fits
FRAME_LIST_BODY_BYTES = 256 * _MIB


def _split_list(value: Any) -> Any:
    """Comma-separated or JSON-list text -> list of stripped, non-empty strings."""
    if isinstance(value, str):
        text = value.strip()
        items = json.loads(text) if text.startswith("[") else text.split(",")
        return [str(item).strip() for item in items if str(item).strip()]
    return value


class Settings(BaseSettings):
    """Everything the gateway can be told; see each field's description."""

    model_config = SettingsConfigDict(
        env_prefix="AIM_GW_", frozen=True, extra="forbid", hide_input_in_errors=True
    )

    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="base URL of a vLLM replica (http://host:port)"
    )
    upstream_dns: str | None = Field(
        None, description="HOST:PORT whose A/AAAA records are the replicas (re-resolved each health interval)"
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="accepted Bearer API keys (none: no authentication)"
    )
    upstream_api_key: SecretStr | None = Field(None, description="Bearer key the replicas expect")
    default_aim: str = Field("off", description="AIM level when a request names none (X-AIM-Level grammar)")
    routing_policy: RoutingPolicy = Field(RoutingPolicy.LEAST_OUTSTANDING, description="replica choice")
    max_outstanding_per_replica: int = Field(256, ge=1, description="queue bound per replica (then 429)")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 429/503")
    max_attempts: int = Field(3, ge=1, description="replicas tried when connections fail before any byte")
    connect_timeout_s: float = Field(5.0, gt=0, description="connecting to a replica")
    read_timeout_s: float = Field(300.0, gt=0, description="silence allowed between bytes of a replica")
    request_timeout_s: float = Field(900.0, gt=0, description="whole request, streaming included")
    health_interval_s: float = Field(5.0, gt=0, description="seconds between active health checks")
    health_timeout_s: float = Field(2.0, gt=0, description="timeout of one health check")
    max_body_bytes: int | None = Field(
        None, ge=1024, description="request body cap (then 413); unset: 32 MiB, 256 MiB with frames_as_video"
    )
    max_json_depth: int = Field(32, ge=4, description="JSON nesting cap")
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="request header cap (then 431)")
    max_headers: int = Field(100, ge=8, description="request header count cap (then 431)")
    max_media_items: int = Field(32, ge=0, description="images and videos per request")
    max_media_bytes: int = Field(20 * _MIB, ge=1024, description="decoded bytes per image or video")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="width*height cap, read from the header")
    max_video_frames: int = Field(512, ge=1, description="frames of a video/jpeg frame-list data URL")
    allow_remote_media: bool = Field(False, description="fetch http(s) media URLs (allowlisted hosts only)")
    frames_as_video: bool = Field(
        False, description="send consecutive image parts as one video (lmms-eval-style clients; frames.py)"
    )
    media_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="hosts remote media may come from (exact, or *.suffix)"
    )
    media_fetch_timeout_s: float = Field(10.0, gt=0, description="whole fetch of one remote media URL")
    media_max_redirects: int = Field(3, ge=0, description="redirects followed, each re-checked")

    @field_validator("upstreams", "api_keys", "media_allowed_hosts", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("upstreams")
    @classmethod
    def _base_urls(cls, urls: list[str]) -> list[str]:
        cleaned = []
        for url in urls:
            parsed = httpx.URL(url)
            if parsed.scheme not in ("http", "https") or not parsed.host:
                raise ValueError(f"upstream must be an http(s)://host[:port] URL, got {url!r}")
            cleaned.append(url.rstrip("/").removesuffix("/v1"))
        return cleaned

    @field_validator("upstream_dns")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, port = split_host_port(value)
        return f"{host}:{port}"

    @model_validator(mode="after")
    def _some_replicas(self) -> Settings:
        if not self.upstreams and self.upstream_dns is None:
            raise ValueError(
                "no replicas: set upstreams (--upstream URL, AIM_GW_UPSTREAMS) "
                "or upstream_dns (--upstream-dns HOST:PORT, AIM_GW_UPSTREAM_DNS)"
            )
        return self

    @field_validator("api_keys")
    @classmethod
    def _non_empty_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if any(not key.get_secret_value() for key in keys):
            raise ValueError("API keys must not be empty")
        return keys

    @field_validator("default_aim")
    @classmethod
    def _valid_level(cls, value: str) -> str:
        return parse_level(value, param="default_aim").text

    @field_validator("media_allowed_hosts")
    @classmethod
    def _lower_hosts(cls, hosts: list[str]) -> list[str]:
        return [host.lower() for host in hosts]

    @property
    def body_limit(self) -> int:
        """`max_body_bytes` when set; else room for frame lists when `frames_as_video` is on."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return FRAME_LIST_BODY_BYTES if self.frames_as_video else BODY_BYTES

    @property
    def default_knob(self) -> AimLevel:
        return parse_level(self.default_aim, param="default_aim")


def split_host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` -> (host, port); ValueError naming the expected form otherwise."""
    host, sep, port = text.strip().rpartition(":")
    valid_host = bool(host) and "/" not in host and ":" not in host
    valid_port = port.isascii() and port.isdigit() and 0 < int(port) < 65536
    if not (sep and valid_host and valid_port):
        raise ValueError(f"upstream_dns must be HOST:PORT (a DNS name and a port in 1-65535), got {text!r}")
    return host, int(port)
