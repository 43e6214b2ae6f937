"""Hub access: offline mode, a reachability check that cannot hang, and the cache lookup that
decides whether the full track can run without the network."""
import socket

from huggingface_hub import constants

from coursekit import hub
from tests.helpers import fake_hub_snapshot


def test_hub_check_honours_offline_flag_without_touching_the_network(monkeypatch):
    calls = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert hub.reachable() is False and hub.why_unreachable() == "HF_HUB_OFFLINE is set"
    assert calls == []


def test_hub_check_gives_up_within_its_timeout(monkeypatch):
    import time

    def hang(*args, **kwargs):
        time.sleep(3)
        raise OSError("timed out")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", hang)
    began = time.perf_counter()
    assert hub.reachable(timeout=0.5) is False
    assert time.perf_counter() - began < 2


def test_hub_check_reports_a_reachable_hub(monkeypatch):
    class Conn:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    assert hub.reachable() is True


def test_is_cached_looks_for_the_pinned_revision_in_the_hub_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hub, "pins", lambda: {"org/model": "a" * 40})
    assert not hub.is_cached("org/model")
    fake_hub_snapshot(tmp_path, "org/model", "b" * 40)
    assert not hub.is_cached("org/model"), "another revision is not the pinned one"
    fake_hub_snapshot(tmp_path, "org/model", "a" * 40, refs=False)
    assert hub.is_cached("org/model")
    assert not hub.is_cached("org/model", "dataset")
    monkeypatch.setattr(hub, "pins", lambda: {})
    assert hub.is_cached("org/model"), "unpinned: main, as refs/main names it"
