"""The built wheel, installed into a fresh environment, works as the editable install does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from agent import clean_env, run, write

ROOT = Path(__file__).resolve().parent.parent
COPY_IGNORED = (".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "venv", ".pytest_cache", ".hypothesis", "*.so")
HELLO = 'from opentelemetry import trace; trace.get_tracer("t").start_span("x").end()\n'


def build_wheel(tmp_path_factory, **env: str) -> Path:
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
        env={**os.environ, **env},
    )
    (wheel,) = out.glob("autotrace_agent-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory)


def test_a_pure_wheel_installs_on_any_python(tmp_path_factory):
    """AUTOTRACE_PURE_WHEEL=1: a py3-none-any wheel without the compiled encoder, for an image
    of another Python version or platform (docs/deploy.md)."""
    pure = build_wheel(tmp_path_factory, AUTOTRACE_PURE_WHEEL="1")
    assert pure.name.endswith("-py3-none-any.whl"), pure.name
    names = zipfile.ZipFile(pure).namelist()
    assert "autotrace/span_queue.py" in names
    assert not [name for name in names if name.endswith((".so", ".pyd", ".c"))], names


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


def test_wheel_holds_the_compiled_encoder_and_the_install_uses_it(wheel, wheel_env):
    """The optional extension (autotrace/_speedups.c) is built into the wheel (a compiler is
    here, as in CI), its C source is not shipped there, and the installed agent uses it."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert any(name.startswith("autotrace/_speedups.") and name.endswith((".so", ".pyd")) for name in names), names
    assert "autotrace/_speedups.c" not in names
    check = "from autotrace import otlp_encode; print(otlp_encode.COMPILED, otlp_encode.speedups.__file__)"
    result = subprocess.run([str(wheel_env / "bin" / "python"), "-c", check], cwd=wheel_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    compiled, where = result.stdout.split()
    assert compiled == "True" and where.startswith(str(wheel_env))


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


# -- the OpenTelemetry Operator's injection (examples/deploy/operator/Dockerfile) ---------

OPERATOR_DOCKERFILE = ROOT / "examples" / "deploy" / "operator" / "Dockerfile"
# How the operator lays the image's /autoinstrumentation/ out in the app's container (its
# internal/instrumentation/python.go): copied into this volume, and PYTHONPATH set to
# PREFIX:SUFFIX, or PREFIX:<the container's PYTHONPATH>:SUFFIX.
OPERATOR_VOLUME = "otel-auto-instrumentation-python"
OPERATOR_PREFIX = "opentelemetry/instrumentation/auto_instrumentation"

SERVICE = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print("serving", flush=True)
server.serve_forever(poll_interval=0.05)
"""


def operator_build_commands(wheel: Path, target: Path) -> str:
    """The Dockerfile's build-stage RUN, for this machine: its pip, this wheel, this folder."""
    text = OPERATOR_DOCKERFILE.read_text().replace("\\\n", " ")
    (run_line,) = [line for line in text.splitlines() if line.startswith("RUN pip install")]
    command = run_line[len("RUN ") :]
    command = command.replace("/tmp/wheels/autotrace_agent-*.whl", str(wheel))
    command = command.replace("/autoinstrumentation", str(target))
    return command.replace("pip install", f"{sys.executable} -m pip install", 1)


@pytest.fixture(scope="module")
def operator_volume(wheel, tmp_path_factory) -> Path:
    """The operator's volume as the init container leaves it: the image's recipe run into
    a folder (``pip install --target``; dependencies from pip's configured sources)."""
    built = tmp_path_factory.mktemp("image") / "autoinstrumentation"
    subprocess.run(["sh", "-c", operator_build_commands(wheel, built)], check=True, capture_output=True, timeout=600)
    volume = tmp_path_factory.mktemp("pod") / OPERATOR_VOLUME
    shutil.copytree(built, volume)  # cp -r /autoinstrumentation/. /otel-auto-instrumentation-python
    return volume


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> Path:
    """The app image's Python: a virtualenv with nothing installed (no autotrace)."""
    venv = tmp_path_factory.mktemp("app-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    return venv / "bin" / "python"


@pytest.mark.parametrize("app_pythonpath", [False, True], ids=["no-pythonpath", "app-pythonpath"])
def test_operator_injection_traces_a_service(operator_volume, bare_python, tmp_path, otlp_receiver, app_pythonpath):
    from agent import Watched, wait_until_answers
    from ports import free_port

    assert (operator_volume / OPERATOR_PREFIX / "sitecustomize.py").is_file()
    app = tmp_path / "orders"
    write(app, "service.py", SERVICE)
    prefix, suffix = str(operator_volume / OPERATOR_PREFIX), str(operator_volume)
    own = app / "lib"
    # The app's own sitecustomize, on its own PYTHONPATH entry: still run, once.
    write(own, "sitecustomize.py", "print('app sitecustomize ran', flush=True)\n")
    pythonpath = f"{prefix}:{own}:{suffix}" if app_pythonpath else f"{prefix}:{suffix}"
    # What the operator sets besides PYTHONPATH (its defaults for Python).
    env = clean_env(
        PYTHONPATH=pythonpath,
        OTEL_SERVICE_NAME="orders",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_receiver.http_endpoint,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_RESOURCE_ATTRIBUTES="k8s.pod.name=orders-7d9c,k8s.namespace.name=shop",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    port = free_port()
    with Watched([str(bare_python), "service.py", str(port)], app, env) as service:
        wait_until_answers(f"http://127.0.0.1:{port}/ready", timeout=30, process=service)
        (span,) = otlp_receiver.wait_for_spans(1, timeout=20)
        assert "Traceback" not in service.text("stderr"), service.text("stderr")
        assert service.text().count("app sitecustomize ran") == (1 if app_pythonpath else 0)
    assert span.kind == 2 and span.attributes["url.path"] == "/ready"
    assert span.resource["service.name"] == "orders"
    assert span.resource["k8s.pod.name"] == "orders-7d9c"
    assert span.resource["telemetry.distro.name"] == "autotrace"

    # Without the operator's PYTHONPATH the same Python has no agent at all.
    probe = run([str(bare_python), "-c", "import autotrace"], app, clean_env())
    assert probe.returncode != 0
