"""`aim-vllm gateway` flags and `aim-vllm serve` orchestration (with a fake engine command, no vLLM)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from aim_vllm.commands import gateway, serve

REPO = Path(__file__).resolve().parents[2]
FAKE_ENGINE = Path(__file__).with_name("fake_engine.py")


def _parse(module: object, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)  # type: ignore[attr-defined]
    return parser.parse_args(argv)


def test_gateway_flags_map_onto_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every Settings field is a flag; flags win over AIM_GW_* variables, which fill in the rest."""
    monkeypatch.setenv("AIM_GW_DEFAULT_AIM", "max")
    monkeypatch.setenv("AIM_GW_MAX_ATTEMPTS", "5")
    args = _parse(gateway, [
        "--upstream", "http://a:1", "--upstream", "http://b:2/v1", "--upstream-dns", "r.ns.svc:8001",
        "--api-key", "k1",
        "--max-body-bytes", "100000", "--allow-remote-media", "--media-allowed-hosts", "img.example",
        "--routing-policy", "round_robin", "--max-attempts", "2", "--request-timeout-s", "1.5",
    ])  # fmt: skip
    settings = gateway.settings_from_args(args)
    assert settings.upstreams == ["http://a:1", "http://b:2"]
    assert settings.upstream_dns == "r.ns.svc:8001"
    assert [key.get_secret_value() for key in settings.api_keys] == ["k1"]
    assert (settings.max_body_bytes, settings.allow_remote_media, settings.media_allowed_hosts) == (
        100000, True, ["img.example"],
    )  # fmt: skip
    assert (settings.routing_policy.value, settings.max_attempts, settings.request_timeout_s) == (
        "round_robin",
        2,
        1.5,
    )
    assert settings.default_aim == "max"


def test_gateway_replicas_from_dns_alone_or_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kubernetes gives only AIM_GW_UPSTREAM_DNS; with no replica source at all the CLI says which flags."""
    monkeypatch.delenv("AIM_GW_UPSTREAMS", raising=False)
    monkeypatch.setenv("AIM_GW_UPSTREAM_DNS", "r.ns.svc:8001")
    settings = gateway.settings_from_args(_parse(gateway, []))
    assert (settings.upstreams, settings.upstream_dns) == ([], "r.ns.svc:8001")
    monkeypatch.delenv("AIM_GW_UPSTREAM_DNS")
    with pytest.raises(ValueError, match="--upstream URL.*--upstream-dns HOST:PORT"):
        gateway.settings_from_args(_parse(gateway, []))


def test_serve_gateway_uses_only_its_own_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's gateway must not also route to replicas named in the environment for `aim-vllm gateway`."""
    monkeypatch.setenv("AIM_GW_UPSTREAMS", "http://elsewhere:1")
    monkeypatch.setenv("AIM_GW_UPSTREAM_DNS", "r.ns.svc:8001")
    settings = serve.gateway_settings(_parse(serve, ["--default-aim", "max"]), ["http://127.0.0.1:9"])
    assert (settings.upstreams, settings.upstream_dns) == (["http://127.0.0.1:9"], None)
    assert settings.default_aim == "max"
    assert not hasattr(_parse(serve, []), "upstream_dns"), "serve has no --upstream-dns"


def test_serve_engine_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines bind to 127.0.0.1 on serve's port; no --model means the engine's embedded default model."""
    monkeypatch.delenv(serve.ENGINE_CMD_ENV, raising=False)
    assert serve.engine_command(8123, None, ["--dtype", "float32"]) == [
        sys.executable, "-m", "aim_vllm.cli", "engine",
        "--port", "8123", "--host", "127.0.0.1", "--dtype", "float32",
    ]  # fmt: skip
    assert serve.engine_command(1, "/m", [])[4:6] == ["--model", "/m"]
    monkeypatch.setenv(serve.ENGINE_CMD_ENV, "python3 fake.py --x 'a b'")
    assert serve.engine_command(1, None, [])[:4] == ["python3", "fake.py", "--x", "a b"]


def test_serve_vllm_flags_after_double_dash() -> None:
    """Flags after `--` reach every engine; serve's own --port/--host/--model cannot be overridden there."""
    args = _parse(serve, ["--replicas", "2", "--", "--dtype", "float32", "--max-model-len=4096"])
    assert serve.engine_flags(args.vllm_args) == ["--dtype", "float32", "--max-model-len=4096"]
    assert serve.engine_flags(_parse(serve, []).vllm_args) == []
    for flag in ("--port=9", "--host", "--model"):
        with pytest.raises(ValueError, match=flag.split("=")[0]):
            serve.engine_flags(["--", flag])


