"""Service names users expect (docs/service-names.md): one real process under
``autotrace run`` for each row of the rule, its span's ``service.name`` checked at a real
OTLP receiver.

Each app records one span of its own (a Django management command, a Flask CLI command,
a module imported by a server, a console script's function), so no request is needed;
the receiver's environment exports each span within 100 ms, so servers are stopped once
it has arrived.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent import AUTOTRACE, PYTHON, Watched, clean_env, run, write
from otlp_receiver import OTLPReceiver
from ports import free_port

SPAN = 'from opentelemetry import trace\ntrace.get_tracer("names").start_span("{name}").end()\n'


def service_of(receiver: OTLPReceiver, name: str, timeout: float = 20) -> str:
    (span,) = receiver.wait_for_spans(1, timeout=timeout, predicate=lambda s: s.name == name)
    return span.resource["service.name"]


def autotrace(receiver: OTLPReceiver, command: list[str], cwd: Path, **extra: str):
    env = clean_env(**receiver.env("http"), **extra)
    result = run([AUTOTRACE, "run", *command], cwd, env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


# -- Django ------------------------------------------------------------------------------

MANAGE = """
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_settings")
from django.core.management import execute_from_command_line

execute_from_command_line(sys.argv)
"""
SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = []
DATABASES = {}
USE_TZ = True
"""


def django_project(root: Path) -> Path:
    write(root, "manage.py", MANAGE)
    write(root, "site_settings.py", SETTINGS)
    write(root, "shop/__init__.py", "")
    write(root, "shop/settings.py", SETTINGS)
    return root


def test_django_manage_py_is_named_by_its_folder(tmp_path, otlp_receiver):
    # manage.py sets DJANGO_SETTINGS_MODULE itself, after start-up: its folder names the service.
    project = django_project(tmp_path / "billing")
    code = SPAN.format(name="django-command")
    autotrace(otlp_receiver, ["python", "manage.py", "shell", "-c", code], project)
    assert service_of(otlp_receiver, "django-command") == "billing"


def test_django_is_named_by_the_project_package_of_its_settings(tmp_path, otlp_receiver):
    project = django_project(tmp_path / "src")
    code = SPAN.format(name="django-settings")
    autotrace(otlp_receiver, ["python", "manage.py", "shell", "-c", code], project, DJANGO_SETTINGS_MODULE="shop.settings")
    assert service_of(otlp_receiver, "django-settings") == "shop"


# -- Flask -------------------------------------------------------------------------------

FLASK_APP = """
from flask import Flask

app = Flask(__name__)


@app.cli.command("record")
def record():
""" + "\n".join("    " + line for line in SPAN.format(name="flask-command").splitlines()) + "\n"


def test_flask_app_option_names_the_service(tmp_path, otlp_receiver):
    folder = tmp_path / "web"
    write(folder, "orders.py", FLASK_APP)
    autotrace(otlp_receiver, ["flask", "--app", "orders", "record"], folder)
    assert service_of(otlp_receiver, "flask-command") == "orders"


def test_flask_app_variable_names_the_service(tmp_path, otlp_receiver):
    folder = tmp_path / "web"
    write(folder, "cart.py", FLASK_APP)
    autotrace(otlp_receiver, ["flask", "record"], folder, FLASK_APP="cart")
    assert service_of(otlp_receiver, "flask-command") == "cart"


def test_flask_generic_app_is_named_by_its_folder(tmp_path, otlp_receiver):
    folder = tmp_path / "catalog"
    write(folder, "app.py", FLASK_APP)  # found by flask itself: no --app, no FLASK_APP
    autotrace(otlp_receiver, ["flask", "record"], folder)
    assert service_of(otlp_receiver, "flask-command") == "catalog"


# -- Servers: uvicorn, hypercorn, gunicorn ----------------------------------------------

