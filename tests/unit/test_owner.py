"""Which addresses the operator commands ask (and send the admin key to)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from analytics import owner
from gateway.settings import Settings

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"


def row(port: int, uid: int, state: str = "0A") -> str:
    return f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 00000000  {uid}  0 1 1\n"


def test_a_port_another_user_listens_on_is_not_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the gateway was down, any local user could bind its port: `costs`, `sql` and
    `replay` sent it the admin key (a review)."""
    table = tmp_path / "tcp"
    table.write_text(HEADER + row(18080, 4242) + row(18081, 4242, state="01"))
    monkeypatch.setattr(owner, "TCP_TABLES", (table, tmp_path / "missing"))
    settings = Settings(port=18080, consume_port=18081, _env_file=None)  # type: ignore[call-arg]
    assert owner.owner_urls(settings) == ["http://127.0.0.1:18081"]  # 18081: a connection, no listener
    table.write_text(HEADER + row(18080, 0))
    assert owner.owner_urls(settings) == ["http://127.0.0.1:18080", "http://127.0.0.1:18081"]


def test_the_kernel_s_table_names_our_own_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert owner.listener_uids(port) == {__import__("os").getuid()}
    assert owner.listener_uids(port) == set()


def test_root_trusts_the_data_dir_s_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Root running the commands (sudo) against the gateway's service user: it was skipped, and
    the command opened the store the gateway holds."""
    import os

    data = tmp_path / "data"
    data.mkdir()
    os.chown(data, 4242, -1)
    table = tmp_path / "tcp"
    table.write_text(HEADER + row(18080, 4242))
    monkeypatch.setattr(owner, "TCP_TABLES", (table,))
    settings = Settings(port=18080, consume_port=18081, data_dir=data, _env_file=None)  # type: ignore[call-arg]
    assert owner.owner_urls(settings)[0] == "http://127.0.0.1:18080"
