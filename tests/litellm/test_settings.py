"""The callback's settings from the proxy's environment: embedded or local daemon, and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway_agent.integrations.litellm_settings import LiteLLMSettings, SettingsError
from gateway_agent.integrations.litellm_usage import KeyIdentity
from gateway_agent.settings import Durability


def embedded(tmp_path: Path, **overrides: str) -> dict[str, str]:
    token_file = tmp_path / "gateway.token"
    token_file.write_text("secret-token\n")
    return {
        "MW_CONTROL_PLANE": "cp.internal:50051",
        "MW_AGENT_TOKEN_FILE": str(token_file),
        "MW_ENVIRONMENT": "prod",
        "MW_GATEWAY": "litellm-eu-1",
        "MW_AGENT_DATA_DIR": str(tmp_path / "agent"),
        **overrides,
    }


def test_embedded_settings_come_from_the_agents_own_variable_names(tmp_path: Path) -> None:
    settings = LiteLLMSettings.from_env(embedded(tmp_path, MW_AGENT_DURABILITY="os_buffered", MW_LITELLM_KEY_ID="hash"))
    assert settings.agent is not None
    assert (settings.agent.control_plane, settings.agent.token, settings.agent.environment_id) == (
        "cp.internal:50051",
        "secret-token",
        "prod",
    )
    assert (settings.agent.gateway_id, settings.agent.data_dir) == ("litellm-eu-1", tmp_path / "agent")
    assert settings.agent.durability is Durability.OS_BUFFERED
    assert (settings.key_identity, settings.admission, settings.agent_address) == (KeyIdentity.HASH, True, "")


def test_a_local_agent_address_needs_nothing_else() -> None:
    settings = LiteLLMSettings.from_env({"MW_AGENT": "unix:///run/meterwire/agent.sock", "MW_LITELLM_ADMISSION": "off"})
    assert (settings.agent, settings.agent_address, settings.admission) == (
        None,
        "unix:///run/meterwire/agent.sock",
        False,
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"MW_CONTROL_PLANE": ""}, "MW_CONTROL_PLANE"),
        ({"MW_ENVIRONMENT": " "}, "MW_ENVIRONMENT"),
        ({"MW_AGENT_DATA_DIR": ""}, "MW_AGENT_DATA_DIR"),
        ({"MW_AGENT_TOKEN_FILE": "/nonexistent/token"}, "MW_AGENT_TOKEN_FILE"),
        ({"MW_AGENT_DURABILITY": "sometimes"}, "MW_AGENT_DURABILITY"),
        ({"MW_LITELLM_KEY_ID": "secret"}, "MW_LITELLM_KEY_ID"),
        ({"MW_LITELLM_ADMISSION": "maybe"}, "MW_LITELLM_ADMISSION"),
        ({"MW_AGENT": "10.0.0.5:7000"}, "MW_AGENT"),
    ],
)
def test_a_bad_setting_is_refused_naming_its_variable(tmp_path: Path, overrides: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        LiteLLMSettings.from_env(embedded(tmp_path, **overrides))


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    environ = embedded(tmp_path)
    Path(environ["MW_AGENT_TOKEN_FILE"]).write_text("\n")
    with pytest.raises(SettingsError, match=r"MW_AGENT_TOKEN_FILE: .* is empty"):
        LiteLLMSettings.from_env(environ)
