"""The launcher and start-up, end to end: real processes under ``autotrace run`` (or with
``AUTOTRACE_ENABLED`` only), spans checked at a real OTLP receiver.

The agent flushes synchronously at exit, so once a process has exited every span it
will ever send has arrived: "nothing arrived" is asserted after the exit.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

import autotrace
import autotrace._sitecustomize
from agent import AUTOTRACE, PYTHON, autotrace_run, clean_env, run, start, stop, write
from ports import free_port

HELLO = 'from opentelemetry import trace; trace.get_tracer("t").start_span("x").end()\n'
SITECUSTOMIZE_DIR = os.path.dirname(os.path.abspath(autotrace._sitecustomize.__file__))
NOT_IMPORTED_AT_START = ("requests", "flask", "django", "grpc", "httpx", "urllib3")


def hello(directory: Path, name: str = "hello.py", extra: str = "") -> Path:
    return write(directory, name, HELLO + extra)


def the_span(receiver, name: str = "x"):
    """The one span called ``name`` (waits for it; fails if it came twice)."""
    receiver.wait_for_spans(predicate=lambda s: s.name == name, timeout=10)
    spans = [s for s in receiver.spans() if s.name == name]
    assert len(spans) == 1, spans
    return spans[0]


def agent_lines(stderr: str, level: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"autotrace {level}: ")]


def derived_line(stderr: str) -> list[str]:
    """The line that says where a derived service name comes from (in the main process,
    the start-up line: here without where spans go and the sampler)."""
    return [
        line.split("), spans ", 1)[0] + ")" if "), spans " in line else line
        for line in agent_lines(stderr, "INFO")
        if "set OTEL_SERVICE_NAME to choose another" in line
    ]


def assert_nothing_sent(receiver) -> None:
    assert receiver.spans() == []
    assert receiver.export_requests() == []


# -- 1. acceptance ------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_hello_is_traced_with_derived_service_name(tmp_path, otlp_receiver, protocol):
    script = hello(tmp_path)
    result = autotrace_run(script, clean_env(**otlp_receiver.env(protocol)))

    assert result.returncode == 0, result.stderr
    span = the_span(otlp_receiver)
    assert span.protocol == protocol
    assert span.resource["service.name"] == "hello"
    assert span.resource["telemetry.distro.name"] == "autotrace"
    assert span.resource["telemetry.distro.version"] == autotrace.__version__
    assert derived_line(result.stderr) == [
        "autotrace INFO: service.name=hello (from the script hello.py; set OTEL_SERVICE_NAME to choose another)"
    ]
    assert agent_lines(result.stderr, "WARNING") == []


# -- 2. other exporters -------------------------------------------------------------


def test_console_exporter_prints_span_and_sends_nothing(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    result = autotrace_run(script, clean_env(**otlp_receiver.env("grpc")), options=("--exporter", "console"))

    assert result.returncode == 0, result.stderr
    # A readable tree on stderr: the trace, then its span with kind and service.
    lines = result.stderr.splitlines()
    assert any(line.startswith("trace ") for line in lines), result.stderr
    assert any(line.startswith("  x  INTERNAL  [hello]") for line in lines), result.stderr
    assert "x  INTERNAL" not in result.stdout
    assert_nothing_sent(otlp_receiver)

    # The raw OpenTelemetry JSON stays available.
    raw = autotrace_run(script, clean_env(**otlp_receiver.env("grpc")), options=("--exporter", "console-json"))
    assert raw.returncode == 0, raw.stderr
    assert '"name": "x"' in raw.stderr
    assert '"telemetry.distro.name": "autotrace"' in raw.stderr
    assert_nothing_sent(otlp_receiver)


def test_exporter_none_sends_nothing(tmp_path, otlp_receiver):
    script = hello(tmp_path, extra="print(type(trace.get_tracer_provider()).__name__)\n")
    result = autotrace_run(script, clean_env(**otlp_receiver.env("http")), options=("--exporter", "none"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "AgentTracerProvider"  # the agent ran; it just exports nowhere
    assert '"name": "x"' not in result.stdout + result.stderr
    assert_nothing_sent(otlp_receiver)


# -- 3. launcher options ------------------------------------------------------------


def test_service_name_option(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    result = autotrace_run(script, clean_env(**otlp_receiver.env("grpc")), options=("--service-name", "shop"))

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).resource["service.name"] == "shop"
    assert derived_line(result.stderr) == []


def test_protocol_and_endpoint_options_without_otel_variables(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env()
    assert not [k for k in env if k.startswith("OTEL_")]
    result = autotrace_run(script, env, options=("--protocol", "grpc", "--endpoint", otlp_receiver.grpc_endpoint))

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).protocol == "grpc"


def test_endpoint_option_beats_signal_specific_variables(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env(
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="grpc",
        AUTOTRACE_SHUTDOWN_TIMEOUT="2000",
    )
    options = ("--protocol", "http/protobuf", "--endpoint", otlp_receiver.http_endpoint)
    result = autotrace_run(script, env, options=options)

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).protocol == "http"



def report_row(stderr: str, name: str) -> str | None:
    """A row of the start-up report (``--debug``): ``  name   value``, or None."""
    import re

    found = re.search(rf"^  {re.escape(name)}  +(.*)$", stderr, re.MULTILINE)
    return found.group(1) if found else None


def test_debug_prints_configuration_with_headers_redacted(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env(**otlp_receiver.env("http"), OTEL_EXPORTER_OTLP_HEADERS="api-key=secret123")
    result = autotrace_run(script, env, options=("--debug",))

    assert result.returncode == 0, result.stderr
    # One start-up block: a row per setting.
    assert report_row(result.stderr, "headers") == "api-key=<redacted>"
    assert report_row(result.stderr, "exporter") == f"otlp http/protobuf -> {otlp_receiver.http_endpoint}/v1/traces"
    assert report_row(result.stderr, "log level") == "debug"
    assert "api-key" in result.stderr
    assert "secret123" not in result.stderr + result.stdout
    # Redacted in the log only: the header still goes to the collector.
    assert the_span(otlp_receiver).headers.get("api-key") == "secret123"


# -- 4. the command line itself -----------------------------------------------------


def test_version(tmp_path):
    result = run([AUTOTRACE, "--version"], tmp_path, clean_env(), timeout=20)
    assert result.returncode == 0
    assert result.stdout.strip() == f"autotrace {autotrace.__version__}"


def test_run_help(tmp_path):
    result = run([AUTOTRACE, "run", "--help"], tmp_path, clean_env(), timeout=20)
    assert result.returncode == 0
    assert result.stdout.startswith("usage: autotrace run")
    for option in ("--service-name", "--exporter", "--endpoint", "--protocol", "--debug"):
        assert option in result.stdout


def test_run_without_command_exits_2(tmp_path):
    result = run([AUTOTRACE, "run"], tmp_path, clean_env(), timeout=20)
    assert result.returncode == 2
    assert "usage: autotrace" in result.stderr
    assert "a command is required" in result.stderr


def test_run_unknown_command_exits_127(tmp_path):
    result = run([AUTOTRACE, "run", "no-such-cmd"], tmp_path, clean_env(), timeout=20)
    assert result.returncode == 127
    assert result.stderr.strip() == "autotrace: command not found: no-such-cmd"


# -- 5. exec, not a child -----------------------------------------------------------


def test_app_keeps_the_launcher_pid(tmp_path):
    process = start(
        [AUTOTRACE, "run", "--exporter", "none", "python", "-c", "import os; print(os.getpid())"],
        tmp_path,
        clean_env(),
    )
    try:
        out, err = process.communicate(timeout=20)
    finally:
        stop(process)
    assert process.returncode == 0, err
    assert int(out.strip()) == process.pid
    assert derived_line(err)  # the agent started in that process


# -- 6. PYTHONPATH ------------------------------------------------------------------


def test_user_pythonpath_entries_are_kept_after_ours(tmp_path):
    user_dir, work_dir = tmp_path / "lib", tmp_path / "work"
    write(user_dir, "usermod.py", "WHERE = 'user dir'\n")
    write(work_dir, "cwdmod.py", "WHERE = 'cwd'\n")
    app = write(
        tmp_path / "scripts",
        "app.py",
        """
        import os, sys
        import usermod, cwdmod  # from the PYTHONPATH entry; from its empty entry (= the cwd)
        print(os.environ["PYTHONPATH"])
        print(usermod.WHERE, cwdmod.WHERE)
        """,
    )
    # A trailing empty entry: Python reads it as the current directory.
    env = clean_env(PYTHONPATH=str(user_dir) + os.pathsep)

    plain = run([PYTHON, str(app)], work_dir, env, timeout=20)
    assert plain.returncode == 0, plain.stderr  # the premise: both imports work without autotrace
    result = run([AUTOTRACE, "run", "--exporter", "none", "python", str(app)], work_dir, env, timeout=20)

    assert result.returncode == 0, result.stderr
    pythonpath, imported = result.stdout.splitlines()
    assert pythonpath.split(os.pathsep) == [SITECUSTOMIZE_DIR, str(user_dir), ""]
    assert imported == "user dir cwd"


# -- 7. the user's sitecustomize ----------------------------------------------------

USER_SITE_MODULE = """
import os, sys
_role = "app" if sys.orig_argv[1:2] == ["hello.py"] else "other"  # not the launcher, not its check
with open(os.environ["MARK_FILE"], "a") as _f:
    _f.write("{name} %s agent-started=%s\\n" % (_role, "autotrace.bootstrap" in sys.modules))
