"""TLS and mutual TLS between the CLI and a real `meterwire serve`."""

from __future__ import annotations

import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from gateway_agent import GatewayAgent
from gateway_agent.settings import TlsSettings
from services.cli.simulate import make_request
from tests.gateway_agent.harness import agent_settings, create_gateway_token, eventually, server_event_ids
from tests.system.serve import free_port, run_cli, serve

pytestmark = pytest.mark.system


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client certificate."""
    root = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=meterwire test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=root,
    )
    (root / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, extension in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=root,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            *extension,
            cwd=root,
        )
    return root


def _list_envs(address: str, token_file: Path, *tls: str) -> subprocess.CompletedProcess[str]:
    return run_cli("envs", "list", "--json", "--address", address, "--token-file", str(token_file), *tls)


def test_tls_serves_clients_that_trust_its_ca(tmp_path: Path, pki: Path) -> None:
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    data_dir = tmp_path / "var"
    with serve(data_dir, *tls, ready_tls_ca=pki / "ca.pem") as server:
        ok = _list_envs(server.address, server.admin_token_file, "--tls-ca", str(pki / "ca.pem"))
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.strip() == "[]"
        plaintext = _list_envs(server.address, server.admin_token_file)
        assert plaintext.returncode != 0
        assert "cannot reach the control plane" in plaintext.stderr


def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path: Path, pki: Path) -> None:
    tls = [
        "--tls-cert",
        str(pki / "server.pem"),
        "--tls-key",
        str(pki / "server.key"),
        "--tls-client-ca",
        str(pki / "ca.pem"),
    ]
    client = ["--tls-ca", str(pki / "ca.pem")]
    with serve(tmp_path / "var", *tls, ready_tls_ca=pki / "ca.pem", ready_client=pki / "client") as server:
        anonymous = _list_envs(server.address, server.admin_token_file, *client)
        assert anonymous.returncode != 0
        certified = _list_envs(
            server.address,
            server.admin_token_file,
            *client,
            "--tls-cert",
            str(pki / "client.pem"),
            "--tls-key",
            str(pki / "client.key"),
        )
        assert certified.returncode == 0, certified.stderr


async def test_an_agent_delivers_over_mutual_tls_and_one_without_a_certificate_cannot(
    tmp_path: Path, pki: Path
) -> None:
    server_tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    server_tls += ["--tls-client-ca", str(pki / "ca.pem")]
    certified = TlsSettings(ca_file=pki / "ca.pem", cert_file=pki / "client.pem", key_file=pki / "client.key")
    with serve(tmp_path / "var", *server_tls, ready_tls_ca=pki / "ca.pem", ready_client=pki / "client") as server:
        token = create_gateway_token(server)
        rng = random.Random(12)
        settings = agent_settings(server.address, token, tmp_path / "agent", tls=certified)
        async with GatewayAgent(settings) as agent:
            ids = [(await agent.record(event)).event_id for _ in range(50) for event in make_request(rng)]
            await eventually(lambda: agent.status().spool_depth == 0, within=30, what="the spool to drain")
            assert agent.status().connected
        anonymous = TlsSettings(ca_file=pki / "ca.pem")
        async with GatewayAgent(agent_settings(server.address, token, tmp_path / "anonymous", tls=anonymous)) as agent:
            await agent.record(make_request(rng)[0])
            await eventually(lambda: agent.status().stream_failures >= 2, within=30, what="refused connections")
            refused = agent.status()
        stored = server_event_ids(server.data_dir)
    assert Counter(stored) == Counter(ids)
    assert (refused.connected, refused.spool_depth, refused.events_accepted) == (False, 1, 0)


def test_a_missing_certificate_file_is_one_line_naming_it(tmp_path: Path) -> None:
    result = run_cli(
        "serve",
        "--data-dir",
        str(tmp_path),
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--tls-cert",
        str(tmp_path / "nope.pem"),
        "--tls-key",
        str(tmp_path / "nope.key"),
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error: tls: cannot read")
    assert "Traceback" not in result.stderr
