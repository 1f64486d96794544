"""`aim-vllm gateway`: the OpenAI-compatible gateway in front of running vLLM servers.

    aim-vllm gateway --upstream http://10.0.0.5:8001 --upstream http://10.0.0.6:8001 \\
        --host 0.0.0.0 --port 8000 --api-key "$KEY" --default-aim balanced
    aim-vllm gateway --upstream-dns replicas-headless.ns.svc.cluster.local:8001 --host 0.0.0.0

Replicas: `--upstream` URLs, and/or `--upstream-dns HOST:PORT`, whose A/AAAA records are
re-resolved every `--health-interval-s` (replicas added and removed while serving); at least one.

Every gateway setting is a flag and an environment variable `AIM_GW_<NAME>` (flags win), e.g.
`--max-body-bytes` / `AIM_GW_MAX_BODY_BYTES`; lists from the environment take commas
(`AIM_GW_UPSTREAMS`, `AIM_GW_API_KEYS`, `AIM_GW_MEDIA_ALLOWED_HOSTS`). Prefer the environment for
keys: command lines are visible to every local user. Logs are JSON lines on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import gc
import signal
from typing import Any, get_args, get_origin

# Settings fields with a hand-written flag (same destination name), not generated from Settings.
_OWN_FLAGS = ("upstreams", "upstream_dns", "api_keys")
_LOG_LEVELS = ("debug", "info", "warning", "error")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstream", action="append", dest="upstreams", metavar="URL",
        help="base URL of a vLLM replica (http://host:port); repeat for several (env AIM_GW_UPSTREAMS)",
    )  # fmt: skip
    parser.add_argument(
        "--upstream-dns", dest="upstream_dns", metavar="HOST:PORT",
        help="DNS name whose A/AAAA records are the replicas, re-resolved every health interval, "
        "e.g. a Kubernetes headless Service (env AIM_GW_UPSTREAM_DNS)",
    )  # fmt: skip
    add_gateway_arguments(parser)


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared with `aim-vllm serve`: address, keys, log level and every Settings field."""
    parser.add_argument("--host", default="127.0.0.1", help="address the gateway listens on")
    parser.add_argument("--port", type=int, default=8000, help="port the gateway listens on")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY",
        help="accepted Bearer API key; repeat for several (env AIM_GW_API_KEYS, preferred)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=_LOG_LEVELS)
    from server.config import Settings

    group = parser.add_argument_group("gateway settings", "each also read from AIM_GW_<NAME>")
    for name, field in Settings.model_fields.items():
        if name not in _OWN_FLAGS:
            flag = "--" + name.replace("_", "-")
            group.add_argument(
                flag, dest=f"gw_{name}", default=None, help=field.description, **_flag(field.annotation)
            )


def _flag(annotation: Any) -> dict[str, Any]:
    """argparse keywords for a Settings field type (None default: unset flags leave env/defaults alone)."""
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float):
        return {"type": annotation, "metavar": "N"}
    if get_origin(annotation) is list:
        return {"action": "append", "metavar": "VALUE"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"choices": [member.value for member in annotation]}
    if type(None) in get_args(annotation) or annotation is str:
        return {"metavar": "TEXT"}
    raise TypeError(f"no flag type for settings annotation {annotation!r}")


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Any:
    """`Settings` from the flags that were given (the environment fills the rest), then `overrides`."""
    from pydantic import ValidationError

    from server.config import Settings

    values = {
        name: getattr(args, f"gw_{name}")
        for name in Settings.model_fields
        if getattr(args, f"gw_{name}", None) is not None
    }
    values |= {name: getattr(args, name) for name in _OWN_FLAGS if getattr(args, name, None)}
    try:
        return Settings(**(values | overrides))
    except ValidationError as exc:  # one line per CLI convention, not pydantic's report
        problems = (
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()
        )
        raise ValueError("; ".join(problems)) from None


def serve_gateway(settings: Any, host: str, port: int, log_level: str, on_started: Any = None) -> None:
    """Run the gateway with uvicorn until SIGINT/SIGTERM; `on_started()` once it listens."""
    import uvicorn

    from server.app import create_app
    from server.http_protocol import HeadWithBodyProtocol
    from server.log import configure_logging

    configure_logging(log_level)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            gc.freeze()  # what startup built is never garbage: full collections skip it (p99)
            if self.started and on_started is not None:
                on_started()

    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_config=None, access_log=False, lifespan="on",
        timeout_graceful_shutdown=10, server_header=False, loop="uvloop", http=HeadWithBodyProtocol,
        proxy_headers=False,  # nothing reads the client address: no X-Forwarded-* rewriting per request
    )  # fmt: skip
    _Server(config).run()


def interrupt_on_sigterm() -> None:
    """Make SIGTERM raise KeyboardInterrupt, so it shuts down and cleans up like Ctrl-C."""

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    interrupt_on_sigterm()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn already shut down gracefully
        serve_gateway(settings, args.host, args.port, args.log_level)
    return 0
