"""Model sources: hub names without a network."""

from __future__ import annotations

import pytest

from qpeft import models
from qpeft.errors import ConfigError


class _Loader:
    """A stand-in for a transformers Auto class that records its keywords."""

    def __init__(self, cached: bool) -> None:
        self.cached, self.calls = cached, []

    def from_pretrained(self, location: str, **kwargs):
        self.calls.append(kwargs)
        if kwargs.get("local_files_only") and not self.cached:
            raise OSError("not in the cache")
        return "model"


def test_an_unreachable_hub_loads_from_the_cache_at_once(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    source = models.ModelSource("hub", "org/name", "org/name")
    cached = _Loader(cached=True)
    assert models._load(cached, source, num_labels=3) == "model"
    assert cached.calls == [{"num_labels": 3, "local_files_only": True}]
    with pytest.raises(ConfigError, match="cannot be reached and 'org/name' is not in the local"):
        models._load(_Loader(cached=False), source)
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    online = _Loader(cached=False)
    assert models._load(online, source) == "model" and online.calls == [{}]


def test_the_probe_is_skipped_behind_a_proxy(monkeypatch) -> None:
    models.hub_reachable.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setattr(models.socket, "create_connection",
                        lambda *a, **k: pytest.fail("probed behind a proxy"))
    try:
        assert models.hub_reachable() is True
    finally:
        models.hub_reachable.cache_clear()
