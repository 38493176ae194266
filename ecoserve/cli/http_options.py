"""``ecoserve serve``'s front-door options, under vLLM ``serve``'s names and
with their meanings: TLS (``--ssl-keyfile``, ``--ssl-certfile``,
``--ssl-ca-certs``, ``--ssl-cert-reqs``, ``--ssl-ciphers``), CORS
(``--allowed-origins``, ``--allowed-methods``, ``--allowed-headers``,
``--allow-credentials``) and ``--uvicorn-log-level``.

``http_options`` adds them to a command and hands it one checked
``HttpOptions`` (``http=``): a bad combination or an unusable certificate is a
usage error before any port is bound or engine started. ``VllmCommand`` reads
vLLM's one-or-more-value options (``--served-model-name A B``, ``--api-key K1
K2``; argparse's ``nargs="+"``, which click lacks) as repeated click options.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # the server imports FastAPI: only when serving (`ecoserve --help` stays fast)
    from ecoserve.server.cors import CorsSettings

MULTI_VALUE = ("--served-model-name", "--api-key")
UVICORN_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # vLLM's --uvicorn-log-level choices


def expand_multi_value(args: Sequence[str], names: Sequence[str] = MULTI_VALUE) -> list[str]:
    """``--opt A B`` as ``--opt A --opt B`` for each option in ``names``: the
    values run to the next token that starts with ``-`` (as argparse reads
    them). Nothing after ``--`` is touched (engine arguments)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        out.append(arg)
        i += 1
        if arg == "--":
            out.extend(args[i:])
            break
        if arg in names and i < len(args):
            out.append(args[i])  # the first value, whatever it looks like (click's reading)
            i += 1
            while i < len(args) and not args[i].startswith("-"):
                out += [arg, args[i]]
                i += 1
    return out


