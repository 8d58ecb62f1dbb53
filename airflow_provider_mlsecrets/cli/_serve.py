"""``mlsecrets serve``: the vault as an HTTP service (uvicorn). The only process that needs
the HSM PIN and the database URL; clients need a URL and a token."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_provider_mlsecrets.errors import ConfigurationError, InvalidInput

if TYPE_CHECKING:
    from airflow_provider_mlsecrets.cli.main import Context


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser("serve", parents=[common],
                                help="run the vault as an HTTP service (/v1)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8200, help="port (default 8200)")
    serve.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain")
    serve.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key")
    serve.add_argument("--rate", type=float, default=50.0,
                       help="requests per second per caller, sustained (default 50)")
    serve.add_argument("--burst", type=int, default=100,
                       help="requests a caller may make at once (default 100)")
    serve.add_argument("--max-body", type=int, default=1024 * 1024, metavar="BYTES",
                       help="largest request body (default 1 MiB)")
    serve.add_argument("--max-failed-auth", type=float, default=20.0, metavar="PER_SECOND",
                       help="failed authentications per second audited one by one, from all "
                            "addresses together; past it they are refused and counted in one "
                            "summary record per window (default 20)")
    serve.add_argument("--failed-auth-window", type=float, default=60.0, metavar="SECONDS",
                       help="the window one summary record covers (default 60)")
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace, ctx: Context) -> None:
    import uvicorn

    from airflow_provider_mlsecrets.api.app import create_app

    if (args.tls_cert is None) != (args.tls_key is None):
        raise InvalidInput("give both --tls-cert and --tls-key, or neither")
    if not 0 < args.port < 65536 or args.rate <= 0 or args.burst < 1 or args.max_body < 1024:
        raise InvalidInput("--port 1-65535, --rate > 0, --burst >= 1, --max-body >= 1024")
    if not (0 < args.max_failed_auth <= 100_000 and 0.1 <= args.failed_auth_window <= 86_400):
        raise InvalidInput("--max-failed-auth must be over 0 (at most 100000) and "
                           "--failed-auth-window between 0.1 and 86400 seconds")
    tls = args.tls_cert is not None
    if not tls and not _loopback(args.host):
        raise ConfigurationError(
            f"refusing to serve tokens and values over plain HTTP on {args.host}: give "
            "--tls-cert and --tls-key, or listen on 127.0.0.1 behind a TLS proxy")
    settings = ctx.settings
    app = create_app(lambda: settings, rate=args.rate, burst=args.burst,
                     max_body=args.max_body, tls=tls, max_failed_auth=args.max_failed_auth,
                     failed_auth_window=args.failed_auth_window)
    app.state.alerts.start()  # evaluates the alert rules in this process (docs/alerts.md)
    ctx.output.warn(f"mlsecrets: serving /v1 on {'https' if tls else 'http'}://"
                    f"{args.host}:{args.port} (schema at /v1/openapi.json)")
    if settings.trusted_proxies:
        ctx.output.warn("mlsecrets: believing X-Forwarded-For / Forwarded from "
                        + ", ".join(settings.trusted_proxies) + " only")
    # uvicorn never rewrites the client address (its proxy_headers would believe loopback
    # by default): the app reads forwarded headers itself, from MLSECRETS_TRUSTED_PROXIES
    # only, and records anyone else's as claimed_client
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                ssl_certfile=str(args.tls_cert) if tls else None,
                ssl_keyfile=str(args.tls_key) if tls else None,
                server_header=False, timeout_keep_alive=5, access_log=False,
                proxy_headers=False, forwarded_allow_ips="")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
