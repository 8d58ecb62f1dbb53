"""Coverage-guided fuzzing (atheris, libFuzzer) of every parser that reads outside input:
references and env mappings of the injection operator, vault paths and grant patterns,
durations and moments, checkpoints, rotator configurations, sealed tokens, canonical
decoding and backup headers. Each must return or raise the package's own error; anything
else (an IndexError, a RecursionError, a crash) is a finding, and libFuzzer stops with the
input that caused it.

Run for a bounded time: ``.venv/bin/python fuzz/parsers.py -max_total_time=60``
(``tests/test_fuzz.py`` runs it for a few seconds in CI).
"""

from __future__ import annotations

import json
import sys

import atheris

with atheris.instrument_imports():
    from airflow_provider_mlsecrets import canonical
    from airflow_provider_mlsecrets.audit.checkpoint import Checkpoint
    from airflow_provider_mlsecrets.crypto.sealed import from_token
    from airflow_provider_mlsecrets.durations import parse_duration, parse_moment
    from airflow_provider_mlsecrets.errors import MLSecretsError
    from airflow_provider_mlsecrets.injection.references import parse_env, parse_reference
    from airflow_provider_mlsecrets.paths import matches, parse_path, parse_pattern
    from airflow_provider_mlsecrets.policy.roles import parse_capabilities
    from airflow_provider_mlsecrets.rotation.policy import parse_config


def one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    choice = fdp.ConsumeIntInRange(0, 9)
    text = fdp.ConsumeUnicodeNoSurrogates(fdp.remaining_bytes())
    try:
        if choice == 0:
            parse_reference(text)
        elif choice == 1:
            try:
                mapping = json.loads(text)
            except (ValueError, RecursionError):
                return
            parse_env(mapping)
        elif choice == 2:
            parse_path(text)
        elif choice == 3:
            pattern, _, path = text.partition("\n")
            matches(parse_pattern(pattern), parse_path(path))
        elif choice == 4:
            parse_duration(text)
            parse_moment(text, future=True)
        elif choice == 5:
            Checkpoint.from_json(text)
        elif choice == 6:
            parse_config(text, "fuzz")
        elif choice == 7:
            from_token(text)
        elif choice == 8:
            canonical.decode(text.encode("utf-8", "surrogatepass"))
        else:
            parse_capabilities(text.split(","))
    except MLSecretsError:
        pass
    except ValueError:
        if choice != 8:  # canonical.decode documents ValueError; the rest must not leak it
            raise


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
