"""The ``http`` rotator against a real local key service that enforces which keys work."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from airflow_provider_mlsecrets.errors import InvalidInput
from airflow_provider_mlsecrets.rotation.interface import RotationContext, RotatorError
from airflow_provider_mlsecrets.rotation.registry import load_rotator
from airflow_provider_mlsecrets.rotation.rotators.http import HttpRotator

if TYPE_CHECKING:  # imported at run time by pytest_plugins, with assertion rewriting
    from tests.key_service import KeyService

pytest_plugins = ["tests.key_service"]  # the key_service fixtures


def no_secret(path: str) -> bytes:
    raise AssertionError(f"the rotator asked for secret {path!r} without admin_secret")


def context(current: bytes | None = b"initial",
            secret: Callable[[str], bytes] = no_secret) -> RotationContext:
    return RotationContext(path="svc/key", current=current, secret=secret)


def assert_clean(error: BaseException, service: KeyService, *extra: str) -> None:
    """No key the service ever held, nor any other value given, appears in the error, and
    no chained exception travels with it."""
    values = {"initial", str(service.admin_key), *service.issued_keys, *service.keys(), *extra}
    for text in (str(error), repr(error), repr(error.args)):
        for value in values:
            assert value not in text, f"{value!r} leaked into {text!r}"
    assert error.__cause__ is None
    assert error.__context__ is None


def raises_clean(service: KeyService, call: Callable[[], Any], *extra: str,
                 match: str | None = None) -> RotatorError:
    with pytest.raises(RotatorError, match=match) as info:
        call()
    assert_clean(info.value, service, *extra)
    return info.value


def get(service: KeyService, path: str, key: str | bytes) -> int:
    token = key.decode() if isinstance(key, bytes) else key
    response = httpx.get(service.url(path), headers={"Authorization": f"Bearer {token}"},
                         trust_env=False)
    return response.status_code


# --- the steps ------------------------------------------------------------------------
def test_registered_as_an_entry_point(key_service: KeyService) -> None:
    assert isinstance(load_rotator("http", key_service.rotator_config()), HttpRotator)


def test_create_issues_a_key_the_service_now_holds(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    key = rotator.create(context())
    assert isinstance(key, bytes) and key != b"initial"
    assert key_service.valid(key) and key_service.valid("initial")
    assert key_service.issued == 1
    assert key_service.seen[-1].who == "key"  # authenticated with the current key
    rotator.set(context(), key)  # nothing to do: the service issued it
    assert key_service.issued == 1


def test_test_accepts_a_working_key_and_refuses_a_bogus_one(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    key = rotator.create(context())
    rotator.test(context(), key)
    rotator.test(context(), key)  # any number of times
    error = raises_clean(key_service, lambda: rotator.test(context(), b"bogus-key"),
                         "bogus-key", match="401")
    assert "GET " + key_service.url("/whoami") in str(error)


@pytest.mark.parametrize("current_after", ["new", "previous"])
def test_full_rotation_revokes_the_old_key_idempotently(key_service: KeyService,
                                                        current_after: str) -> None:
    """Whichever value the engine passes as ``current`` at invalidation (the new key, or
    the one being revoked), the old key stops working and a repeat succeeds."""
    rotator = HttpRotator(key_service.rotator_config())
    new = rotator.create(context())
    rotator.set(context(), new)
    rotator.test(context(), new)
    assert get(key_service, "/data", "initial") == 200
    after = context(new if current_after == "new" else b"initial")

    rotator.invalidate(after, b"initial")
    assert not key_service.valid("initial")
    assert get(key_service, "/data", "initial") == 401
    assert get(key_service, "/data", new) == 200  # the pipeline can use the new key
    assert key_service.revoked == 1

    rotator.invalidate(after, b"initial")  # already gone: still done
    assert key_service.revoked == 1
    assert key_service.valid(new)
    if current_after == "previous":  # refused, then confirmed gone at the test URL
        assert [(s.path, s.who, s.status) for s in key_service.seen[-2:]] == [
            ("/keys/revoke", "invalid", 401), ("/whoami", "invalid", 401)]
    else:  # not found, then confirmed gone at the test URL
        assert [(s.path, s.who, s.status) for s in key_service.seen[-2:]] == [
            ("/keys/revoke", "key", 404), ("/whoami", "invalid", 401)]


def test_revoke_404_while_the_key_still_works_is_an_error(key_service: KeyService) -> None:
    """A wrong revoke_url also answers 404: that must not pass for "already revoked"."""
    rotator = HttpRotator(key_service.rotator_config(revoke_url=key_service.url("/nope")))
    new = rotator.create(context())
    raises_clean(key_service, lambda: rotator.invalidate(context(new), b"initial"),
                 match="answered 404 but the previous key still works")
    assert key_service.valid("initial")


def test_environment_proxies_are_ignored_for_loopback(key_service: KeyService,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would see a plain-http key in clear; for loopback it must not be used."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    rotator = HttpRotator(key_service.rotator_config())
    rotator.test(context(), rotator.create(context()))


def test_invalidate_of_a_pending_key_never_finished(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    pending = rotator.create(context())
    rotator.invalidate(context(), pending)  # an abandoned rotation revokes its pending key
    assert not key_service.valid(pending) and key_service.valid("initial")


def test_issue_with_an_invalid_current_key_fails(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    raises_clean(key_service, lambda: rotator.create(context(b"stale-key")), "stale-key",
                 match="issue: POST .* answered 401")
    assert key_service.issued == 0


def test_revoke_refused_for_an_invalid_key_fails(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    raises_clean(key_service, lambda: rotator.invalidate(context(b"stale-key"), b"initial"),
                 "stale-key", match="revoke: POST .* answered 401")
    assert key_service.valid("initial")


def test_no_current_value_and_no_admin_secret(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    raises_clean(key_service, lambda: rotator.create(context(None)), match="admin_secret")


@pytest.mark.parametrize("bad", [b"line\r\nX-Injected: 1", b"\xff\xfe", b"", b" padded"])
def test_current_value_unusable_as_a_bearer_token(key_service: KeyService, bad: bytes) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    shown = bad.decode(errors="replace").strip()
    raises_clean(key_service, lambda: rotator.create(context(bad)), *([shown] if shown else []),
                 match="bearer token")
    assert key_service.seen == []  # nothing was sent


# --- failures -------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "step"), [("/keys", "create"), ("/whoami", "test"),
                                            ("/keys/revoke", "invalidate")])
def test_server_errors_fail_without_leaking(key_service: KeyService, path: str,
                                            step: str) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    pending = rotator.create(context()) if step != "create" else b""
    calls: dict[str, Callable[[], Any]] = {
        "create": lambda: rotator.create(context()),
        "test": lambda: rotator.test(context(), pending),
        "invalidate": lambda: rotator.invalidate(context(pending), b"initial"),
    }
    key_service.fail_next(path)  # the 500 body echoes the key it was sent
    raises_clean(key_service, calls[step], match="answered 500")
    calls[step]()  # the next attempt succeeds: the step can simply be retried


@pytest.mark.parametrize(("path", "step"), [("/keys", "create"), ("/whoami", "test"),
                                            ("/keys/revoke", "invalidate")])
def test_redirects_are_errors_not_followed(key_service: KeyService, path: str,
                                           step: str) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    pending = rotator.create(context()) if step != "create" else b""
    calls: dict[str, Callable[[], Any]] = {
        "create": lambda: rotator.create(context()),
        "test": lambda: rotator.test(context(), pending),
        "invalidate": lambda: rotator.invalidate(context(pending), b"initial"),
    }
    before = len(key_service.seen)
    key_service.redirect_next(path)
    raises_clean(key_service, calls[step], match="answered 307 .*redirect")
    assert len(key_service.seen) == before + 1  # the redirect target was never requested
    assert key_service.valid("initial")


def test_connection_failure(key_service: KeyService) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rotator = HttpRotator(key_service.rotator_config(test_url=f"http://127.0.0.1:{port}/x"))
    raises_clean(key_service, lambda: rotator.test(context(), b"some-key"), "some-key",
                 match=r"test: GET http://127\.0\.0\.1:\d+/x failed \(ConnectError\)")


def test_a_service_that_never_answers_times_out_once(key_service: KeyService) -> None:
    """A listener that accepts and stays silent: the call ends at ``timeout``, with a
    message that says so (the dripping service is in tests/attacks)."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        rotator = HttpRotator(key_service.rotator_config(
            test_url=f"http://127.0.0.1:{port}/whoami", timeout=1))
        began = time.monotonic()
        raises_clean(key_service, lambda: rotator.test(context(), b"some-key"), "some-key",
                     match=r"test: GET http://127\.0\.0\.1:\d+/whoami did not finish "
                           r"within 1 s \(the 'timeout' setting bounds the whole call")
        assert time.monotonic() - began < 3


