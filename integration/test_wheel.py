"""The built wheel, installed into a fresh environment, works as the editable install does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from agent import clean_env, run, write

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv", ".pytest_cache", ".hypothesis")
HELLO = 'from opentelemetry import trace; trace.get_tracer("t").start_span("x").end()\n'


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Built from a copy: setuptools writes build/ inside the source tree, where another
    # run's build (or an old one's leftover modules) would mix into this wheel.
    source = tmp_path_factory.mktemp("source") / "autotrace"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*COPY_IGNORED))
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("autotrace_agent-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_env(wheel, tmp_path_factory) -> Path:
    """A new virtualenv holding the wheel; dependencies come from the test environment.

    Only the dependencies' directory is shared (by a plain path .pth line, whose own
    .pth files are not processed), so autotrace itself can only come from the wheel.
    """
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_wheel_holds_the_package_hooks_bootstrap_and_pth(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "autotrace/__init__.py" in names
    assert "autotrace/hooks/__init__.py" in names
    assert "autotrace/_sitecustomize/sitecustomize.py" in names
    assert "autotrace-agent.pth" in names
    assert not any(name.startswith(("hooks/", "sitecustomize/", "tests/", "integration/")) for name in names)
    # Every module of the source tree is shipped (a new subpackage must be listed in pyproject.toml).
    root = Path(__file__).resolve().parent.parent
    shipped_as = {"autotrace": "autotrace", "hooks": "autotrace/hooks", "sitecustomize": "autotrace/_sitecustomize"}
    for folder, target in shipped_as.items():
        for source in (root / folder).rglob("*.py"):
            assert f"{target}/{source.relative_to(root / folder).as_posix()}" in names, source


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_wheel_install_traces_under_the_launcher(wheel_env, tmp_path, otlp_receiver, protocol):
    script = write(tmp_path, "hello.py", HELLO + "import autotrace; print(autotrace.__file__)\n")
    env = clean_env(**otlp_receiver.env(protocol))
    env["PATH"] = str(wheel_env / "bin") + ":" + env["PATH"]
    result = run([str(wheel_env / "bin" / "autotrace"), "run", "python", script.name], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert str(wheel_env) in result.stdout  # the wheel's copy, not the source tree
    (span,) = otlp_receiver.wait_for_spans(1)
    assert span.name == "x"
    assert span.resource["service.name"] == "hello"
    assert span.protocol == protocol


def test_wheel_install_activates_by_environment_only(wheel_env, tmp_path, otlp_receiver):
    script = write(tmp_path, "hello.py", HELLO)
    env = clean_env(AUTOTRACE_ENABLED="true", **otlp_receiver.env("http"))
    result = run([str(wheel_env / "bin" / "python"), script.name], tmp_path, env)
    assert result.returncode == 0, result.stderr
    (span,) = otlp_receiver.wait_for_spans(1)
    assert (span.name, span.resource["service.name"]) == ("x", "hello")

    # Not activated: nothing of the agent is even imported.
    env.pop("AUTOTRACE_ENABLED")
    probe = run([str(wheel_env / "bin" / "python"), "-c", "import sys; print('autotrace' in sys.modules)"], tmp_path, env)
    assert probe.stdout.strip() == "False"
