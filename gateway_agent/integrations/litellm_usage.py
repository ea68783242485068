"""LiteLLM's standard logging payload as meterwire usage events, and a proxy request as an admission question.

Pure functions over the plain dicts LiteLLM hands its callbacks (no litellm import), so the mapping is the same
whichever way the callback reaches an agent.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from meterwire.common.v1 import usage_pb2

RESERVATION_METADATA_KEY = "meterwire_reservation_id"
"""Where the pre-call hook leaves the reservation id in the request's metadata; the usage event carries it back."""
USER_AGENT_TAG_PREFIX = "user-agent:"
"""LiteLLM adds `User-Agent: <agent>` request tags by itself; they are not the caller's tags."""

# Bounds the control plane enforces (services/telemetry/validation.py); trimmed here so a long value from a
# caller never turns a whole event into a dead letter.
MAX_IDENTIFIER_BYTES = 256
MAX_ERROR_MESSAGE_BYTES = 1024
MAX_TAGS = 32
MAX_TAG_KEY_BYTES = 64
MAX_TAG_VALUE_BYTES = 256
MAX_REQUEST_ID_BYTES = 128
MICROS_PER_UNIT = 1_000_000

_REQUEST_TYPES: Mapping[str, usage_pb2.RequestType.ValueType] = {
    "completion": usage_pb2.REQUEST_TYPE_CHAT,
    "acompletion": usage_pb2.REQUEST_TYPE_CHAT,
    "responses": usage_pb2.REQUEST_TYPE_CHAT,
    "aresponses": usage_pb2.REQUEST_TYPE_CHAT,
    "anthropic_messages": usage_pb2.REQUEST_TYPE_CHAT,
    "text_completion": usage_pb2.REQUEST_TYPE_COMPLETION,
    "atext_completion": usage_pb2.REQUEST_TYPE_COMPLETION,
    "embedding": usage_pb2.REQUEST_TYPE_EMBEDDING,
    "aembedding": usage_pb2.REQUEST_TYPE_EMBEDDING,
    "image_generation": usage_pb2.REQUEST_TYPE_IMAGE,
    "aimage_generation": usage_pb2.REQUEST_TYPE_IMAGE,
    "transcription": usage_pb2.REQUEST_TYPE_AUDIO,
    "atranscription": usage_pb2.REQUEST_TYPE_AUDIO,
    "speech": usage_pb2.REQUEST_TYPE_AUDIO,
    "aspeech": usage_pb2.REQUEST_TYPE_AUDIO,
    "rerank": usage_pb2.REQUEST_TYPE_RERANK,
    "arerank": usage_pb2.REQUEST_TYPE_RERANK,
    "moderation": usage_pb2.REQUEST_TYPE_MODERATION,
    "amoderation": usage_pb2.REQUEST_TYPE_MODERATION,
}
# Token categories (usage.proto TokenCounts.categories) from LiteLLM's prompt/completion token details.
_INPUT_CATEGORIES = {"audio_tokens": "audio_input", "image_tokens": "image_input"}
_OUTPUT_CATEGORIES = {"audio_tokens": "audio_output", "image_tokens": "image_output"}
_NORMALIZED_ERROR = re.compile(r"^\d{3}_(?P<kind>[A-Z0-9_]+)$")
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


class KeyIdentity(StrEnum):
    """Which of a LiteLLM key's names becomes the event's api_key_id (and what disabled_api_key_ids lists)."""

    ALIAS = "alias"
    """The key's alias when it has one, else its hash."""
    HASH = "hash"
    """Always the key's hash (LiteLLM's `user_api_key_hash`; `litellm_proxy_master_key` for the master key)."""


@dataclass(frozen=True)
class AdmissionQuestion:
    """What the pre-call hook knows of a request, in the agent's CheckRequest terms."""

    api_key_id: str
    user_id: str
    requested_model: str
    route: str
    tags: dict[str, str]
    max_output_tokens: int
    """The caller's max_tokens (or max_completion_tokens); 0 when not given."""


