"""The private PKCS#11 session layer: one logged-in session per token per process.

Why each rule here exists:

* One process-wide lock around every PKCS#11 call. python-pkcs11 initialises the module
  without locking callbacks, and SoftHSM2 corrupts memory when two threads call in at once.
* One shared session per (module, token) per process. A login holds for the whole token in a
  process and closing the logged-in session logs every session out, so instances share the
  session and never close it behind each other's back.
* Per process id. After a fork the child finalises and initialises the library again before
  first use (the Airflow task supervisor forks; SoftHSM2 with ``reset_on_fork`` and network
  HSMs invalidate the parent's handles).
* Initialise-and-login is serialised across processes with a file lock and retried once
  after finalise/initialise: SoftHSM2 rewrites the token file at every login, so processes
  logging in at the same moment can read a torn token (SoftHSMv2 issue #757).
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, Mechanism
from pkcs11 import exceptions as p11e
from pkcs11.attributes import AttributeMapper

from airflow_provider_mlsecrets.errors import HSMUnavailable

T = TypeVar("T")

PROCESS_LOCK = threading.RLock()


def _reset_lock_in_child() -> None:
    # A lock another thread held at fork time stays held forever in the child: start afresh.
    global PROCESS_LOCK
    PROCESS_LOCK = threading.RLock()


os.register_at_fork(after_in_child=_reset_lock_in_child)

# Errors a torn SoftHSM2 token file shows at login (SoftHSMv2 issue #757).
TORN_TOKEN: tuple[type[Exception], ...] = (
    p11e.GeneralError, p11e.NoSuchToken, p11e.UserPinNotInitialized, p11e.TokenNotRecognised,
    p11e.TokenNotPresent)
LOGIN_ATTEMPTS = 4


@dataclass(frozen=True)
class TokenAddress:
    """Which token to log in to, and how."""

    module: str
    label: str
    read_pin: Callable[[], str]
    lock_file: Path


class _Shared:
    """The logged-in session this process holds for one token."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.session: Any = None
        self.objects: dict[str, Any] = {}


_SHARED: dict[tuple[str, str], _Shared] = {}
# Modules to finalise and initialise again before the next login (after a fork or a lost
# session). Done inside the login's file lock: C_Initialize reads the token files too.
_STALE: set[str] = set()


def run(address: TokenAddress, operation: Callable[[Any], T], *, retry: bool = True) -> T:
    """Run ``operation(session)`` under the process lock, logging in first if needed.

    If the token fails (session gone, library finalised or reset, device removed, token
    re-inserted), the session is dropped, the library initialised again and ``operation``
    retried once on a fresh login when ``retry`` allows it. If that fails too, the session
    is dropped again and :class:`HSMUnavailable` raised: the caller fails closed, and the
    next call starts afresh, so the vault recovers when the HSM does, without a restart.
    """
    with PROCESS_LOCK:
        try:
            return operation(_current(address).session)
        except p11e.PKCS11Error:
            _drop(address)
            if not retry:
                raise
        try:
            return operation(_current(address).session)
        except p11e.PKCS11Error as exc:
            _drop(address)
            raise HSMUnavailable(
                f"the HSM failed on token {address.label!r} ({type(exc).__name__}) and again "
                "after a fresh login; check that it is reachable and the token present "
                "(nothing was done)") from None


def cached_object(address: TokenAddress, label: str, find: Callable[[Any], Any]) -> Any:
    """An object handle, looked up once per session; call under :func:`run`."""
    shared = _current(address)
    if label not in shared.objects:
        shared.objects[label] = find(shared.session)
    return shared.objects[label]


def _current(address: TokenAddress) -> _Shared:
    key = (address.module, address.label)
    shared = _SHARED.get(key)
    if shared is not None and shared.pid != os.getpid():
        # Forked: the parent's handles mean nothing here. Start the library afresh.
        _STALE.update(k[0] for k in _SHARED)
        _SHARED.clear()
        shared = None
    if shared is None or shared.session is None:
        shared = _Shared()
        shared.session = _login(address)
        _SHARED[key] = shared
    return shared


def _drop(address: TokenAddress) -> None:
    for key in [k for k in _SHARED if k[0] == address.module]:
        del _SHARED[key]
    _STALE.add(address.module)


