"""Tests for serve/options.py: settings are checked once, the API key comes from flag or env."""

from __future__ import annotations

import pytest

from domaintune.errors import UserError
from domaintune.serve.options import API_KEY_ENV, ServeOptions, resolve_api_key


@pytest.mark.parametrize("kwargs, name", [
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"max_queue": 0}, "max_queue"),
    ({"batch_window_ms": -1}, "batch_window_ms"),
    ({"default_max_tokens": 100, "max_tokens_limit": 50}, "default_max_tokens"),
    ({"cache_size": -1}, "cache_size"),
])
def test_out_of_range_settings_name_the_setting(kwargs, name):
    with pytest.raises(UserError, match=name):
        ServeOptions(**kwargs)


def test_empty_api_key_is_refused():
    with pytest.raises(UserError, match="API key"):
        ServeOptions(api_key="  ")


def test_api_key_flag_wins_over_env(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert resolve_api_key("flag") == "flag"
    assert resolve_api_key(None) == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    assert resolve_api_key(None) is None
