"""The code server's shared-secret token: where it comes from and where it is kept.

A code server requires its token on every call but ``Ping``, loopback included. It takes, in
order:

1. the token given to it: ``runcore code-server --token``, or ``serve(token=...)``;
2. ``$RUNCORE_CODE_SERVER_TOKEN``;
3. the ``token`` of the ``CodeServerRunLauncher`` in its instance config (``run_launcher`` or
   ``non_isolated_runs.launcher``), so that one config file serves launcher and server;
4. else it generates one (:func:`generate_token`) and writes it, mode 0600, to
   ``<home>/code-servers/<host>_<port>.token`` (:func:`token_path`; ``<home>`` is
   :func:`runcore.config.home_dir`: ``$RUNCORE_HOME``, else ``./.runcore``), removing it when it
   stops. When that directory cannot be created or written, the server refuses to start.

A client (:class:`~runcore.codeserver.client.CodeServerClient`, and through it
``CodeServerRunLauncher``) sends its configured token, else ``$RUNCORE_CODE_SERVER_TOKEN``,
else the token file of the address it calls, read from the same home directory
(:func:`read_token_file` refuses a file another user owns or others may read or write).

No gRPC here: importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Iterable
from typing import TYPE_CHECKING

from runcore.config import HOME_ENV, home_dir, import_class
from runcore.errors import ConfigError

if TYPE_CHECKING:
    from runcore.config import InstanceConfig, PluginConfig

#: The environment variable a server and its clients read the token from.
TOKEN_ENV = "RUNCORE_CODE_SERVER_TOKEN"
#: The folder of the home directory that holds generated token files.
TOKEN_DIR = "code-servers"

_HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}")
_FIX = f"pass --token (or set ${TOKEN_ENV}) to the server and give its launchers the same token"


def generate_token() -> str:
    """A new random token (32 bytes, URL-safe text)."""
    return secrets.token_urlsafe(32)


def env_token() -> str | None:
    """``$RUNCORE_CODE_SERVER_TOKEN``, or None when it is unset or empty."""
    return (os.environ.get(TOKEN_ENV) or "").strip() or None


def token_path(host: str, port: int, home: str | None = None) -> str:
    """Where the server at ``host:port`` keeps a generated token.

    ``<home>/code-servers/<host>_<port>.token``, ``<home>`` being :func:`runcore.config.home_dir`.

    ``host`` is written as the server binds it and launchers address it (``127.0.0.1`` and
    ``localhost`` are different files); brackets around an IPv6 address are dropped.
    """
    name = host.strip().strip("[]")
    if not _HOST.fullmatch(name) or set(name) <= {"."}:
        raise ConfigError(
            f"code server host {host!r} is not a host name or IP address, so it cannot name a "
            "token file"
        )
    return os.path.join(home or home_dir(), TOKEN_DIR, f"{name}_{int(port)}.token")


def prepare_token_dir(home: str | None = None) -> str:
    """Create ``<home>/code-servers`` (mode 0700) if needed; returns its path.

    Raises :class:`~runcore.errors.ConfigError` when it cannot be created or written, or
    belongs to another user: a server then has nowhere to share a generated token.
    """
    home = home or home_dir()
    folder = os.path.join(home, TOKEN_DIR)
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        info = os.stat(folder)
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"the code server has no token and cannot keep one in {folder}: that directory "
                f"belongs to another user (uid {info.st_uid}); {_FIX}, or point ${HOME_ENV} "
                "at a directory of your own"
            )
        if stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(folder, 0o700)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable", folder)
    except OSError as exc:
        raise ConfigError(
            f"the code server has no token and cannot keep a generated one under {home} "
            f"(${HOME_ENV}, default ./.runcore): {exc.strerror or exc}; {_FIX}"
        ) from exc
    return folder


def write_token_file(path: str, token: str) -> None:
    """Write ``token`` to ``path`` atomically, mode 0600 (a stale file there is replaced).

    The folder must exist (:func:`prepare_token_dir`). Raises
    :class:`~runcore.errors.ConfigError` when it cannot be written.
    """
    folder = os.path.dirname(path)
    try:
        # mkstemp creates the file O_EXCL with mode 0600: no moment when others may read it.
        fd, temp = tempfile.mkstemp(dir=folder, prefix=".", suffix=".token.tmp")
    except OSError as exc:
        raise ConfigError(
            f"the code server cannot write its generated token to {folder}: "
            f"{exc.strerror or exc}; {_FIX}"
        ) from exc
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(token + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise ConfigError(
            f"the code server cannot write its generated token to {path}: "
            f"{exc.strerror or exc}; {_FIX}"
        ) from exc


def read_token_file(path: str) -> str | None:
    """The token kept at ``path``, or None when there is no such file.

    Raises :class:`~runcore.errors.ConfigError` for a file that is a symlink, belongs to
    another user, may be read or written by others (mode looser than 0600), or is empty.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"refusing the code server token file {path}: it is a symbolic link"
            ) from exc
        raise ConfigError(
            f"cannot read the code server token file {path}: {exc.strerror or exc}"
        ) from exc
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"refusing the code server token file {path}: not a regular file")
        if info.st_uid != os.geteuid():
            raise ConfigError(
                f"refusing the code server token file {path}: it belongs to another user "
                f"(uid {info.st_uid}), who could have planted it"
            )
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"refusing the code server token file {path}: its mode is {mode:04o}, so other "
                f"users may read or change it; it must be 0600 (chmod 600 {path}, or restart "
                "the code server to write a new one)"
            )
        data = fh.read(4096)
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if not token:
        raise ConfigError(f"the code server token file {path} holds no token")
    return token