"""


@pytest.fixture
def user_site_python(tmp_path) -> str:
    """A Python that runs ``usercustomize`` (unlike the test venv) and can import the agent.

    A virtualenv disables the user site, and with it ``usercustomize``; a system or
    container Python has it. This throwaway venv sees the system site-packages (so the
    user site is on) and the test venv's packages through a .pth file.
    """
    venv = tmp_path / "user-site-venv"
    subprocess.run(
        [PYTHON, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
        timeout=30,
    )
    python = venv / "bin" / "python"
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    Path(site_packages, "autotrace_test_bridge.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return str(python)


def test_user_sitecustomize_and_usercustomize_run_once_before_the_agent(tmp_path, otlp_receiver, user_site_python):
    user_dir = tmp_path / "user"
    write(
        user_dir,
        "sitecustomize.py",
        USER_SITE_MODULE.format(name="sitecustomize")
        # Differs between processes: the launcher (a Python script itself) runs this file
        # too, and its environment is the app's, so only the app's own run can name it.
        + 'os.environ["OTEL_SERVICE_NAME"] = "user-site-" + _role\n',
    )
    write(user_dir, "usercustomize.py", USER_SITE_MODULE.format(name="usercustomize"))
    script = hello(tmp_path, extra='open(__import__("os").environ["MARK_FILE"], "a").write("main app\\n")\n')

    def marks(name: str, command: list[str]) -> list[str]:
        mark_file = tmp_path / name
        env = clean_env(**otlp_receiver.env("grpc"), PYTHONPATH=str(user_dir), MARK_FILE=str(mark_file))
        env.pop("PYTHONNOUSERSITE", None)
        result = run(command, tmp_path, env, timeout=30)
        assert result.returncode == 0, result.stderr
        return [line for line in mark_file.read_text().splitlines() if "other" not in line]

    plain = marks("plain.txt", [user_site_python, script.name])
    assert plain == [
        "sitecustomize app agent-started=False",
        "usercustomize app agent-started=False",
        "main app",
    ]
    assert_nothing_sent(otlp_receiver)  # no agent without the launcher

    traced = marks("traced.txt", [AUTOTRACE, "run", user_site_python, script.name])
    assert traced == [
        "sitecustomize app agent-started=False",  # once, before the agent
        "usercustomize app agent-started=True",  # once, where site runs it: after sitecustomize
        "main app",
    ]
    # The agent read its configuration after the user's sitecustomize had set it.
    assert the_span(otlp_receiver).resource["service.name"] == "user-site-app"


def test_user_sitecustomize_that_raises(tmp_path, otlp_receiver):
    user_dir = tmp_path / "user"
    write(
        user_dir,
        "sitecustomize.py",
        """
        import sys
        if sys.orig_argv[1:2] == ["hello.py"]:  # the app, not the launcher (a Python script too)
            raise RuntimeError("boom in the user's sitecustomize")
        """,
    )
    script = hello(tmp_path, extra='print("app ran")\n')
    env = clean_env(**otlp_receiver.env("http"), PYTHONPATH=str(user_dir))
    result = autotrace_run(script, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "app ran"
    # Python's own report, once, exactly as without autotrace.
    assert result.stderr.count("Error in sitecustomize; set PYTHONVERBOSE for traceback:\n") == 1
    assert "RuntimeError: boom in the user's sitecustomize\n" in result.stderr
    assert the_span(otlp_receiver).resource["service.name"] == "hello"


# -- 8. activation by environment only ----------------------------------------------


def test_enabled_by_environment_without_launcher(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env(**otlp_receiver.env("grpc"), AUTOTRACE_ENABLED="true")
    result = run([PYTHON, script.name], tmp_path, env, timeout=30)

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).resource["service.name"] == "hello"
    assert derived_line(result.stderr)


@pytest.mark.parametrize("enabled, loaded", [(None, "False"), ("false", "False"), ("true", "True")])
def test_nothing_loaded_unless_enabled(tmp_path, enabled, loaded):
    env = clean_env(OTEL_TRACES_EXPORTER="none")
    if enabled is not None:
        env["AUTOTRACE_ENABLED"] = enabled
    code = "import sys; print('autotrace' in sys.modules, any(m.startswith('autotrace.') for m in sys.modules))"
    result = run([PYTHON, "-c", code], tmp_path, env, timeout=20)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [loaded, loaded]


# -- 9. service name ----------------------------------------------------------------


@pytest.mark.parametrize("module, service", [("mypkg.worker", "mypkg.worker"), ("mypkg.main", "mypkg")])
def test_service_name_derived_from_module(tmp_path, otlp_receiver, module, service):
    write(tmp_path, "mypkg/__init__.py", "")
    write(tmp_path, f"mypkg/{module.split('.')[1]}.py", HELLO)
    env = clean_env(**otlp_receiver.env("grpc"))
    result = run([AUTOTRACE, "run", "python", "-m", module], tmp_path, env, timeout=30)

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).resource["service.name"] == service
    assert derived_line(result.stderr) == [
        f"autotrace INFO: service.name={service} (from the python -m {module}; "
        "set OTEL_SERVICE_NAME to choose another)"
    ]


def _python39() -> str | None:
    pyenv = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates = [shutil.which("python3.9"), *pyenv]
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
                capture_output=True,
                text=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.stdout.strip() == "True":
            return candidate
    return None


def test_service_name_derived_from_module_on_python39(tmp_path):
    """Python 3.9 has no sys.orig_argv, and its sys.argv at start-up lacks the -m module."""
    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter here")
    # The agent's start-up up to the service name needs no third-party package: put the
    # bootstrap and the autotrace package (alone) on the path of a bare 3.9.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "autotrace").symlink_to(Path(autotrace.__file__).parent)
    write(tmp_path, "mypkg/__init__.py", "")
    write(tmp_path, "mypkg/worker.py", "print('worker ran')\n")
    env = clean_env(PYTHONPATH=SITECUSTOMIZE_DIR + os.pathsep + str(tmp_path / "src"), OTEL_TRACES_EXPORTER="none")
    result = run([python39, "-m", "mypkg.worker", "a", "b"], tmp_path, env, timeout=20)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "worker ran"
    assert derived_line(result.stderr) == [
        "autotrace INFO: service.name=mypkg.worker (from the python -m mypkg.worker; "
        "set OTEL_SERVICE_NAME to choose another)"
    ]


def test_otel_service_name_wins(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env(
        **otlp_receiver.env("http"),
        OTEL_SERVICE_NAME="explicit",
        OTEL_RESOURCE_ATTRIBUTES="service.name=from-resource",
    )
    result = autotrace_run(script, env)

    assert result.returncode == 0, result.stderr
    assert the_span(otlp_receiver).resource["service.name"] == "explicit"
    assert derived_line(result.stderr) == []


def test_service_name_from_resource_attributes(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_RESOURCE_ATTRIBUTES="service.name=x,deployment.environment=t")
    result = autotrace_run(script, env)

    assert result.returncode == 0, result.stderr
    resource = the_span(otlp_receiver).resource
    assert resource["service.name"] == "x"
    assert resource["deployment.environment"] == "t"
    assert derived_line(result.stderr) == []


# -- 10. OTEL_SDK_DISABLED ----------------------------------------------------------


def test_sdk_disabled(tmp_path, otlp_receiver):
    script = hello(
        tmp_path,
        extra=(
            "from opentelemetry.sdk.trace import TracerProvider\n"
            "provider = trace.get_tracer_provider()\n"
            "print(type(provider).__name__, isinstance(provider, TracerProvider))\n"
        ),
    )
    env = clean_env(**otlp_receiver.env("grpc"), OTEL_SDK_DISABLED="true")
    result = autotrace_run(script, env)

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ProxyTracerProvider", "False"]
    assert_nothing_sent(otlp_receiver)  # the process has exited: its exit flush is done


# -- 11. wrong settings -------------------------------------------------------------


def assert_one_warning_each(stderr: str, settings: dict[str, str]) -> None:
    for name, value in settings.items():
        lines = [line for line in stderr.splitlines() if name in line]
        assert len(lines) == 1, (name, lines)
        assert lines[0].startswith(f"autotrace WARNING: {name}={value!r} is not valid"), lines[0]


def test_wrong_settings_warn_once_and_use_defaults(tmp_path, otlp_receiver):
    script = hello(tmp_path)
    wrong = {
        "OTEL_TRACES_SAMPLER": "bogus",
        "OTEL_TRACES_EXPORTER": "bogus",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "abc",
        "OTEL_BSP_MAX_QUEUE_SIZE": "-3",
    }
    result = autotrace_run(script, clean_env(**{**otlp_receiver.env("grpc"), **wrong}))

    assert result.returncode == 0, result.stderr
    assert_one_warning_each(result.stderr, wrong)
    assert len(agent_lines(result.stderr, "WARNING")) == len(wrong)
    # Default exporter (otlp) and sampler (parent-based always on): the span arrives.
    assert the_span(otlp_receiver).protocol == "grpc"


def test_endpoint_without_scheme_warns_and_uses_the_default(tmp_path):
    script = hello(tmp_path)
    wrong = {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4317"}
    # A valid queue size below the default batch size is no mistake: no warning for it.
    env = clean_env(**wrong, OTEL_BSP_MAX_QUEUE_SIZE="100")
    result = autotrace_run(script, env, options=("--debug", "--exporter", "none"))

    assert result.returncode == 0, result.stderr
    assert_one_warning_each(result.stderr, wrong)
    assert len(agent_lines(result.stderr, "WARNING")) == 1
    assert report_row(result.stderr, "exporter") == "none (spans are not exported)"
    assert report_row(result.stderr, "batch").startswith("delay 5000ms, queue 100, batch 100,")


# -- 12. deny list ------------------------------------------------------------------


def test_deny_list_skips_pip_unless_replaced(tmp_path):
    command = [AUTOTRACE, "run", "--debug", "python", "-m", "pip", "--version"]
    env = clean_env(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    denied = run(command, tmp_path, env, timeout=30)
    assert denied.returncode == 0, denied.stderr
    assert denied.stdout.startswith("pip ")
    assert agent_lines(denied.stderr, "DEBUG") == [
        "autotrace DEBUG: not tracing pip: on the deny list (AUTOTRACE_DENY)"
    ]
    assert agent_lines(denied.stderr, "INFO") == []

    allowed = run(command, tmp_path, {**env, "AUTOTRACE_DENY": ""}, timeout=30)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("pip ")
    debug = agent_lines(allowed.stderr, "DEBUG")
    assert report_row(allowed.stderr, "service.name") == "pip (from python -m pip)"
    assert report_row(allowed.stderr, "deny") is None  # an empty list: no row
    assert not any("deny list" in line for line in debug)
    assert derived_line(allowed.stderr) == [
        "autotrace INFO: service.name=pip (from the python -m pip; set OTEL_SERVICE_NAME to choose another)"
    ]


# -- 13. an interpreter without the agent -------------------------------------------


def test_foreign_interpreter_is_refused(tmp_path):
    venv = tmp_path / "bare"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=30)
    foreign = str(venv / "bin" / "python")
    script = hello(tmp_path, extra='print("app ran")\n')
    shebang = write(tmp_path, "script.py", f"#!{foreign}\n{HELLO}print('app ran')\n")
    shebang.chmod(0o755)
    env = clean_env()

    for command, shown in (([foreign, script.name], foreign), (["./script.py"], "./script.py")):
        result = run([AUTOTRACE, "run", *command], tmp_path, env, timeout=30)
        assert result.returncode != 0, command
        assert "app ran" not in result.stdout
        assert f"autotrace: {foreign} cannot import autotrace" in result.stderr, result.stderr
        assert f"so {shown} would run untraced" in result.stderr
        # Not published: installed from this clone (the test environment's is editable).
        assert f"{foreign} -m pip install {Path(autotrace.__file__).parent.parent}" in result.stderr
        assert "autotrace-agent" not in result.stderr


# -- 14. start-up cost --------------------------------------------------------------


def imported_modules(stderr: str) -> list[str]:
    """Module names from ``-X importtime`` lines (``import time: self | cumulative | name``)."""
    names = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.append(name)
    return names


def assert_light(modules: list[str]) -> None:
    tops = {name.split(".", 1)[0] for name in modules}
    assert not tops & set(NOT_IMPORTED_AT_START), sorted(tops & set(NOT_IMPORTED_AT_START))


def test_importing_autotrace_is_light(tmp_path):
    result = run([PYTHON, "-X", "importtime", "-c", "import autotrace"], tmp_path, clean_env(), timeout=20)
    assert result.returncode == 0, result.stderr
    modules = imported_modules(result.stderr)
    assert "autotrace" in modules
    assert_light(modules)
    assert not [m for m in modules if m.startswith("opentelemetry")]


def test_bootstrap_is_light_and_sdk_is_lazy(tmp_path):
    command = [AUTOTRACE, "run", "python", "-X", "importtime", "-c", "pass"]
    result = run(command, tmp_path, clean_env(), timeout=20)
    assert result.returncode == 0, result.stderr
    modules = imported_modules(result.stderr)
    assert "autotrace.bootstrap" in modules and "autotrace.provider" in modules  # the agent started
    assert_light(modules)
    assert not [m for m in modules if m.startswith("opentelemetry.sdk")]


# -- 15. extra hooks, as the debug log shows them -----------------------------------


def test_extra_hook_is_armed_then_applied(tmp_path):
    write(tmp_path, "myhooks.py", "def patch(module):\n    module.patched_by_test = True\n")
    write(tmp_path, "targetmod.py", "VALUE = 1\n")
    script = write(
        tmp_path,
        "app.py",
        """
        import sys
        print("targetmod" in sys.modules)
        import targetmod
        print(getattr(targetmod, "patched_by_test", False))
        """,
    )
    env = clean_env(AUTOTRACE_EXTRA_HOOKS="targetmod=myhooks")
    result = autotrace_run(script, env, options=("--debug", "--exporter", "none"))

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "True"]  # imported by the app, patched on import
    debug = agent_lines(result.stderr, "DEBUG")
    applied = "autotrace DEBUG: hook myhooks applied to targetmod"
    assert "myhooks" in report_row(result.stderr, "hooks armed").split(", ")[-1]
    assert applied in debug
    assert result.stderr.index("  hooks armed") < result.stderr.index(applied)  # armed, then applied
    assert report_row(result.stderr, "extra hooks") == "targetmod=myhooks"