def test_serve_takes_its_default_level_in_one_place() -> None:
    """The gateway sends every request a level, so an engine default behind it would never apply:
    `-- --aim-default` is refused with the flag that works."""
    for flags in (["--aim-default", "balanced"], ["--aim-default=balanced"]):
        with pytest.raises(ValueError, match="--default-aim"):
            serve.engine_flags(["--", *flags])
    assert _parse(serve, ["--default-aim", "balanced"]).gw_default_aim == "balanced"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def _start_serve(tmp_path: Path, mode: str, *argv: str) -> subprocess.Popen[str]:
    env = {**os.environ, serve.ENGINE_CMD_ENV: f"{sys.executable} {FAKE_ENGINE}",
           "FAKE_ENGINE_DIR": str(tmp_path), "FAKE_ENGINE_MODE": mode, "PYTHONPATH": str(REPO)}  # fmt: skip
    command = [sys.executable, "-m", "aim_vllm.cli", "serve", "--log-dir", str(tmp_path / "logs"), *argv]
    return subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _engine_records(tmp_path: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(tmp_path.glob("*.json"))]


def _wait_ready(url: str, process: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError(f"serve did not become ready: {process.communicate()}")


def test_serve_starts_replicas_and_gateway_and_stops_everything(tmp_path: Path) -> None:
    """One command gives a working endpoint over N replicas, and SIGTERM leaves no process behind."""
    port = serve.free_port()
    process = _start_serve(tmp_path, "ok", "--replicas", "2", "--port", str(port), "--grace-period", "5",
                           "--default-aim", "balanced", "--", "--dtype", "float32")  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        body = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}
        answers = [httpx.post(f"{url}/v1/chat/completions", json=body, timeout=5).json() for _ in range(2)]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    records = _engine_records(tmp_path)
    assert process.returncode == 0, err
    assert f"ready, OpenAI API at http://127.0.0.1:{port}/v1" in out
    assert len(records) == 2
    assert all(r["argv"][-2:] == ["--dtype", "float32"] and "--model" not in r["argv"] for r in records)
    assert {a["choices"][0]["message"]["content"] for a in answers} == {f"port {p}" for p in _ports(records)}
    assert answers[0]["usage"]["aim"] == {"received": {"aim_preset": "balanced"}, "level": "balanced"}
    assert not any(_alive(r[key]) for r in records for key in ("pid", "child_pid"))


def _ports(records: list[dict]) -> list[str]:
    return [r["argv"][r["argv"].index("--port") + 1] for r in records]


@pytest.mark.parametrize(
    ("mode", "needles"),
    [
        ("never-ready", ["did not become healthy within 1.5 s", "fake engine: loading weights"]),
        ("crash", ["exited with code 3", "fake engine: out of memory"]),
    ],
)
def test_serve_reports_replica_startup_failures_with_log_tail(
    tmp_path: Path, mode: str, needles: list[str]
) -> None:
    """A replica that never gets ready must fail fast with its own log lines, and be cleaned up."""
    process = _start_serve(tmp_path, mode, "--startup-timeout", "1.5", "--grace-period", "2", "--port", "1")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 1
    assert all(needle in err for needle in needles), err
    assert not any(_alive(r[key]) for r in _engine_records(tmp_path) for key in ("pid", "child_pid"))
