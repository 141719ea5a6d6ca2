from __future__ import annotations

import pytest

from autotrace.entrypoint import Entrypoint, is_python, parse

PY = "/venv/bin/python3.11"


def names(argv: list[str]) -> tuple[str, str, bool]:
    entry = parse(argv)
    return entry.program, entry.service_name, entry.weak


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["python", "app.py"], ("app", "app", False)),
        (["python", "/x/y/hello.py", "arg"], ("hello", "hello", False)),
        (["python", "manage.py", "runserver", "0.0.0.0:8000"], ("manage", "manage", False)),
        (["python", "/srv/shop/__main__.py"], ("shop", "shop", False)),
        (["python", "-m", "pkg.mod"], ("pkg", "pkg.mod", False)),
        (["python", "-m", "shop.main"], ("shop", "shop", False)),  # generic "main" dropped
        (["python", "-mpkg"], ("pkg", "pkg", False)),
        (["python", "-m", "pip", "install", "x"], ("pip", "pip", False)),
        ([PY, "/venv/bin/pip3.11", "install", "x"], ("pip", "pip3", False)),
        ([PY, "/venv/bin/pip", "install", "x"], ("pip", "pip", False)),
    ],
)
def test_scripts_and_modules(argv, expected):
    assert names(argv) == expected


def test_script_source_names_the_file():
    assert parse(["python", "/x/y/hello.py"]) == Entrypoint("hello", "hello", "script hello.py", False)


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "-c", "print(1)"],
        ["python", "-cprint(1)"],
        ["python", "-uc", "print(1)"],  # -c at the end of a cluster of short options
        ["python", "-c"],
    ],
)
def test_dash_c_is_weak(argv):
    entry = parse(argv)
    assert (entry.program, entry.weak) == ("-c", True)
    assert entry.service_name == "python"


def test_multiprocessing_spawn_child_is_weak():
    argv = [
        "/venv/bin/python3.11",
        "-B",
        "-Wignore",
        "-X",
        "dev",
        "-c",
        "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)",
        "--multiprocessing-fork",
    ]
    entry = parse(argv)
    assert entry.program == "multiprocessing"
    assert entry.weak is True
    assert entry.service_name == "python"  # the interpreter, version stripped


def test_multiprocessing_forkserver_child_is_weak():
    argv = ["python3", "-c", "from multiprocessing.forkserver import main; main(3, 4, ['__main__'])"]
    assert names(argv) == ("multiprocessing", "python", True)


@pytest.mark.parametrize(
    "code, helper",
    [
        ("from multiprocessing.resource_tracker import main;main(5)", True),
        ("from multiprocessing.forkserver import main; main(3, 4, ['__main__'])", True),
        ("from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5, pipe_handle=7)", False),
    ],
)
def test_multiprocessing_helpers_are_told_apart(code, helper):
    # Helpers run no code of the app's: the SDK is not set up ahead of a first span there.
    from autotrace.entrypoint import HELPER_SOURCE

    assert (parse(["python3", "-c", code]).source == HELPER_SOURCE) is helper


@pytest.mark.parametrize("argv", [["python"], ["python", "-i"], ["python", "-"], ["python", "-u", "-"], ["python", "-m"]])
def test_no_program_is_weak(argv):
    assert names(argv) == ("python", "python", True)


@pytest.mark.parametrize(
    "argv",
    [
        ["python", "-u", "-X", "dev", "-W", "ignore", "app.py"],
        ["python", "-Wdefault", "-Xdev", "-OO", "-B", "app.py"],
        ["python", "-uWignore", "app.py"],  # -W's value attached inside a cluster
        ["python", "-uX", "dev", "app.py"],  # -X's value is the next argument
        ["python", "--check-hash-based-pycs", "always", "app.py"],
        ["python", "-E", "-s", "--", "app.py"],
    ],
)
def test_interpreter_options_before_the_script(argv):
    assert names(argv) == ("app", "app", False)


@pytest.mark.parametrize("argv", [["python", "-Im", "svc"], ["python", "-u", "-m", "svc"], ["python", "-W", "error", "-m", "svc"]])
def test_interpreter_options_before_a_module(argv):
    assert parse(argv) == Entrypoint("svc", "svc", "python -m svc", False)


