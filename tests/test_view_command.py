"""``autotrace view`` arguments, its default store path, and that the agent never imports it."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from ports import free_port

from autotrace.view import command


def test_the_default_store_is_under_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert command.default_db() == tmp_path / "autotrace" / "view.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert command.default_db() == tmp_path / ".local" / "share" / "autotrace" / "view.db"


@pytest.mark.parametrize("which, option", [(0, "--ui-port"), (1, "--otlp-http-port"), (2, "--otlp-grpc-port")])
def test_a_port_in_use_is_one_line_and_status_2(which, option, capsys):
    ports = [free_port(), free_port(), free_port()]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[which]))
        busy.listen()
        code = command.main(["--memory", "--ui-port", str(ports[0]), "--otlp-http-port", str(ports[1]),
                             "--otlp-grpc-port", str(ports[2])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and f"port {ports[which]}" in err and option in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--ui-port", "x"], ["--max-spans", "0"], ["--retention-days", "-1"],
                                  ["--db", "a", "--memory"]])
def test_bad_arguments(args):
    with pytest.raises(SystemExit) as exited:
        command.parser().parse_args(args)
    assert exited.value.code == 2


def test_importing_the_cli_imports_nothing_of_the_viewer():
    code = "import sys, autotrace.cli; print(sorted(m for m in sys.modules if m.startswith('autotrace.view')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.strip() == "[]"


def test_view_is_listed_in_the_help():
    out = subprocess.run([sys.executable, "-m", "autotrace", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "view" in out
    out = subprocess.run([sys.executable, "-m", "autotrace", "view", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--otlp-grpc-port" in out and "--import" in out
