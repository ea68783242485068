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
import statistics
import tempfile
import time
from pathlib import Path

from tests.gateway_agent.harness import ENVIRONMENT, GATEWAY, create_gateway_token
from tests.litellm.proxy import AgentEnv, ProxyProcess, write_config
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
            for index in range(warmup + requests):
                # Rotate which proxy goes first, so none always follows another's work.
                shift = index % len(VARIANTS)
                for name in VARIANTS[shift:] + VARIANTS[:shift]:
                    proxy = proxies[name]
                    elapsed = timed_request(proxy, stream, index)
                    if index >= warmup:
                        samples[name].append(elapsed)
            last_response = time.monotonic()
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
            f"   mean {statistics.fmean(values):7.2f} ms"
        )
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        with_it, noop, bare = (percentile(samples[name], fraction) for name in ("meterwire", "noop", "without"))
        print(
            f"  overhead {label}: {with_it - bare:+.2f} ms against no callback"
            f" ({noop - bare:+.2f} ms LiteLLM's own for any callback, {with_it - noop:+.2f} ms meterwire's)"
        )
    print(f"  all {expected} usage events in the control plane {delivered_after:.2f} s after the last response")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="Measured requests per proxy.")
    parser.add_argument("--warmup", type=int, default=50, help="Requests per proxy before measuring.")
    parser.add_argument("--stream", action="store_true", help="Streamed chat completions.")
    args = parser.parse_args()
    run(args.requests, args.warmup, args.stream)


if __name__ == "__main__":
    main()