class VllmCommand(click.Command):
    """A click command that also takes vLLM's ``--opt A B`` spelling (``MULTI_VALUE``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_value(args))


@dataclass(frozen=True)
class HttpOptions:
    ssl: dict[str, Any] = field(default_factory=dict)  # uvicorn.Config's ssl_* keywords; empty: plain HTTP
    cors: CorsSettings | None = None
    uvicorn_log_level: str | None = None  # None: follow --log-level

    @property
    def scheme(self) -> str:
        return "https" if self.ssl else "http"

    def uvicorn_level(self, log_level: str) -> str:
        # Our own ready line replaces uvicorn's info lines, so --log-level info keeps uvicorn at warning.
        return self.uvicorn_log_level or ("warning" if log_level == "info" else log_level)

    def cleartext_key_warning(self, host: str, api_key: Any) -> str | None:
        """A warning when API keys would cross a network unencrypted."""
        if not api_key or self.ssl or is_loopback(host):
            return None
        return (f"warning: --api-key without TLS on {host}: keys and prompts cross the network in clear text; "
                "give --ssl-keyfile and --ssl-certfile, or serve behind a TLS proxy")  # fmt: skip


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may be anywhere
        return False


def _json_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    """vLLM reads these with json.loads; a list of strings is what CORS takes."""
    if value is None:
        return None
    try:
        items = json.loads(value)
    except ValueError:
        items = None
    if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
        raise click.BadParameter(f"expected a JSON list of strings, e.g. '[\"https://app.example.com\"]'; "
                                 f"got {value!r}")  # fmt: skip
    return tuple(items)


def tls_settings(keyfile: str | None, certfile: str | None, ca_certs: str | None, cert_reqs: int,
                 ciphers: str | None) -> dict[str, Any]:  # fmt: skip
    """uvicorn's ssl_* keywords, after loading them once as uvicorn will (a
    bad key or certificate is a usage error now, not a crash after the
    engines started). Empty: no TLS."""
    if not (keyfile or certfile):
        if ca_certs or cert_reqs or ciphers:
            raise click.UsageError("--ssl-ca-certs, --ssl-cert-reqs and --ssl-ciphers need --ssl-keyfile "
                                   "and --ssl-certfile")  # fmt: skip
        return {}
    if not (keyfile and certfile):
        given, missing = ("--ssl-keyfile", "--ssl-certfile") if keyfile else ("--ssl-certfile", "--ssl-keyfile")
        raise click.UsageError(f"TLS needs both --ssl-keyfile and --ssl-certfile: {given} without {missing}")
    if cert_reqs and not ca_certs:
        raise click.UsageError("--ssl-cert-reqs 1 or 2 checks client certificates: give --ssl-ca-certs "
                               "to check them against")  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        # A password callback, so that an encrypted key fails here instead of prompting on the terminal.
        ctx.load_cert_chain(certfile, keyfile, password=lambda: b"")
    except (ssl.SSLError, OSError) as e:
        raise click.BadParameter(f"cannot load the certificate {certfile} with the key {keyfile}: {e} "
                                 "(a PEM certificate and its unencrypted PEM key)",
                                 param_hint="--ssl-certfile/--ssl-keyfile") from None  # fmt: skip
    if ca_certs:
        try:
            ctx.load_verify_locations(ca_certs)
        except (ssl.SSLError, OSError) as e:
            raise click.BadParameter(f"cannot load CA certificates from {ca_certs}: {e}",
                                     param_hint="--ssl-ca-certs") from None  # fmt: skip
    out: dict[str, Any] = {"ssl_keyfile": keyfile, "ssl_certfile": certfile, "ssl_ca_certs": ca_certs,
                           "ssl_cert_reqs": cert_reqs}  # fmt: skip
    if ciphers:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise click.BadParameter(f"no usable cipher in {ciphers!r}", param_hint="--ssl-ciphers") from None
        out["ssl_ciphers"] = ciphers
    return out


def cors_settings(origins: tuple[str, ...] | None, methods: tuple[str, ...] | None, headers: tuple[str, ...] | None,
                  credentials: bool) -> CorsSettings | None:  # fmt: skip
    from ecoserve.server.cors import CorsSettings

    if not origins:
        if methods is not None or headers is not None or credentials:
            raise click.UsageError("--allowed-methods, --allowed-headers and --allow-credentials apply to "
                                   "cross-origin requests: give --allowed-origins too")  # fmt: skip
        return None
    return CorsSettings(origins, methods if methods is not None else ("*",), headers if headers is not None else ("*",),
                        credentials)  # fmt: skip


_FILE = click.Path(exists=True, dir_okay=False, readable=True)
_OPTIONS = [
    click.option("--ssl-keyfile", type=_FILE, default=None,
                 help="Serve HTTPS: the PEM private key (with --ssl-certfile)."),
    click.option("--ssl-certfile", type=_FILE, default=None, help="Serve HTTPS: the PEM certificate (chain)."),
    click.option("--ssl-ca-certs", type=_FILE, default=None,
                 help="CA certificates that client certificates are checked against (with --ssl-cert-reqs)."),
    click.option("--ssl-cert-reqs", type=click.IntRange(0, 2), default=0, show_default=True,
                 help="Client certificates, as Python's ssl.CERT_*: 0 none, 1 optional, 2 required."),
    click.option("--ssl-ciphers", default=None, metavar="CIPHERS",
                 help="OpenSSL cipher list for TLS 1.2 and below (default: uvicorn's)."),
    click.option("--allowed-origins", callback=_json_list, default=None, metavar="JSON",
                 help="Origins allowed cross-origin (CORS) access, a JSON list: '[\"https://app.example.com\"]', "
                      "'[\"*\"]' for any. Default: none, as vLLM 0.32 (with *, a page on any site can read "
                      "the replies)."),
    click.option("--allowed-methods", callback=_json_list, default=None, metavar="JSON",
                 help="CORS: allowed methods, a JSON list. Default [\"*\"]."),
    click.option("--allowed-headers", callback=_json_list, default=None, metavar="JSON",
                 help="CORS: allowed request headers, a JSON list. Default [\"*\"]."),
    click.option("--allow-credentials/--no-allow-credentials", default=False, show_default=True,
                 help="CORS: allow credentials (cookies, Authorization) on cross-origin requests."),
    click.option("--uvicorn-log-level", type=click.Choice(UVICORN_LEVELS, case_sensitive=False), default=None,
                 help="uvicorn's log level. Default: --log-level's (warning for info: the ready line says it all)."),
]  # fmt: skip
_NAMES = ("ssl_keyfile", "ssl_certfile", "ssl_ca_certs", "ssl_cert_reqs", "ssl_ciphers", "allowed_origins",
          "allowed_methods", "allowed_headers", "allow_credentials", "uvicorn_log_level")  # fmt: skip


def http_options(f):
    """Add the options; the command gets them as one ``http: HttpOptions``."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kw: Any) -> Any:
        o = {name: kw.pop(name) for name in _NAMES}
        http = HttpOptions(
            tls_settings(o["ssl_keyfile"], o["ssl_certfile"], o["ssl_ca_certs"], o["ssl_cert_reqs"], o["ssl_ciphers"]),
            cors_settings(o["allowed_origins"], o["allowed_methods"], o["allowed_headers"], o["allow_credentials"]),
            o["uvicorn_log_level"],
        )
        return f(*args, http=http, **kw)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
