"""Which control socket the `fwd` commands talk to when no --socket is given."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.cli.client import SOCKET_ENV, ControlError, default_socket


@pytest.fixture
def listening(tmp_path: Path):
    """Unix sockets bound in tmp_path, closed at the end."""
    made: list[socket.socket] = []

    def bind(name: str) -> str:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(tmp_path / name))
        made.append(s)
        return str(tmp_path / name)

    yield bind
    for s in made:
        s.close()


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SOCKET_ENV, raising=False)


def test_the_environment_wins(tmp_path: Path, listening, monkeypatch) -> None:
    listening("fwd.sock")
    monkeypatch.setenv(SOCKET_ENV, "/elsewhere/x.sock")
    assert default_socket(str(tmp_path / "fwd.sock")) == "/elsewhere/x.sock"


def test_the_default_path_when_it_exists(tmp_path: Path, listening) -> None:
    default = listening("fwd.sock")
    listening("lab.sock")
    assert default_socket(default) == default


def test_the_only_engine_beside_the_default_is_found(tmp_path: Path, listening) -> None:
    lab = listening("lab.sock")
    (tmp_path / "notes.sock").write_text("a file named .sock is not an engine")
    assert default_socket(str(tmp_path / "fwd.sock")) == lab


def test_several_engines_are_named_not_guessed(tmp_path: Path, listening) -> None:
    a, b = listening("a.sock"), listening("b.sock")
    with pytest.raises(ControlError) as info:
        default_socket(str(tmp_path / "fwd.sock"))
    assert f"several engines in {tmp_path}: {a}, {b}; pick one with --socket" in str(
        info.value)


def test_nothing_anywhere_keeps_the_default(tmp_path: Path) -> None:
    assert default_socket(str(tmp_path / "fwd.sock")) == str(tmp_path / "fwd.sock")
    missing = tmp_path / "no-such-dir" / "fwd.sock"
    assert default_socket(str(missing)) == str(missing)