def usage_event(kwargs: Mapping[str, Any], *, key_identity: KeyIdentity) -> usage_pb2.UsageEvent | None:
    """One attempt's usage event from a success or failure callback's kwargs; None without a logging payload."""
    payload = kwargs.get("standard_logging_object")
    if not isinstance(payload, Mapping):
        return None
    call_id = _text(payload.get("litellm_call_id")) or _text(kwargs.get("litellm_call_id"))
    if not call_id:
        return None
    params = _mapping(kwargs.get("litellm_params"))
    # Chat routes carry the request's metadata as `metadata`, some newer routes as `litellm_metadata`.
    request_metadata = _mapping(params.get("metadata")) or _mapping(params.get("litellm_metadata"))
    payload_metadata = _mapping(payload.get("metadata"))
    fallbacks = _count(request_metadata.get("attempted_fallbacks")) or 0
    retries = _count(request_metadata.get("attempted_retries")) or 0
    attempt = 1 + fallbacks + retries

    event = usage_pb2.UsageEvent(
        event_id=attempt_event_id(call_id, attempt),
        request_id=_bounded(call_id, MAX_REQUEST_ID_BYTES),
        attempt=attempt,
        api_key_id=_bounded(_key_id(payload_metadata, key_identity), MAX_IDENTIFIER_BYTES),
        user_id=_bounded(
            _text(payload.get("end_user")) or _text(payload_metadata.get("user_api_key_end_user_id")),
            MAX_IDENTIFIER_BYTES,
        ),
        route=_bounded(_text(payload_metadata.get("user_api_key_request_route")), MAX_IDENTIFIER_BYTES),
        request_type=_REQUEST_TYPES.get(_text(payload.get("call_type")), usage_pb2.REQUEST_TYPE_OTHER),
        requested_model=_bounded(_requested_model(params, request_metadata, payload), MAX_IDENTIFIER_BYTES),
        provider=_bounded(_text(payload.get("custom_llm_provider")), MAX_IDENTIFIER_BYTES),
        streaming=payload.get("stream") is True,
        reservation_id=_text(request_metadata.get(RESERVATION_METADATA_KEY)),
    )
    event.resolved_model = _bounded(_resolved_model(_text(payload.get("model")), event.provider), MAX_IDENTIFIER_BYTES)
    event.tags.update(request_tags(payload.get("request_tags")))
    _set_times(event, payload)
    _set_outcome(event, payload)
    _set_tokens(event, payload, payload_metadata)
    cost = _number(payload.get("response_cost"))
    if cost is not None and not payload.get("response_cost_failure_debug_info"):
        event.cost_micros = max(0, round(cost * MICROS_PER_UNIT))
    return event


def attempt_event_id(call_id: str, attempt: int) -> str:
    """The first attempt's event id is LiteLLM's call id itself; a fallback's is derived from it, so a callback
    that fires twice for one attempt makes the same id and the control plane counts it once."""
    try:
        base = uuid.UUID(call_id)
    except ValueError:
        base = uuid.uuid5(uuid.NAMESPACE_URL, f"litellm-call:{call_id}")
    return str(base) if attempt == 1 else str(uuid.uuid5(base, f"attempt {attempt}"))


def admission_question(key: Any, data: Mapping[str, Any], *, key_identity: KeyIdentity) -> AdmissionQuestion:
    """The pre-call hook's view of a request: `key` is LiteLLM's UserAPIKeyAuth, `data` the request body."""
    metadata = _mapping(data.get("metadata"))
    key_hash = _text(getattr(key, "token", None)) or _text(metadata.get("user_api_key_hash"))
    alias = _text(getattr(key, "key_alias", None)) or _text(metadata.get("user_api_key_alias"))
    api_key_id = key_hash if key_identity is KeyIdentity.HASH else (alias or key_hash)
    user_id = _text(data.get("user")) or _text(getattr(key, "end_user_id", None))
    route = _text(getattr(key, "request_route", None)) or _text(metadata.get("user_api_key_request_route"))
    return AdmissionQuestion(
        api_key_id=_bounded(api_key_id, MAX_IDENTIFIER_BYTES),
        user_id=_bounded(user_id, MAX_IDENTIFIER_BYTES),
        requested_model=_bounded(_text(data.get("model")), MAX_IDENTIFIER_BYTES),
        route=_bounded(route, MAX_IDENTIFIER_BYTES),
        tags=request_tags(metadata.get("tags")),
        max_output_tokens=_count(data.get("max_tokens")) or _count(data.get("max_completion_tokens")) or 0,
    )


def request_tags(tags: Any) -> dict[str, str]:
    """LiteLLM's tag list as meterwire's tag map: `key:value` splits at the first colon, a bare tag maps to "";
    LiteLLM's own User-Agent tags are left out, and so is what would exceed the control plane's bounds."""
    result: dict[str, str] = {}
    if not isinstance(tags, list):
        return result
    for tag in tags:
        if not isinstance(tag, str) or tag.lower().startswith(USER_AGENT_TAG_PREFIX):
            continue
        key, _, value = tag.partition(":")
        key, value = key.strip(), value.strip()
        if not key or len(key.encode()) > MAX_TAG_KEY_BYTES or key in result:
            continue
        if len(result) >= MAX_TAGS:
            break
        result[key] = _bounded(value, MAX_TAG_VALUE_BYTES)
    return result


