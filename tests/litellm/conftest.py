"""A real `meterwire serve` and a real LiteLLM proxy with the meterwire callback, each started once per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY, create_gateway_token
from tests.litellm.proxy import AgentEnv, ProxyProcess, proxy, require_litellm, write_config
from tests.litellm.reports import Reports
from tests.system.serve import ServeProcess, serve


@pytest.fixture(scope="module")
def serve_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    require_litellm()  # before starting anything
    with serve(tmp_path_factory.mktemp("control-plane") / "var") as process:
        yield process


@pytest.fixture(scope="module")
def agent_env(serve_process: ServeProcess, tmp_path_factory: pytest.TempPathFactory) -> AgentEnv:
    directory = tmp_path_factory.mktemp("proxy")
    token_file = directory / "gateway.token"
    token_file.write_text(create_gateway_token(serve_process))
    token_file.chmod(0o600)
    return AgentEnv(serve_process.address, token_file, ENVIRONMENT, GATEWAY, directory / "agent")


@pytest.fixture(scope="module")
def litellm_proxy(agent_env: AgentEnv) -> Iterator[ProxyProcess]:
    with proxy(write_config(agent_env.token_file.parent), agent=agent_env) as process:
        yield process


@pytest.fixture(scope="module")
def reports(serve_process: ServeProcess) -> Iterator[Reports]:
    client = Reports(serve_process.address, serve_process.admin_token_file.read_text().strip(), ENVIRONMENT)
    yield client
    client.close()