def test_the_deadline_leaves_nothing_running(key_service: KeyService) -> None:
    """Each call's timer ends with the call: many quick calls leave no thread behind."""
    def timers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if isinstance(t, threading.Timer)]

    rotator = HttpRotator(key_service.rotator_config(timeout=1))
    for _ in range(20):
        rotator.test(context(), b"initial")
    stop = time.monotonic() + 0.9  # before the first deadline would have fired
    while timers() and time.monotonic() < stop:
        time.sleep(0.01)
    assert timers() == []
    time.sleep(0.5)  # past every deadline: nothing fires on a finished call
    rotator.test(context(), b"initial")


def test_error_messages_omit_the_query_string(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config(
        test_url=key_service.url("/whoami?tenant=hidden-value")))
    error = raises_clean(key_service, lambda: rotator.test(context(), b"bogus"), "bogus",
                         "hidden-value")
    assert key_service.url("/whoami") in str(error)


@pytest.mark.parametrize("answer", [None, "", 42, ["k"], "tab\there", "new\nline", " pad",
                                    "é-non-ascii", "x" * 4097, "y" * 70_000])
def test_issued_key_is_validated(key_service: KeyService, answer: Any) -> None:
    rotator = HttpRotator(key_service.rotator_config())
    key_service.answer_next_issue(answer)
    extra = [answer] if isinstance(answer, str) and answer else []
    raises_clean(key_service, lambda: rotator.create(context()), *extra,
                 match="usable key|larger than")