ASGI = SPAN.format(name="{name}") + """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
"""
WSGI = SPAN.format(name="{name}") + """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def serve(receiver: OTLPReceiver, command: list[str], cwd: Path, span: str) -> str:
    with Watched([AUTOTRACE, "run", *command], cwd, clean_env(**receiver.env("http"))) as server:
        try:
            return service_of(receiver, span)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstdout:\n{server.text()}\nstderr:\n{server.text('stderr')}") from None


@pytest.mark.parametrize(
    "server, module, app, service",
    [
        ("uvicorn", "main", "main:app", "inventory"),  # generic module: the folder holding it
        ("uvicorn", "stock", "stock:app", "stock"),  # the module's top package
        ("hypercorn", "asgi", "asgi:app", "inventory"),
        ("hypercorn", "stock/asgi", "stock.asgi:app", "stock"),
        ("gunicorn", "wsgi", "wsgi:app", "inventory"),
        ("gunicorn", "stock/wsgi", "stock.wsgi:app", "stock"),
        ("gunicorn", "api/main", "api.main:app", "inventory"),  # a generic top package
    ],
)
def test_app_servers(tmp_path, otlp_receiver, server, module, app, service):
    folder = tmp_path / "inventory"
    span = f"{server}-{module}"
    if "/" in module:
        write(folder, module.split("/")[0] + "/__init__.py", "")
    write(folder, module + ".py", (WSGI if server == "gunicorn" else ASGI).format(name=span))
    bind = f"127.0.0.1:{free_port()}"
    command = {
        "uvicorn": ["uvicorn", "--host", "127.0.0.1", "--port", bind.split(":")[1], app],
        "hypercorn": ["hypercorn", "--bind", bind, app],
        "gunicorn": ["gunicorn", "-w", "1", "-b", bind, app],
    }[server]
    assert serve(otlp_receiver, command, folder, span) == service


# -- Celery and FastAPI's CLI (not installed here: stand-in programs of those names) --------

# The stand-in imports the app file the command names, as ``fastapi run`` would.
FASTAPI_STAND_IN = """
import runpy, sys
paths = [a for a in sys.argv[2:] if a.endswith(".py")]
runpy.run_path(paths[0] if paths else "main.py")
"""


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    """An executable ``name`` run by this interpreter, as a console script would be."""
    script = write(bin_dir, name, f"#!{PYTHON}\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize(
    "command, service",
    [
        (["celery", "-A", "proj", "worker", "-l", "info"], "proj"),
        (["celery", "--app=tasks.app:celery", "beat"], "tasks"),
        (["celery", "-A", "app", "worker"], "inventory"),  # a generic name: the folder
    ],
)
def test_celery_app_option_names_the_service(tmp_path, otlp_receiver, command, service):
    """``celery -A proj worker``: the name comes from the command line, which a stand-in
    ``celery`` console script has exactly as the real one would."""
    stand_in(tmp_path / "bin", "celery", SPAN.format(name="celery-worker"))
    folder = tmp_path / "inventory"
    folder.mkdir()
    env = clean_env(**otlp_receiver.env("http"))
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    result = run([AUTOTRACE, "run", *command], folder, env)
    assert result.returncode == 0, result.stderr
    assert service_of(otlp_receiver, "celery-worker") == service


@pytest.mark.parametrize(
    "file, command, service",
    [
        ("orders.py", ["fastapi", "run", "orders.py"], "orders"),  # the file's stem
        ("main.py", ["fastapi", "run", "--port", "8000", "main.py"], "inventory"),  # the folder of main.py
        ("cart/app.py", ["fastapi", "dev", "--reload", "cart/app.py"], "cart"),
        ("main.py", ["fastapi", "run"], "inventory"),  # main.py found by the CLI itself
    ],
)
def test_fastapi_cli(tmp_path, otlp_receiver, file, command, service):
    stand_in(tmp_path / "bin", "fastapi", FASTAPI_STAND_IN)
    folder = tmp_path / "inventory"
    write(folder, file, SPAN.format(name="fastapi-app"))
    env = clean_env(**otlp_receiver.env("http"))
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    result = run([AUTOTRACE, "run", *command], folder, env)
    assert result.returncode == 0, result.stderr
    assert service_of(otlp_receiver, "fastapi-app") == service


# -- A console script: the distribution that owns it -------------------------------------


def test_console_script_is_named_by_its_distribution(tmp_path, otlp_receiver):
    """A console script ``serve-orders`` of the distribution ``orders-backend``: its
    metadata (a dist-info on the path, as pip writes it) and its launcher script."""
    site = tmp_path / "site"
    write(site, "orders/__init__.py", "")
    write(site, "orders/cli.py", "def main():\n" + "".join("    " + line + "\n" for line in SPAN.format(name="console").splitlines()))
    write(site, "orders_backend-1.2.dist-info/METADATA", "Metadata-Version: 2.1\nName: orders-backend\nVersion: 1.2\n")
    write(site, "orders_backend-1.2.dist-info/entry_points.txt", "[console_scripts]\nserve-orders = orders.cli:main\n")
    bin_dir = tmp_path / "bin"
    script = write(
        bin_dir,
        "serve-orders",
        f"#!{PYTHON}\nimport sys\nfrom orders.cli import main\nif __name__ == '__main__':\n    sys.exit(main())\n",
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    env = clean_env(**otlp_receiver.env("http"), PYTHONPATH=str(site))
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    result = run([AUTOTRACE, "run", "serve-orders"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert service_of(otlp_receiver, "console") == "orders-backend"
    assert "service.name=orders-backend (from the distribution orders-backend" in result.stderr


# -- What still wins ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, service",
    [({"OTEL_SERVICE_NAME": "chosen"}, "chosen"), ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=attr,team=x"}, "attr")],
)
def test_the_standard_variables_still_win(tmp_path, otlp_receiver, extra, service):
    project = django_project(tmp_path / "billing")
    code = SPAN.format(name="django-command")
    autotrace(otlp_receiver, ["python", "manage.py", "shell", "-c", code], project, DJANGO_SETTINGS_MODULE="shop.settings", **extra)
    assert service_of(otlp_receiver, "django-command") == service
