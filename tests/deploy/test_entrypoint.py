"""The image's command line, run on the host: ENTRYPOINT `aim-vllm`, CMD `serve --host 0.0.0.0`,
and the `engine`/`gateway` commands that compose and Kubernetes start from the same image.

The image runs the same console script that scripts/install.sh puts in .venv/bin, so running it
here checks the words a container would receive, minus the container.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from aim_vllm.cli import COMMANDS
from aim_vllm.commands.engine import engine_argv
from tests.deploy.manifests import DEPLOY, K8S, REPO, interpolate_compose, load_yaml_docs, parse_dockerfile

CONSOLE_SCRIPT = Path(sys.executable).parent / "aim-vllm"


def _image_command() -> tuple[list[str], list[str]]:
    runtime = parse_dockerfile().stages[-1]
    return runtime.all("ENTRYPOINT")[-1].exec_form(), runtime.all("CMD")[-1].exec_form()


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CONSOLE_SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd=REPO)


def test_entrypoint_is_the_console_script() -> None:
    """ENTRYPOINT must be the `aim-vllm` script pyproject declares (on PATH via the venv), so
    `docker run IMAGE <subcommand>` means the same as `aim-vllm <subcommand>` on a laptop."""
    entrypoint, _ = _image_command()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["aim-vllm"]
    assert scripts["aim-vllm"] == "aim_vllm.cli:main"
    assert CONSOLE_SCRIPT.exists(), "scripts/install.sh puts the console script next to python"


def test_default_command_words_are_cli_commands() -> None:
    """CMD, compose and the Kubernetes args all start with a subcommand the CLI dispatches;
    a renamed subcommand would leave every container exiting with a usage error."""
    _, cmd = _image_command()
    assert cmd == ["serve", "--host", "0.0.0.0"]
    compose = interpolate_compose(load_yaml_docs(DEPLOY / "compose.yaml")[0])
    words = {cmd[0]}
    for service in compose["services"].values():
        command = service.get("command")
        if command and service.get("image", "").startswith("aim-vllm"):
            words.add(command.split()[0] if isinstance(command, str) else command[0])
    for path in K8S.rglob("*deployment*.yaml"):
        for doc in load_yaml_docs(path):
            words |= {c["args"][0] for c in doc["spec"]["template"]["spec"]["containers"]}
    assert words == {"serve", "engine", "gateway"}
    assert words <= COMMANDS.keys()


def test_engine_command_of_the_replicas_reaches_vllm() -> None:
    """`aim-vllm engine --host 0.0.0.0 --port 8001` (compose, k8s) must hand vLLM the bind
    address and port unchanged, and add the tiny model when no --model is given."""
    argv = engine_argv(["--host", "0.0.0.0", "--port", "8001"], "/home/aim/.cache/tiny")
    assert argv[:2] == ["--model", "/home/aim/.cache/tiny"]
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert argv[argv.index("--port") + 1] == "8001"


def test_cli_help_runs() -> None:
    """`aim-vllm --help` from the installed console script lists every subcommand: the script
    the image's ENTRYPOINT names is installed and starts."""
    result = _run_cli("--help")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


def test_serve_help_accepts_the_image_cmd_flags() -> None:
    """The image's default CMD passes `--host`; `serve` must accept it or the default container
    exits at once."""
    result = _run_cli("serve", "--help")
    assert result.returncode == 0, result.stderr
    _, cmd = _image_command()
    for flag in (word for word in cmd if word.startswith("--")):
        assert re.search(rf"{flag}(?![\w-])", result.stdout), f"serve has no {flag}"


def test_gateway_help_accepts_the_deploy_flags() -> None:
    """compose starts the gateway with `--upstream` (static replicas); Kubernetes discovers them
    through the headless Service with `--upstream-dns` (env AIM_GW_UPSTREAM_DNS)."""
    result = _run_cli("gateway", "--help")
    assert result.returncode == 0, result.stderr
    for flag in ("--host", "--port", "--upstream", "--upstream-dns"):
        assert re.search(rf"{flag}(?![\w-])", result.stdout), f"gateway has no {flag}"
