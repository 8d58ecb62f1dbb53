"""SecretValue never shows its plaintext: repr, str, formatting, logging, exceptions,
pickling (XCom, multiprocessing), JSON and Airflow's own serialisation."""

from __future__ import annotations

import copy
import json
import logging
import pickle

import pytest

from airflow_provider_mlsecrets.values import SecretValue

PLAIN = "sk-canary-7f3e91"


def test_it_renders_as_a_placeholder_everywhere(caplog: pytest.LogCaptureFixture) -> None:
    secret = SecretValue(PLAIN)
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", f"{secret:>40}",
             "%s" % secret, "{}".format(secret), str([secret]), str({"k": secret})]  # noqa: UP031, UP032
    assert all(PLAIN not in text for text in shown)
    assert shown[0] == "SecretValue(***)"
    with caplog.at_level(logging.INFO):
        logging.getLogger("test").info("value %s %r", secret, secret)
    assert PLAIN not in caplog.text
    try:
        raise ValueError(f"could not use {secret}")
    except ValueError as exc:
        assert PLAIN not in str(exc)


def test_it_gives_the_plaintext_only_by_name() -> None:
    secret = SecretValue(PLAIN)
    assert secret.reveal() == PLAIN
    assert secret.reveal_bytes() == PLAIN.encode()
    assert SecretValue(b"\x00\xff").reveal_bytes() == b"\x00\xff"
    assert bool(secret) and not bool(SecretValue(b""))
    with pytest.raises(TypeError):
        SecretValue(42)  # type: ignore[arg-type]


def test_it_is_never_pickled_serialised_or_hashed() -> None:
    secret = SecretValue(PLAIN)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="never pickled"):
            pickle.dumps(secret, protocol=protocol)
    with pytest.raises(TypeError):
        json.dumps({"value": secret})
    with pytest.raises(TypeError):
        hash(secret)
    assert copy.copy(secret) is secret and copy.deepcopy({"s": secret})["s"] is secret


def test_airflow_refuses_to_put_it_in_an_xcom() -> None:
    from airflow.sdk.serde import serialize

    with pytest.raises(TypeError):
        serialize({"value": SecretValue(PLAIN)})


def test_equality_is_by_value() -> None:
    assert SecretValue(PLAIN) == SecretValue(PLAIN.encode())
    assert SecretValue(PLAIN) != SecretValue(PLAIN + "x")
    assert SecretValue(PLAIN) != PLAIN  # never equal to a bare string: no accidental compare
