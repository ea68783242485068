"""`meterwire serve --http-listen`: the console in the real process, its URL printed, a clean drain, a busy port
named; and the session and export rules the pages rely on."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from services.auth import Role
from services.console.exports import Exports, ExportShape
from services.console.sessions import Sessions
from services.errors import NotFoundError
from services.reporting.filters import UsageSelection
from services.server import ControlPlane
from services.usage_terms.records import EVENT_COLUMNS
from tests.system.serve import free_port, run_cli, serve

pytestmark = pytest.mark.system


def test_serve_prints_the_console_url_serves_it_and_drains(tmp_path: Path) -> None:
    port = free_port()
    with serve(tmp_path / "var", "--http-listen", f"127.0.0.1:{port}") as server:
        deadline = time.monotonic() + 10
        while f"usage console: http://127.0.0.1:{port}/" not in server.log():
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        login = httpx.get(f"http://127.0.0.1:{port}/login", timeout=10)
        assert login.status_code == 200
        assert "Sign in to the usage console" in login.text
        assert server.stop() == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0  # closed with the process


def test_a_busy_console_port_fails_start_with_one_line_naming_it(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_cli(
            "serve",
            "--data-dir",
            str(tmp_path / "var"),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            f"127.0.0.1:{port}",
        )
    assert result.returncode != 0
    assert f"error: http_listen: cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "var" / "admin.token").exists()  # refused before the database was touched


async def test_idle_sessions_end_and_sessions_check_the_token_each_time(
    control_plane: ControlPlane, admin_secret: str
) -> None:
    now = [0.0]
    sessions = Sessions(control_plane.deps.admin, idle_seconds=60, clock=lambda: now[0])
    session, principal = await sessions.sign_in(admin_secret)
    assert principal.role is Role.ADMIN
    now[0] = 59
    assert await sessions.resume(session.session_id) is not None
    now[0] = 59 + 61
    assert await sessions.resume(session.session_id) is None
    assert len(sessions) == 0


async def test_an_export_belongs_to_the_session_that_started_it(control_plane: ControlPlane, tmp_path: Path) -> None:
    exports = Exports(control_plane.engine, control_plane.deps.prices, tmp_path / "exports", max_buckets=1000)
    selection = UsageSelection(start_us=0, end_us=10**15, environment_ids=None)
    shape = ExportShape((), (), 0, "UTC")
    job = await exports.start(owner="session-a", selection=selection, shape=shape, file_format="csv")
    assert exports.get(job.job_id, owner="session-a") is job
    with pytest.raises(NotFoundError):
        exports.get(job.job_id, owner="session-b")
    assert job.task is not None
    await job.task
    assert (job.done, job.error, job.rows) == (True, "", 0)
    assert job.path.read_text().splitlines() == [",".join(EVENT_COLUMNS)]  # nothing in range: the header alone
    await exports.shutdown()
    assert not job.path.exists()


@pytest.mark.parametrize("storage_dialect", ["sqlite"], indirect=True)  # about sockets: one engine is enough
async def test_kept_alive_connections_send_at_once_without_nagle(
    control_plane: ControlPlane, http: httpx.AsyncClient
) -> None:
    """Browsers keep connections alive; with Nagle's algorithm on, each response on such a connection waited for
    the delayed ACK of its first segment (~40 ms a page, measured by benchmarks/console.py). asyncio turns it off
    only on sockets created as TCP, so the console's listening socket must be one (accepted ones inherit it)."""
    assert (await http.get("/login")).status_code == 200  # the connection stays open (keep-alive)
    server = control_plane._console._server  # type: ignore[union-attr]  # uvicorn's, to reach its connections
    assert server is not None
    connections = list(server.server_state.connections)
    assert connections
    for connection in connections:
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