def _load(module: str) -> Any:
    if not os.path.isfile(module):
        raise HSMUnavailable(
            f"the PKCS#11 module {module} does not exist; install it (for SoftHSM2: "
            "'apt-get install softhsm2') or fix MLSECRETS_PKCS11_MODULE"
        )
    try:
        return pkcs11.lib(module)
    except p11e.PKCS11Error as exc:
        raise HSMUnavailable(
            f"cannot load the PKCS#11 module {module} ({type(exc).__name__}); "
            "check MLSECRETS_PKCS11_MODULE and, for SoftHSM2, SOFTHSM2_CONF"
        ) from None


def reinitialise(module: str) -> None:
    """Finalise and initialise ``module``: every session this process held on any of its
    tokens is gone after this, so they are all forgotten and log in again on next use."""
    for key in [k for k in _SHARED if k[0] == module]:
        del _SHARED[key]
    # python-pkcs11 closes finished searches in finalizers: run them while their sessions
    # still exist, not later against handles the finalise below makes invalid
    gc.collect()
    lib = _load(module)
    with contextlib.suppress(p11e.PKCS11Error):
        lib.finalize()  # fails in a reset_on_fork child: initialising is what matters
    lib.initialize()
    _STALE.discard(module)


def _login(address: TokenAddress) -> Any:
    """Initialise (if needed) and log in, serialised across processes by the file lock.

    Reading the token while another process rewrites it (SoftHSM2 does at every login)
    shows up as any of :data:`TORN_TOKEN`; the library is then finalised, initialised and
    asked again, a few times, after a short pause."""
    pin = address.read_pin()
    with _file_lock(address.lock_file):
        if address.module in _STALE:
            reinitialise(address.module)
        for attempt in range(LOGIN_ATTEMPTS):
            try:
                return _open(address, pin)
            except TORN_TOKEN as exc:
                last: Exception = exc
                reinitialise(address.module)
                time.sleep(0.05 * (attempt + 1))
    if isinstance(last, p11e.NoSuchToken):
        raise describe_missing_token(address) from None
    raise HSMUnavailable(
        f"token {address.label!r} could not be read at login ({type(last).__name__}, "
        f"{LOGIN_ATTEMPTS} tries); check that the token store is readable and not being "
        "rewritten by another tool") from None


def _open(address: TokenAddress, pin: str) -> Any:
    lib = _load(address.module)
    try:
        token = lib.get_token(token_label=address.label)
    except p11e.MultipleTokensReturned:
        raise HSMUnavailable(
            f"more than one token is labelled {address.label!r}; give each token a unique label"
        ) from None
    try:
        return token.open(user_pin=pin, rw=True, attribute_mapper=_mapper())
    except p11e.UserAlreadyLoggedIn:
        # Another session of this process logged in to the token; share that login.
        return token.open(rw=True, attribute_mapper=_mapper())
    except (p11e.PinIncorrect, p11e.PinInvalid, p11e.PinLenRange):
        raise HSMUnavailable(
            f"the HSM rejected the PIN for token {address.label!r}; check "
            "MLSECRETS_PKCS11_PIN_FILE (or MLSECRETS_PKCS11_PIN)"
        ) from None
    except p11e.PinLocked:
        raise HSMUnavailable(
            f"the user PIN of token {address.label!r} is locked; a security officer must reset it"
        ) from None


def _mapper() -> Any:
    """python-pkcs11's attribute mapper, taught ``CKA_ALLOWED_MECHANISMS`` (an array of
    ``CK_MECHANISM_TYPE``, each a native ``CK_ULONG``), which it does not pack itself."""
    mapper = AttributeMapper()
    mapper.register_handler(
        Attribute.ALLOWED_MECHANISMS,
        lambda values: b"".join(struct.pack("L", int(v)) for v in values),
        lambda data: [Mechanism(v) for (v,) in struct.iter_unpack("L", data)])
    return mapper


def describe_missing_token(address: TokenAddress) -> HSMUnavailable:
    """The error for an unknown token label, listing the labels that do exist."""
    try:
        labels = sorted(t.label for t in _load(address.module).get_tokens() if t.label)
    except p11e.PKCS11Error:
        labels = []
    return HSMUnavailable(
        f"no token labelled {address.label!r} in {address.module} (tokens present: "
        f"{', '.join(map(repr, labels)) or 'none'}); check MLSECRETS_PKCS11_TOKEN, or run "
        "'mlsecrets init --dev' for a local SoftHSM2 token"
    )


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