def remove_token_file(path: str, token: str) -> None:
    """Remove ``path`` if it still holds ``token`` (best effort)."""
    with contextlib.suppress(OSError, ConfigError):
        if read_token_file(path) == token:
            os.unlink(path)


def config_token(cfg: InstanceConfig, address: str) -> str | None:
    """The ``token`` of the ``CodeServerRunLauncher`` in an instance config, if any.

    When several such launchers name different tokens, the one whose ``addresses`` include
    ``address`` wins; still ambiguous: :class:`~runcore.errors.ConfigError`.
    """
    found: dict[str, list[str]] = {}
    for where, plugin in (
        ("run_launcher", cfg.run_launcher),
        ("non_isolated_runs.launcher", cfg.non_isolated_runs.launcher),
    ):
        if plugin is None or not _is_code_server_launcher(plugin):
            continue
        token = plugin.config.get("token")
        if not token:
            continue
        if not isinstance(token, str):
            raise ConfigError(f"{where}.config.token: expected a string")
        addresses = plugin.config.get("addresses") or []
        found.setdefault(token, []).extend(
            [str(a).strip() for a in addresses] if isinstance(addresses, list) else []
        )
    if len(found) <= 1:
        return next(iter(found), None)
    matching = [token for token, addresses in found.items() if address in addresses]
    if len(matching) == 1:
        return matching[0]
    raise ConfigError(
        "the instance config names several CodeServerRunLauncher tokens and none is the one "
        f"for {address}; pass the server its token with --token or ${TOKEN_ENV}"
    )


def _is_code_server_launcher(plugin: PluginConfig) -> bool:
    from runcore.launchers.code_server import CodeServerRunLauncher

    try:
        cls = import_class(plugin.class_name, where="run_launcher")
    except ConfigError:
        return False
    return issubclass(cls, CodeServerRunLauncher)


def describe_lookup(paths: Iterable[str]) -> str:
    """Where a client looked for a token, for an error message."""
    places = ["the client's configured token", f"${TOKEN_ENV}"]
    places += [f"the token file {p}" for p in paths]
    return ", ".join(places)
