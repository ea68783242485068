"""A proxy whose meterwire settings are wrong keeps serving, and says why meterwire is off, naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.litellm.proxy import proxy, require_litellm, write_config

pytestmark = pytest.mark.system


def test_a_proxy_without_meterwire_settings_serves_and_logs_that_meterwire_is_off(tmp_path: Path) -> None:
    require_litellm()
    with proxy(write_config(tmp_path), agent=None, env={"MW_ENVIRONMENT": "prod"}) as litellm_proxy:
        response = litellm_proxy.chat("gpt-4o", "still there?")
        assert response.status_code == 200, response.text
        log = litellm_proxy.log()
    assert "METERWIRE IS OFF" in log
    assert "MW_AGENT_TOKEN_FILE: set it to the file holding the gateway token" in log