# --- the parts of one event ---------------------------------------------------------------------------------


def _key_id(metadata: Mapping[str, Any], key_identity: KeyIdentity) -> str:
    key_hash = _text(metadata.get("user_api_key_hash"))
    if key_identity is KeyIdentity.HASH:
        return key_hash
    return _text(metadata.get("user_api_key_alias")) or key_hash


def _requested_model(params: Mapping[str, Any], metadata: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    """The alias the caller asked for: the proxy request's own `model`, not the fallback group that served."""
    body = _mapping(_mapping(params.get("proxy_server_request")).get("body"))
    return _text(body.get("model")) or _text(metadata.get("original_model_group")) or _text(payload.get("model_group"))


def _resolved_model(model: str, provider: str) -> str:
    """LiteLLM names a deployment `provider/model`; the provider has its own field."""
    prefix = f"{provider}/"
    return model[len(prefix) :] if provider and model.startswith(prefix) else model


def _set_times(event: usage_pb2.UsageEvent, payload: Mapping[str, Any]) -> None:
    start, end = _number(payload.get("startTime")), _number(payload.get("endTime"))
    first = _number(payload.get("completionStartTime"))
    if start is None:
        return
    event.event_time.FromNanoseconds(round(start * 1e9))
    if end is not None and end >= start:
        event.latency.FromNanoseconds(round((end - start) * 1e9))
    # Without streaming LiteLLM sets completionStartTime to the end: it is a time to first token only for streams.
    if event.streaming and first is not None and first >= start:
        event.ttft.FromNanoseconds(round((first - start) * 1e9))
    overhead_ms = _number(_mapping(payload.get("hidden_params")).get("litellm_overhead_time_ms"))
    if overhead_ms is not None and overhead_ms >= 0:
        event.gateway_latency.FromNanoseconds(round(overhead_ms * 1e6))


def _set_outcome(event: usage_pb2.UsageEvent, payload: Mapping[str, Any]) -> None:
    if payload.get("status") == "success":
        event.status_code = 200
        return
    error = _mapping(payload.get("error_information"))
    code = _text(error.get("error_code"))
    if code.isdigit() and 100 <= int(code) <= 599:
        event.status_code = int(code)
    normalized = _NORMALIZED_ERROR.match(_text(error.get("normalized_error")))
    if normalized:
        event.error_type = normalized["kind"].lower()
    else:
        event.error_type = _CAMEL_BOUNDARY.sub("_", _text(error.get("error_class"))).lower() or "error"
    event.error_type = _bounded(event.error_type, MAX_IDENTIFIER_BYTES)
    message = _text(error.get("error_message")) or _text(payload.get("error_str"))
    event.error_message = _bounded(message, MAX_ERROR_MESSAGE_BYTES)


def _set_tokens(event: usage_pb2.UsageEvent, payload: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
    """usage.proto's five disjoint kinds: LiteLLM's prompt tokens include cache reads and writes, its completion
    tokens include reasoning."""
    usage = _mapping(metadata.get("usage_object"))
    prompt, completion = _count(payload.get("prompt_tokens")), _count(payload.get("completion_tokens"))
    if prompt is None or completion is None:
        return
    if payload.get("status") != "success" and not usage and prompt == 0 and completion == 0:
        return  # a failed attempt that reported no usage: unknown, not zero
    prompt_details = _mapping(usage.get("prompt_tokens_details"))
    completion_details = _mapping(usage.get("completion_tokens_details"))
    cache_read = _first_count(prompt_details.get("cached_tokens"), usage.get("cache_read_input_tokens"))
    cache_write = _first_count(prompt_details.get("cache_creation_tokens"), usage.get("cache_creation_input_tokens"))
    reasoning = _first_count(completion_details.get("reasoning_tokens"))
    tokens = event.tokens
    tokens.input = max(0, prompt - cache_read - cache_write)
    tokens.output = max(0, completion - reasoning)
    tokens.cache_read = cache_read
    tokens.cache_write = cache_write
    tokens.reasoning = reasoning
    for details, names in ((prompt_details, _INPUT_CATEGORIES), (completion_details, _OUTPUT_CATEGORIES)):
        for litellm_name, category in names.items():
            count = _count(details.get(litellm_name))
            if count:
                tokens.categories[category] = count


# --- small readers of untrusted dicts -----------------------------------------------------------------------


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _first_count(*values: Any) -> int:
    for value in values:
        count = _count(value)
        if count is not None:
            return count
    return 0


def _bounded(text: str, max_bytes: int) -> str:
    encoded = text.encode()
    if len(encoded) <= max_bytes:
        return text
    return encoded[:max_bytes].decode(errors="ignore")