def test_longest_acceptable_key(key_service: KeyService) -> None:
    key_service.answer_next_issue("z" * 4096)
    assert HttpRotator(key_service.rotator_config()).create(context()) == b"z" * 4096


def test_issue_response_without_the_key_field(
        key_service_factory: Callable[..., KeyService]) -> None:
    service = key_service_factory("initial", key_field="token")
    raises_clean(service, lambda: HttpRotator(service.rotator_config()).create(context()),
                 match="field 'key'")


def test_custom_field_names(key_service_factory: Callable[..., KeyService]) -> None:
    service = key_service_factory("initial", key_field="token", revoke_field="api_key")
    rotator = HttpRotator(service.rotator_config(key_field="token", revoke_field="api_key"))
    new = rotator.create(context())
    rotator.test(context(), new)
    rotator.invalidate(context(new), b"initial")
    assert service.valid(new) and not service.valid("initial")


# --- admin_secret ---------------------------------------------------------------------
def test_admin_secret_authenticates_issue_and_revoke(key_service: KeyService) -> None:
    asked: list[str] = []

    def secret(path: str) -> bytes:
        asked.append(path)
        return str(key_service.admin_key).encode()

    rotator = HttpRotator(key_service.rotator_config(admin_secret="svc/admin"))
    # The current key is not even valid: only the admin key can have authorised the issue.
    new = rotator.create(context(b"stale-key", secret))
    assert key_service.valid(new)
    rotator.test(context(b"stale-key", secret), new)
    rotator.invalidate(context(None, secret), b"initial")
    rotator.invalidate(context(None, secret), b"initial")
    assert not key_service.valid("initial")
    assert asked == ["svc/admin"] * 3
    assert [(s.path, s.who) for s in key_service.seen] == [
        ("/keys", "admin"), ("/whoami", "key"), ("/keys/revoke", "admin"),
        ("/keys/revoke", "admin"), ("/whoami", "invalid")]  # 404, confirmed gone


def test_wrong_admin_key_fails(key_service: KeyService) -> None:
    rotator = HttpRotator(key_service.rotator_config(admin_secret="svc/admin"))
    raises_clean(key_service,
                 lambda: rotator.create(context(secret=lambda _path: b"not-the-admin")),
                 "not-the-admin", match="answered 401")


# --- configuration --------------------------------------------------------------------
BASE = {"issue_url": "https://keys.example/issue", "test_url": "https://keys.example/me",
        "revoke_url": "https://keys.example/revoke"}


def config(**changes: Any) -> dict[str, Any]:
    merged = {**BASE, **changes}
    return {key: value for key, value in merged.items() if value is not None}


def invalid(changes: dict[str, Any]) -> str:
    with pytest.raises(InvalidInput) as info:
        HttpRotator(config(**changes))
    return str(info.value)


@pytest.mark.parametrize("key", ["issue_url", "test_url", "revoke_url"])
def test_each_url_is_required(key: str) -> None:
    assert repr(key) in invalid({key: None})
    assert repr(key) in invalid({key: ""})
    assert repr(key) in invalid({key: 42})


@pytest.mark.parametrize("url", ["http://keys.example/issue", "http://10.0.0.1/issue",
                                 "http://127.0.0.1.evil.example/issue",
                                 "http://localhost@evil.example/issue"])
def test_plain_http_only_to_loopback(url: str) -> None:
    message = invalid({"issue_url": url})
    assert "'issue_url'" in message and "https://" in message


def test_plain_http_message_explains_why() -> None:
    message = invalid({"test_url": "http://keys.example/me"})
    assert "unencrypted" in message and "loopback" in message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/k", "http://[::1]/k",
                                 "http://localhost/k", "HTTP://LOCALHOST/k",
                                 "https://10.0.0.1:8443/k"])
def test_accepted_urls(url: str) -> None:
    HttpRotator(config(revoke_url=url))


@pytest.mark.parametrize("url", ["ftp://keys.example/k", "keys.example/k", "/keys",
                                 "https:///keys", "https://user:pw@keys.example/k"])
def test_other_urls_rejected(url: str) -> None:
    message = invalid({"revoke_url": url})
    assert "'revoke_url'" in message and "pw" not in message


@pytest.mark.parametrize("timeout", [0, 121, -1, "10", 1.5, True])
def test_bad_timeout(timeout: Any) -> None:
    assert "'timeout'" in invalid({"timeout": timeout})


def test_good_settings() -> None:
    rotator = HttpRotator(config(timeout=120, admin_secret="svc/admin", key_field="token"))
    assert (rotator.timeout, rotator.admin_secret, rotator.key_field, rotator.revoke_field) \
        == (120, "svc/admin", "token", "key")
    assert HttpRotator(config()).timeout == 10


@pytest.mark.parametrize("key", ["admin_secret", "key_field", "revoke_field"])
def test_bad_names(key: str) -> None:
    bad: Iterable[Any] = ("", 7)
    for value in bad:
        assert repr(key) in invalid({key: value})