@pytest.mark.parametrize(
    "rest, service",
    [
        (["-b", "localhost:8000", "app:app"], "shop"),  # generic module: the folder
        (["app:app", "-b", "localhost:8000"], "shop"),
        (["-w", "4", "myproj.wsgi:application"], "myproj"),
        (["-w4", "myproj.wsgi:application"], "myproj"),
        (["--bind=0.0.0.0:8000", "--workers=2", "orders.wsgi"], "orders"),
        (["-k", "uvicorn.workers.UvicornWorker", "svc.main:app"], "svc"),
        (["--access-logfile", "-", "--error-logfile", "-", "myproj.wsgi:application"], "myproj"),
        (["--preload", "cart:create_app()"], "cart"),
        (["--preload", "app:create_app()"], "shop"),
        (["-c", "conf.py", "orders.wsgi:application"], "orders"),
        (["--chdir", "backend", "wsgi:application"], "backend"),  # imported from --chdir
        (["--chdir=/opt/billing", "main:app"], "billing"),
        (["config.wsgi:application"], "shop"),  # cookiecutter-django's layout
        (["-c", "conf.py"], "gunicorn"),  # the app is in the config file
        ([], "gunicorn"),
    ],
)
def test_gunicorn(rest, service):
    for argv in ([PY, "/venv/bin/gunicorn"] + rest, ["python", "-m", "gunicorn"] + rest):
        entry = parse(argv, "/srv/shop")
        assert (entry.program, entry.service_name, entry.weak) == ("gunicorn", service, False), argv


def test_generic_module_without_a_known_folder_keeps_its_name():
    assert parse([PY, "/venv/bin/gunicorn", "app:app"]).service_name == "app"


def test_gunicorn_without_app_says_so():
    entry = parse([PY, "/venv/bin/gunicorn", "-c", "conf.py"])
    assert "no application" in entry.source


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([PY, "/venv/bin/uvicorn", "main:app", "--host", "127.0.0.1", "--reload"], ("uvicorn", "shop")),
        ([PY, "/venv/bin/uvicorn", "--factory", "main:create_app"], ("uvicorn", "shop")),
        ([PY, "/venv/bin/uvicorn", "--port", "8000", "--workers", "2", "api.main:app"], ("uvicorn", "shop")),
        ([PY, "/venv/bin/uvicorn", "--app-dir", "src", "orders.main:app"], ("uvicorn", "orders")),
        ([PY, "/venv/bin/uvicorn", "--app-dir", "services/orders", "main:app"], ("uvicorn", "orders")),
        (["python", "-m", "uvicorn", "main:app"], ("uvicorn", "shop")),
        ([PY, "/venv/bin/hypercorn", "server:app"], ("hypercorn", "shop")),
        ([PY, "/venv/bin/hypercorn", "--bind", "0.0.0.0:80", "svc.asgi:app"], ("hypercorn", "svc")),
        ([PY, "/venv/bin/waitress-serve", "--listen=*:8080", "shop.wsgi:application"], ("waitress-serve", "shop")),
        ([PY, "/venv/bin/waitress-serve", "--port", "8080", "--call", "shop:create_app"], ("waitress-serve", "shop")),
        (["python", "-m", "waitress", "--port=8080", "shop:app"], ("waitress", "shop")),
        (["python", "-m", "aiohttp.web", "-H", "127.0.0.1", "-P", "8080", "orders.main:make_app"], ("aiohttp", "orders")),
        (["python", "-m", "aiohttp.web", "main:init"], ("aiohttp", "shop")),
    ],
)
def test_other_servers(argv, expected):
    entry = parse(argv, "/srv/shop")
    assert (entry.program, entry.service_name, entry.weak) == expected + (False,)


@pytest.mark.parametrize(
    "path",
    ["python", "python3", "python3.11", "pypy3", "pypy", "/usr/bin/python3", "/venv/bin/python3.13t", "python.exe"],
)
def test_is_python(path):
    assert is_python(path) is True


@pytest.mark.parametrize("path", ["gunicorn", "py", "pythonx", "python3-config", "/usr/bin/env", "ipython", ""])
def test_is_not_python(path):
    assert is_python(path) is False


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["/venv/bin/pip3.11", "install", "x"], ("pip", False)),
        (["/venv/bin/gunicorn", "-w", "2", "shop.wsgi:application"], ("gunicorn", False)),
        (["/opt/app/frozen-service", "--port", "80"], ("frozen-service", False)),
    ],
)
def test_argv_without_an_interpreter_names_the_program(argv, expected):
    # A script's own command line (as a caller may pass it), a frozen or embedding executable.
    entry = parse(argv)
    assert (entry.program, entry.weak) == expected


def test_debug_interpreter_is_still_an_interpreter():
    assert names(["/usr/bin/python3.11-dbg", "app.py"]) == ("app", "app", False)


