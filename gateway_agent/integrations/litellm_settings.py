"""The LiteLLM callback's settings: read from the proxy's environment, the same names `meterwire agent run` takes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway_agent.daemon import check_listen
from gateway_agent.integrations.litellm_usage import KeyIdentity
from gateway_agent.settings import AgentSettings, Durability, TlsSettings


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the environment variable and the fix."""


@dataclass(frozen=True)
class LiteLLMSettings:
    """What the callback embedded in a LiteLLM proxy needs. `from_env` reads them from MW_* variables."""

    agent: AgentSettings | None
    """The embedded agent's settings (control plane, gateway token, environment, data dir, TLS, durability);
    None when the callback talks to a `meterwire agent run` at `agent_address` instead."""
    agent_address: str = ""
    """MW_AGENT: a local agent daemon's --listen address (unix:///path.sock or 127.0.0.1:PORT); empty: embedded."""
    key_identity: KeyIdentity = KeyIdentity.ALIAS
    """Which name of a LiteLLM key is its api_key_id in usage, admission and disabled_api_key_ids."""
    admission: bool = True
    """Whether the pre-call hook asks the agent (disabled keys, budgets) before a request runs."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> LiteLLMSettings:
        key_text = environ.get("MW_LITELLM_KEY_ID", KeyIdentity.ALIAS.value)
        if key_text not in {k.value for k in KeyIdentity}:
            raise SettingsError("MW_LITELLM_KEY_ID: alias (the key's alias, else its hash) or hash")
        admission = environ.get("MW_LITELLM_ADMISSION", "on").strip().lower()
        if admission not in ("on", "off"):
            raise SettingsError("MW_LITELLM_ADMISSION: on (ask the agent before each request) or off")
        address = environ.get("MW_AGENT", "").strip()
        if address:
            try:
                check_listen(address)
            except ValueError as error:
                raise SettingsError(f"MW_AGENT: {error}") from None
            agent = None
        else:
            agent = _embedded_agent(environ)
        return cls(agent=agent, agent_address=address, key_identity=KeyIdentity(key_text), admission=admission == "on")


def _embedded_agent(environ: Mapping[str, str]) -> AgentSettings:
    """The embedded agent's settings, named as `meterwire agent run` names them."""

    def required(name: str, what: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise SettingsError(f"{name}: set it to {what}")
        return value

    token_file = Path(required("MW_AGENT_TOKEN_FILE", "the file holding the gateway token"))
    try:
        token = token_file.read_text().strip()
    except OSError as error:
        raise SettingsError(f"MW_AGENT_TOKEN_FILE: cannot read {token_file}: {error.strerror}") from None
    if not token:
        raise SettingsError(f"MW_AGENT_TOKEN_FILE: {token_file} is empty")
    tls_ca, tls_cert, tls_key = (environ.get(f"MW_AGENT_TLS_{part}", "").strip() for part in ("CA", "CERT", "KEY"))
    tls = None
    if tls_ca or tls_cert or tls_key:
        tls = TlsSettings(
            ca_file=Path(tls_ca) if tls_ca else None,
            cert_file=Path(tls_cert) if tls_cert else None,
            key_file=Path(tls_key) if tls_key else None,
        )
    durability_text = environ.get("MW_AGENT_DURABILITY", Durability.FSYNC.value)
    if durability_text not in {d.value for d in Durability}:
        raise SettingsError("MW_AGENT_DURABILITY: fsync (each group commit) or os_buffered")
    try:
        return AgentSettings(
            control_plane=required("MW_CONTROL_PLANE", "the control plane's host:port"),
            token=token,
            environment_id=required("MW_ENVIRONMENT", "the environment the gateway token is bound to"),
            data_dir=Path(required("MW_AGENT_DATA_DIR", "a directory of this proxy's own for the agent's spool")),
            gateway_id=environ.get("MW_GATEWAY", ""),
            gateway_version=environ.get("MW_GATEWAY_VERSION", ""),
            tls=tls,
            durability=Durability(durability_text),
        )
    except ValueError as error:
        raise SettingsError(str(error)) from None
