"""A real LiteLLM proxy process (from .venv-litellm) with the meterwire callback, for tests and the benchmark."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.gateway_agent.harness import ENVIRONMENT
from tests.system.serve import ServeProcess, free_port

REPO = Path(__file__).resolve().parents[2]
LITELLM_VENV = Path(os.environ.get("MW_LITELLM_VENV", REPO / ".venv-litellm"))
LITELLM = LITELLM_VENV / "bin" / "litellm"
MASTER_KEY = "sk-meterwire-test-master"
MASTER_KEY_ID = "litellm_proxy_master_key"
"""LiteLLM's user_api_key_hash for its master key: the api_key_id usage reports (never the secret)."""
CALLBACK = "gateway_agent.integrations.litellm.meterwire"
BUDGETED_ALIASES = ("capped", "watched", "priced")
READY_TIMEOUT_S = 90.0

# Every token kind at once (prompt includes cache reads and writes; completion includes reasoning).
RICH_USAGE = {
    "prompt_tokens": 1200,
    "completion_tokens": 300,
    "total_tokens": 1500,
    "prompt_tokens_details": {"cached_tokens": 1000, "cache_creation_tokens": 100},
    "completion_tokens_details": {"reasoning_tokens": 200},
}


def require_litellm() -> Path:
    """The proxy binary of a completely built .venv-litellm (its stamp); without it the test skips, unless CI or
    MW_REQUIRE_LITELLM=1 makes that a failure."""
    if LITELLM.exists() and (LITELLM_VENV / ".installed").exists():
        return LITELLM
    reason = f"{LITELLM} is missing: `make litellm-venv` builds the LiteLLM proxy's own virtualenv (~3 min)"
    if os.environ.get("MW_REQUIRE_LITELLM") == "1" or os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"LiteLLM required (MW_REQUIRE_LITELLM/CI): {reason}")
    pytest.skip(reason)


def _model(name: str, model: str, mock: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": model, "api_key": "sk-not-used", "mock_response": mock}}


def write_config(directory: Path, *, callback: str | None = CALLBACK) -> Path:
    """Models answered by LiteLLM's own mock_response (no network): plain, every token kind, a fallback pair, and
    one whose provider fails."""
    config: dict[str, Any] = {
        "model_list": [
            _model("gpt-4o", "openai/gpt-4o", "Hello from the mock"),
            _model(
                "reasoner",
                "openai/gpt-4o",
                {
                    "id": "chatcmpl-mock-reasoner",
                    "object": "chat.completion",
                    "model": "gpt-4o",
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "thought"}}
                    ],
                    "usage": RICH_USAGE,
                },
            ),
            _model("primary", "openai/gpt-4o-mini", "litellm.InternalServerError"),
            _model("backup", "anthropic/claude-3-5-haiku-20241022", "from the backup"),
            _model("broken", "openai/gpt-4o", "litellm.RateLimitError"),
            # Aliases the admission tests put budgets on, so the other tests' traffic never meets them.
            *(_model(alias, "openai/gpt-4o", "Hello from the mock") for alias in BUDGETED_ALIASES),
        ],
        # No retries: one logged attempt per model group, so the attempts a test expects are exact.
        "router_settings": {"num_retries": 0, "fallbacks": [{"primary": ["backup"]}]},
        "litellm_settings": {"callbacks": [callback]} if callback else {},
        "general_settings": {"master_key": MASTER_KEY},
    }
    path = directory / "litellm-config.yaml"
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@dataclass(frozen=True)
class AgentEnv:
    """The callback's settings for one proxy: the control plane, the gateway token's file, and a data dir."""

    control_plane: str
    token_file: Path
    environment: str
    gateway: str
    data_dir: Path

    def variables(self) -> dict[str, str]:
        return {
            "MW_CONTROL_PLANE": self.control_plane,
            "MW_AGENT_TOKEN_FILE": str(self.token_file),
            "MW_ENVIRONMENT": self.environment,
            "MW_GATEWAY": self.gateway,
            "MW_AGENT_DATA_DIR": str(self.data_dir),
        }

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool.db"


class ProxyProcess:
    """`litellm --config ... --port ...`, its output in a file (a pipe nobody reads would block it)."""

    def __init__(
        self, config: Path, *, agent: AgentEnv | None, env: Mapping[str, str] | None = None, port: int | None = None
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = config.with_name(f"litellm-{self.port}-{time.time_ns()}.log")
        env = {
            # Only the settings a test gives reach the callback, never the MW_* of whoever runs the tests.
            **{name: value for name, value in os.environ.items() if not name.startswith("MW_")},
            # LiteLLM fetches its model price map from the internet unless told to use the one it ships.
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MODE": "PRODUCTION",
            "NO_DOCS": "True",
            **(agent.variables() if agent else {}),
            **(env or {}),
        }
        for name in ("VIRTUAL_ENV", "PYTHONPATH"):
            env.pop(name, None)
        with self.log_path.open("w") as log_file:
            self.process = subprocess.Popen(
                self.command(config),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=config.parent,
            )
        self.client = httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=httpx.Timeout(30.0)
        )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def command(self, config: Path) -> list[str]:
        litellm = str(require_litellm())
        return [litellm, "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited with {self.process.returncode}: {self.log()}")
            try:
                if self.client.get("/health/readiness").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the LiteLLM proxy did not become ready: {self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def chat(self, model: str, content: str = "hello", **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": [{"role": "user", "content": content}], **body}
        return self.client.post("/v1/chat/completions", json=payload)

    def stream_chat(self, model: str, content: str = "hello", **body: Any) -> tuple[httpx.Response, list[str]]:
        """A streamed chat completion read to its end: the response and its SSE data lines."""
        payload = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True, **body}
        with self.client.stream("POST", "/v1/chat/completions", json=payload) as response:
            lines = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
        return response, lines

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.client.close()

    def stop(self) -> int:
        """SIGTERM, as a supervisor stops it: the proxy's loop ends and the embedded agent shuts down."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        finally:
            self.client.close()
        return code


@contextmanager
def proxy(config: Path, *, agent: AgentEnv | None, env: Mapping[str, str] | None = None) -> Iterator[ProxyProcess]:
    process = ProxyProcess(config, agent=agent, env=env)
    try:
        yield process
    finally:
        process.kill()


def spooled_event_ids(spool: Path) -> list[str]:
    """The events committed to an agent's spool and not acked yet (read-only, after the proxy is gone)."""
    connection = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return [row[0] for row in connection.execute("SELECT event_id FROM events ORDER BY seq")]
    finally:
        connection.close()


def apply_config(serve_process: ServeProcess, directory: Path, text: str) -> None:
    """A new config version for the test environment (the agent in the proxy receives it by WatchConfig)."""
    path = directory / "meterwire-config.yaml"
    path.write_text(text)
    result = serve_process.cli("config", "apply", "-e", ENVIRONMENT, "-f", str(path), "--yes")
    assert result.returncode == 0, result.stderr
