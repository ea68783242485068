"""The LiteLLM proxy callback that makes the proxy a meterwire-managed gateway, with one line of its config.yaml:

    litellm_settings:
      callbacks: gateway_agent.integrations.litellm.meterwire

It runs a GatewayAgent in the proxy's own process and event loop (spool, sender, heartbeats, config cache), or
talks to a `meterwire agent run` beside the proxy (MW_AGENT), as the MW_* environment variables say
(litellm_settings.LiteLLMSettings). The pre-call hook asks the agent whether to serve each request (answered from
local state, never the network); the success and failure callbacks hand each attempt's usage to the agent and
return (LiteLLM runs them after the response).

Only the proxy imports this module: it imports litellm, which meterwire itself never does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping
from typing import Any

import litellm
import structlog
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import ProxyException

from gateway_agent.budget_view import CheckRequest, Decision, UsageEstimate
from gateway_agent.integrations.agent_link import AgentLink, EmbeddedAgent, LocalAgent
from gateway_agent.integrations.litellm_settings import LiteLLMSettings, SettingsError
from gateway_agent.integrations.litellm_usage import (
    RESERVATION_METADATA_KEY,
    admission_question,
    usage_event,
)
from gateway_agent.responses import http_response

log = structlog.get_logger("meterwire.litellm")

DENIAL_DETAILS_KEY = "meterwire"
"""A denial's details reach the caller at error.provider_specific_fields.meterwire (LiteLLM's error envelope)."""
_DENIAL_TYPES = {403: "api_key_disabled", 429: "budget_exceeded"}


class AdmissionDenied(ProxyException):
    """The pre-call hook's answer to a request the agent denied. LiteLLM passes a ProxyException through to the
    caller as it is (status, headers, message, type, provider_specific_fields), and logs it as a failure, which
    the failure callback recognizes by this class: a denied request is not usage."""


class MeterwireCallback(CustomLogger):
    """The callback instance LiteLLM loads from config.yaml (`meterwire` below)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self._environ = os.environ if environ is None else environ
        self._settings: LiteLLMSettings | None = None
        self._agent: AgentLink | None = None
        self._ready: asyncio.Future[AgentLink | None] | None = None
        self._lifetime: asyncio.Task[None] | None = None
        self._prompts = PromptCounter()
        # The proxy loads its config inside its running event loop: start the agent with it, not on a request.
        with contextlib.suppress(RuntimeError):
            self._begin(asyncio.get_running_loop())

    # --- the embedded agent's lifetime ------------------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._ready is None:
            self._ready = loop.create_future()
            self._lifetime = loop.create_task(self._run(self._ready), name="meterwire-agent")

    async def _run(self, ready: asyncio.Future[AgentLink | None]) -> None:
        """Starts the agent and keeps it while the loop runs. A host whose loop ends by cancelling its tasks
        (asyncio.run) shuts the agent down here; the litellm CLI's uvicorn re-raises SIGTERM before that, so there
        the spool keeps what the agent committed and the proxy's next start delivers it."""
        try:
            settings = LiteLLMSettings.from_env(self._environ)
            agent: AgentLink = EmbeddedAgent(settings.agent) if settings.agent else LocalAgent(settings.agent_address)
            await agent.start()
        except SettingsError as error:
            log.error("METERWIRE IS OFF: the proxy serves without usage reporting or admission", error=str(error))
            ready.set_result(None)
            return
        except Exception as error:  # whatever stops the agent, the proxy must keep serving
            log.exception("METERWIRE IS OFF: the agent could not start; the proxy serves without it", error=str(error))
            ready.set_result(None)
            return
        self._settings, self._agent = settings, agent
        ready.set_result(agent)
        if settings.agent is not None:
            log.info(
                "meterwire agent running in the LiteLLM proxy",
                environment=settings.agent.environment_id,
                gateway=settings.agent.gateway_id,
                data_dir=str(settings.agent.data_dir),
                admission=settings.admission,
            )
        else:
            log.info("the LiteLLM proxy reports to a local meterwire agent", agent=settings.agent_address)
        try:
            await asyncio.Event().wait()
        finally:
            await agent.close()

    async def agent(self) -> AgentLink | None:
        """The running agent (waiting for its start the first time); None when it could not start."""
        if self._agent is not None:
            return self._agent
        self._begin(asyncio.get_running_loop())
        assert self._ready is not None
        return await asyncio.shield(self._ready)

    async def shutdown(self) -> None:
        """Stops the agent (commits its queue, delivers what it can within its shutdown_flush_timeout); safe
        twice. For hosts that embed the proxy's app; the litellm CLI's exit leaves the spool to the next start."""
        if self._lifetime is not None and not self._lifetime.done():
            self._lifetime.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lifetime

    # --- LiteLLM's hooks --------------------------------------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        agent = await self.agent()
        settings = self._settings
        if agent is None or settings is None or not settings.admission:
            return data
        question = admission_question(user_api_key_dict, data, key_identity=settings.key_identity)
        decision = await agent.check(
            CheckRequest(
                api_key_id=question.api_key_id,
                user_id=question.user_id,
                requested_model=question.requested_model,
                route=question.route,
                tags=question.tags,
                estimate=self._prompts.estimate(
                    data, question.requested_model, max_output_tokens=question.max_output_tokens
                ),
            )
        )
        if not decision.allowed:
            raise denial(decision)
        if decision.reservation_id:
            # LiteLLM hands the request's metadata to the logging callbacks: the usage event carries it back.
            metadata_key = "litellm_metadata" if isinstance(data.get("litellm_metadata"), dict) else "metadata"
            data.setdefault(metadata_key, {})[RESERVATION_METADATA_KEY] = decision.reservation_id
        return data

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        await self._record(kwargs)

    async def async_log_failure_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        if isinstance(kwargs.get("exception"), AdmissionDenied):
            return  # the hook denied it: nothing ran, nothing was reserved
        await self._record(kwargs)

    async def _record(self, kwargs: Mapping[str, Any]) -> None:
        agent = await self.agent()
        settings = self._settings
        if agent is None or settings is None:
            return
        event = usage_event(kwargs, key_identity=settings.key_identity)
        if event is None:
            log.warning("a LiteLLM callback carried no standard logging payload; no usage recorded")
            return
        await agent.record(event)


