"""What the meterwire callback adds to each request of a LiteLLM proxy: per-request latency p50 and p99 of the same
proxy (same config, same mock model) with the callback and without it, measured in one run with the requests
interleaved, so all see the same machine load. A third proxy runs a callback that does nothing in the same hooks:
LiteLLM builds its logging payload and runs its hooks only when a callback asks, so that part is LiteLLM's own
cost of any callback, and the rest is meterwire's.

Everything is real: `meterwire serve` (SQLite), two `litellm` proxies from .venv-litellm (`make litellm-venv`), one
with the embedded agent (fsync'd spool); the client is httpx over loopback. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway_agent import CheckRequest, GatewayAgent, UsageEstimate
from gateway_agent.integrations.litellm_usage import KeyIdentity, usage_event
from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY, agent_settings, create_gateway_token
from tests.litellm.proxy import LITELLM_VENV, AgentEnv, ProxyProcess, write_config
from tests.litellm.reports import Reports
from tests.system.serve import serve

NOOP_CALLBACK = """
from litellm.integrations.custom_logger import CustomLogger


class Noop(CustomLogger):
    async def async_pre_call_hook(self, user_api_key_dict, cache, data, call_type):
        return data

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        return None

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        return None


noop = Noop()
"""
VARIANTS = ("without", "noop", "meterwire")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def timed_request(proxy: ProxyProcess, stream: bool, index: int) -> float:
    started = time.perf_counter()
    if stream:
        response, _lines = proxy.stream_chat("gpt-4o", f"benchmark {index}")
    else:
        response = proxy.chat("gpt-4o", f"benchmark {index}", max_tokens=64)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"request failed: {response.status_code} {response.text}")
    return elapsed * 1000


def run(requests: int, warmup: int, stream: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="mw-litellm-bench-") as tmp, serve(Path(tmp) / "cp") as cp:
        token_file = Path(tmp) / "gateway.token"
        token_file.write_text(create_gateway_token(cp))
        token_file.chmod(0o600)
        asyncio.run(hook_costs(cp.address, token_file.read_text(), Path(tmp) / "hooks-agent", 2_000))
        tokenizer_cost()
        agent = AgentEnv(cp.address, token_file, ENVIRONMENT, GATEWAY, Path(tmp) / "agent")
        (Path(tmp) / "noop").mkdir()
        (Path(tmp) / "noop" / "noop_callback.py").write_text(NOOP_CALLBACK)  # LiteLLM loads it beside the config
        proxies = {
            "without": ProxyProcess(write_config(Path(tmp) / "without", callback=None), agent=None),
            "noop": ProxyProcess(write_config(Path(tmp) / "noop", callback="noop_callback.noop"), agent=None),
            "meterwire": ProxyProcess(write_config(Path(tmp) / "meterwire"), agent=agent),
        }
        try:
            samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
            cpu_before: dict[str, float] = {}
            for index in range(warmup + requests):
                if index == warmup:
                    cpu_before = {name: cpu_seconds(proxy.process.pid) for name, proxy in proxies.items()}
                # Rotate which proxy goes first, so none always follows another's work.
                shift = index % len(VARIANTS)
                for name in VARIANTS[shift:] + VARIANTS[:shift]:
                    proxy = proxies[name]
                    elapsed = timed_request(proxy, stream, index)
                    if index >= warmup:
                        samples[name].append(elapsed)
            last_response = time.monotonic()
            cpu_ms = {
                name: (cpu_seconds(proxy.process.pid) - cpu_before[name]) * 1000 / requests
                for name, proxy in proxies.items()
            }
            reports = Reports(cp.address, cp.admin_token_file.read_text().strip(), ENVIRONMENT)
            expected = warmup + requests
            while sum(reports.event_ids().values()) < expected:
                time.sleep(0.05)
            delivered_after = time.monotonic() - last_response
            reports.close()
        finally:
            for proxy in proxies.values():
                proxy.kill()

    kind = "streamed" if stream else "non-streamed"
    print(f"{requests} {kind} chat completions per proxy (after {warmup} warm-up), interleaved, one at a time")
    labels = {"without": "no callback", "noop": "no-op callback", "meterwire": "meterwire callback"}
    for name in VARIANTS:
        values = samples[name]
        print(
            f"  {labels[name]:19s} p50 {percentile(values, 0.5):7.2f} ms   p99 {percentile(values, 0.99):7.2f} ms"
            f"   mean {statistics.fmean(values):7.2f} ms   proxy CPU {cpu_ms[name]:5.2f} ms/request"
        )
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        with_it, noop, bare = (percentile(samples[name], fraction) for name in ("meterwire", "noop", "without"))
        print(
            f"  overhead {label}: {with_it - bare:+.2f} ms against no callback"
            f" ({noop - bare:+.2f} ms LiteLLM's own for any callback, {with_it - noop:+.2f} ms meterwire's)"
        )
    print(f"  all {expected} usage events in the control plane {delivered_after:.2f} s after the last response")


def callback_payload(index: int) -> dict[str, Any]:
    """A success callback's kwargs as LiteLLM 1.108.7 hands them over (the fields the mapping reads)."""
    call_id = f"46debc3c-0557-4ea6-87ec-{index:012d}"
    return {
        "litellm_call_id": call_id,
        "litellm_params": {
            "metadata": {"attempted_fallbacks": 0, "attempted_retries": 0, "meterwire_reservation_id": ""},
            "proxy_server_request": {"body": {"model": "gpt-4o"}},
        },
        "standard_logging_object": {
            "litellm_call_id": call_id,
            "call_type": "acompletion",
            "stream": True,
            "status": "success",
            "custom_llm_provider": "openai",
            "startTime": 1796316652.392968,
            "endTime": 1796316652.748996,
            "completionStartTime": 1796316652.504336,
            "model": "openai/gpt-4o",
            "model_group": "gpt-4o",
            "response_cost": 6.25e-05,
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "request_tags": ["team:search", "feature-x", "User-Agent: curl"],
            "end_user": "end-user-7",
            "metadata": {
                "user_api_key_hash": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
                "user_api_key_alias": "search-team",
                "user_api_key_request_route": "/v1/chat/completions",
                "usage_object": {
                    "prompt_tokens_details": {"cached_tokens": 1000, "cache_creation_tokens": 100},
                    "completion_tokens_details": {"reasoning_tokens": 200},
                },
            },
            "hidden_params": {"litellm_overhead_time_ms": 1.5},
        },
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all its threads included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def per_call_us(samples_ns: list[int]) -> str:
    ordered = sorted(samples_ns)
    return f"p50 {ordered[len(ordered) // 2] / 1000:6.1f} µs   p99 {ordered[int(len(ordered) * 0.99)] / 1000:6.1f} µs"


async def hook_costs(address: str, token: str, data_dir: Path, calls: int) -> None:
    """meterwire's own work per request, in-process: the mapping, the check with an estimate, the record."""
    mapping, checks, records = [], [], []
    async with GatewayAgent(agent_settings(address, token, data_dir)) as agent:
        question = CheckRequest(
            api_key_id="search-team",
            user_id="end-user-7",
            requested_model="gpt-4o",
            route="/v1/chat/completions",
            tags={"team": "search"},
            estimate=UsageEstimate(input_tokens=1200, max_output_tokens=300),
        )
        for index in range(calls):
            payload = callback_payload(index)
            started = time.perf_counter_ns()
            event = usage_event(payload, key_identity=KeyIdentity.ALIAS)
            mapped = time.perf_counter_ns()
            agent.check(question)
            checked = time.perf_counter_ns()
            assert event is not None
            await agent.record(event)
            recorded = time.perf_counter_ns()
            mapping.append(mapped - started)
            checks.append(checked - mapped)
            records.append(recorded - checked)
    print(f"meterwire's own work per request, in-process ({calls} calls):")
    print(f"  payload -> UsageEvent  {per_call_us(mapping)}")
    print(f"  check() with estimate  {per_call_us(checks)}")
    print(f"  record()               {per_call_us(records)}")


TOKENIZER_SCRIPT = """
import asyncio, time, litellm
from gateway_agent.integrations.litellm import PromptCounter

def timed(count):
    samples = []
    for index in range(2000):
        data = {"messages": [{"role": "user", "content": f"Summarize the quarterly report {index} in three bullets."}]}
        started = time.thread_time_ns(); count(data); samples.append(time.thread_time_ns() - started)
    samples.sort()
    return samples[1000] / 1000, sum(samples) / len(samples) / 1000

async def main():  # inside a running loop, as in the proxy
    counter = PromptCounter()
    print(*timed(lambda data: counter.count(data, "gpt-4o")),
          *timed(lambda data: litellm.token_counter(model="gpt-4o", messages=data["messages"])))

asyncio.run(main())
"""


def tokenizer_cost() -> None:
    """Counting a prompt's tokens in the proxy's virtualenv, inside a running event loop as the hook does: the
    hook's PromptCounter against litellm.token_counter."""
    result = subprocess.run(
        [str(LITELLM_VENV / "bin" / "python"), "-c", TOKENIZER_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
    )
    ours_p50, ours_mean, theirs_p50, theirs_mean = (float(value) for value in result.stdout.split()[-4:])
    print(f"  prompt token count     p50 {ours_p50:6.1f} µs   mean {ours_mean:6.1f} µs   (CPU, in a running loop)")
    print(f"  (litellm.token_counter p50 {theirs_p50:6.1f} µs   mean {theirs_mean:6.1f} µs   the same way)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="Measured requests per proxy.")
    parser.add_argument("--warmup", type=int, default=50, help="Requests per proxy before measuring.")
    parser.add_argument("--stream", action="store_true", help="Streamed chat completions.")
    args = parser.parse_args()
    run(args.requests, args.warmup, args.stream)


if __name__ == "__main__":
    main()