@pytest.mark.parametrize(
    "argv, cwd, environ, expected",
    [
        # Django: the project package of DJANGO_SETTINGS_MODULE, else the folder of manage.py.
        (["python", "manage.py", "runserver"], "/srv/shop", {}, ("manage", "shop")),
        (["python", "/srv/cart/manage.py", "migrate"], "/", {}, ("manage", "cart")),
        (["python", "backend/manage.py", "check"], "/srv", {}, ("manage", "backend")),
        (["python", "manage.py", "runserver"], "/srv/x", {"DJANGO_SETTINGS_MODULE": "shop.settings.prod"}, ("manage", "shop")),
        ([PY, "/venv/bin/django-admin", "check"], "/srv/x", {"DJANGO_SETTINGS_MODULE": "shop.settings"}, ("django-admin", "shop")),
        (["python", "-m", "django", "check"], "/srv/x", {"DJANGO_SETTINGS_MODULE": "shop.settings"}, ("django", "shop")),
        # Flask: --app X or FLASK_APP=X, X's top package, the folder for a generic one.
        ([PY, "/venv/bin/flask", "--app", "orders", "run"], "/srv/x", {}, ("flask", "orders")),
        ([PY, "/venv/bin/flask", "--app=orders:create_app()", "run"], "/srv/x", {}, ("flask", "orders")),
        ([PY, "/venv/bin/flask", "run", "--app", "orders.web"], "/srv/x", {}, ("flask", "orders")),
        ([PY, "/venv/bin/flask", "-A", "app", "run"], "/srv/shop", {}, ("flask", "shop")),
        ([PY, "/venv/bin/flask", "run"], "/srv/x", {"FLASK_APP": "cart"}, ("flask", "cart")),
        ([PY, "/venv/bin/flask", "run"], "/srv/x", {"FLASK_APP": "cart.py"}, ("flask", "cart")),
        ([PY, "/venv/bin/flask", "run"], "/srv/shop", {"FLASK_APP": "app.py"}, ("flask", "shop")),
        ([PY, "/venv/bin/flask", "run"], "/srv/shop", {}, ("flask", "shop")),  # app.py or wsgi.py here
        (["python", "-m", "flask", "--app", "orders", "run"], "/srv/x", {}, ("flask", "orders")),
        # FastAPI: the file's stem, or the folder of main.py/app.py.
        ([PY, "/venv/bin/fastapi", "run", "orders.py"], "/srv/x", {}, ("fastapi", "orders")),
        ([PY, "/venv/bin/fastapi", "dev", "main.py"], "/srv/shop", {}, ("fastapi", "shop")),
        ([PY, "/venv/bin/fastapi", "run", "--port", "80", "cart/app.py"], "/srv/x", {}, ("fastapi", "cart")),
        ([PY, "/venv/bin/fastapi", "run", "/opt/billing/main.py"], "/srv/x", {}, ("fastapi", "billing")),
        ([PY, "/venv/bin/fastapi", "run", "--reload", "cart/app.py", "--host", "0.0.0.0"], "/srv/x", {}, ("fastapi", "cart")),
        ([PY, "/venv/bin/fastapi", "run", "--entrypoint", "orders.main:app"], "/srv/x", {}, ("fastapi", "orders")),
        ([PY, "/venv/bin/fastapi", "run"], "/srv/shop", {}, ("fastapi", "shop")),
        # Celery: -A proj.
        ([PY, "/venv/bin/celery", "-A", "proj", "worker", "-l", "info"], "/srv/x", {}, ("celery", "proj")),
        ([PY, "/venv/bin/celery", "--app=proj.celery:app", "worker"], "/srv/x", {}, ("celery", "proj")),
        ([PY, "/venv/bin/celery", "-Aproj", "beat"], "/srv/x", {}, ("celery", "proj")),
        (["python", "-m", "celery", "-A", "app", "worker"], "/srv/shop", {}, ("celery", "shop")),
        ([PY, "/venv/bin/celery", "worker"], "/srv/x", {}, ("celery", "celery")),
    ],
)
def test_service_names_users_expect(argv, cwd, environ, expected):
    entry = parse(argv, cwd, environ)
    assert (entry.program, entry.service_name) == expected
    assert not entry.console_script  # named by its own rule: no look-up


def test_a_script_without_suffix_is_looked_up_as_a_console_script(monkeypatch):
    from autotrace import distributions
    from autotrace.entrypoint import resolved_service_name

    entry = parse([PY, "/venv/bin/serve", "--port", "80"], "/srv/x", {})
    assert (entry.program, entry.service_name, entry.console_script) == ("serve", "serve", "serve")
    monkeypatch.setattr(distributions, "console_script_owner", lambda name: {"serve": "shop-backend"}.get(name))
    assert resolved_service_name(entry)[0] == "shop-backend"
    # Not owned by a distribution: the script's own name.
    assert resolved_service_name(parse([PY, "/usr/local/bin/tool"], "/", {}))[0] == "tool"
    # A .py script, a known server, pip: never looked up.
    assert parse(["python", "serve.py"], "/", {}).console_script == ""
    assert parse([PY, "/venv/bin/gunicorn", "x:app"], "/", {}).console_script == ""
    assert parse([PY, "/venv/bin/pip", "install", "x"], "/", {}).console_script == ""


def test_console_script_owner_reads_the_installed_metadata():
    from autotrace.distributions import console_script_owner

    assert console_script_owner("pytest") == "pytest"
    assert console_script_owner("autotrace") == "autotrace-agent"
    assert console_script_owner("no-such-script-anywhere") is None


@pytest.mark.parametrize("name, generic", [("app", True), ("main", True), ("python", True), ("python3", True), ("shop", False)])
def test_is_generic(name, generic):
    from autotrace.entrypoint import is_generic

    assert is_generic(name) is generic
