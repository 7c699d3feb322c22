"""Who can reach the daemon and read what it writes: the bearer token, the loopback check, private files.

Beyond loopback anyone who connects sets the demand the controller provisions for and reads ``/status``
(worker PIDs, the plan), so the daemon refuses to listen there without a token unless told, with
``--insecure``, that a proxy in front authenticates. What it writes (``plan.json``, restored on restart;
logs; TensorBoard) is this user's only, whatever the umask.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from pathlib import Path

from jigsaw.profiles.errors import ShimError
from jigsaw.serving_shim.http import AUTH_TOKEN_ENV, Request

log = logging.getLogger("jigsaw.daemon")

_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")  # visible ASCII: it travels in a header


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """A token fit for a header; beyond loopback, a token or ``insecure``, and one warning line either way."""
    if token is not None and not _TOKEN.fullmatch(token):
        raise ShimError("the auth token must be 16 to 512 visible ASCII characters, no spaces",
                        field=f"--auth-token/{AUTH_TOKEN_ENV}",
                        fix="e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    if is_loopback(host):
        return
    if token is None and not insecure:
        raise ShimError(f"--host {host} reaches beyond this machine, and no token is set: anyone who connects "
                        "would set the demand and read /status", field="--host",
                        fix=f"set {AUTH_TOKEN_ENV} (or --auth-token), or add --insecure when an authenticating proxy "
                        "is in front, or keep --host 127.0.0.1")
    log.warning("listening on %s, beyond loopback: %s", host,
                "requests need the bearer token, sent in clear over plain HTTP (put TLS in front on untrusted "
                "networks)" if token else "NO AUTHENTICATION (--insecure): anyone who connects sets the demand and "
                "reads /status")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or "": any interface
        return False


def authorized(request: Request, token: str | None) -> bool:
    """No token set, or ``Authorization: Bearer <token>`` (compared in constant time)."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode("latin-1"), token.encode())


def private_dir(path: Path) -> Path:
    """``path`` created if need be, and made this user's only (0700) whatever the umask."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a crash never leaves half a file), mode 0600 whatever the umask."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # a leftover tmp file keeps its old mode otherwise
        out.write(text)
    os.replace(tmp, path)