class PromptCounter:
    """Counts a prompt's tokens with the tokenizer LiteLLM picks for the model, chosen once per model. Text chat
    prompts under a tiktoken tokenizer are encoded directly, in OpenAI's message accounting: inside a running event
    loop (the proxy's) litellm.token_counter costs about 0.8 ms of CPU a call on average, the encoding a few µs.
    Anything else (images, tools, other tokenizers) goes through litellm.token_counter."""

    MAX_MODELS = 1024
    """Models whose tokenizer is kept (aliases are few; beyond this the choice is made per call)."""
    TOKENS_PER_MESSAGE = 3
    REPLY_PRIMING_TOKENS = 3

    def __init__(self) -> None:
        self._tokenizers: dict[str, Any] = {}

    def _tokenizer(self, model: str) -> Any:
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            tokenizer = litellm.utils.select_tokenizer(model=model)
            if len(self._tokenizers) < self.MAX_MODELS:
                self._tokenizers[model] = tokenizer
        return tokenizer

    def count(self, data: Mapping[str, Any], model: str) -> int:
        tokenizer = self._tokenizer(model)
        encoding = tokenizer.get("tokenizer") if tokenizer.get("type") == "openai_tokenizer" else None
        messages = data.get("messages")
        if isinstance(messages, list):
            texts = _message_texts(messages)
            if encoding is not None and texts is not None:
                encoded = sum(len(encoding.encode(text, disallowed_special=())) for text in texts)
                return encoded + self.TOKENS_PER_MESSAGE * len(messages) + self.REPLY_PRIMING_TOKENS
            return int(litellm.token_counter(model=model, custom_tokenizer=tokenizer, messages=messages))
        if isinstance(data.get("input"), str):
            if encoding is not None:
                return len(encoding.encode(data["input"], disallowed_special=()))
            return int(litellm.token_counter(model=model, custom_tokenizer=tokenizer, text=data["input"]))
        return 0

    def estimate(self, data: Mapping[str, Any], model: str, *, max_output_tokens: int) -> UsageEstimate:
        """What the request may use: its prompt's tokens plus the caller's max_tokens. The agent prices it with
        the environment's pricing table and reserves it."""
        try:
            input_tokens = self.count(data, model)
        except Exception as error:  # a prompt LiteLLM cannot count is estimated by max_tokens alone
            log.warning("cannot count the prompt's tokens for the reservation", model=model, error=str(error))
            input_tokens = 0
        return UsageEstimate(input_tokens=input_tokens, max_output_tokens=max_output_tokens)


def _message_texts(messages: list[Any]) -> list[str] | None:
    """Every role, name and content string of plain-text chat messages; None when any part is not plain text."""
    texts: list[str] = []
    for message in messages:
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            return None
        for value in message.values():
            if value is None:
                continue
            if not isinstance(value, str):
                return None
            texts.append(value)
    return texts


def denial(decision: Decision) -> AdmissionDenied:
    """The agent's ready-to-send denial as LiteLLM answers it: our status and headers (Retry-After,
    x-should-retry), our explanation as error.message and error.type, and the whole of it (the budget, its limit,
    used, reset time, retry_after_seconds) under error.provider_specific_fields.meterwire."""
    status, body, headers = http_response(decision) or (decision.http_status, "", {})
    details: dict[str, Any] = {"type": _DENIAL_TYPES.get(status, "request_denied"), "message": decision.message}
    with contextlib.suppress(ValueError):
        parsed = json.loads(body) if body else None
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            details = error
    return AdmissionDenied(
        message=str(details.get("message") or decision.message or decision.reason),
        type=str(details.get("type") or "request_denied"),
        param=None,
        code=status or 403,
        # LiteLLM writes its own JSON response: a second content-type would only confuse clients.
        headers={name: value for name, value in headers.items() if name.lower() != "content-type"},
        provider_specific_fields={DENIAL_DETAILS_KEY: details},
    )


meterwire = MeterwireCallback()
"""The instance config.yaml names: `callbacks: gateway_agent.integrations.litellm.meterwire`."""
