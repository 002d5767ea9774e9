"""The code server's gRPC token check: every call but ``Ping`` must carry the server's token.

The token travels in the ``runcore-token`` metadata header (:data:`TOKEN_METADATA_KEY`) and is
compared in constant time; where a server's token comes from is :mod:`runcore.codeserver.tokens`.
"""

from __future__ import annotations

import hmac
from typing import Any

import grpc

from runcore.codeserver.client import TOKEN_METADATA_KEY

#: The one RPC open without the token (health checks); it then reveals no more than its echo.
_OPEN_METHODS = frozenset({"/runcore.codeserver.v1.CodeServer/Ping"})


def _sent_token(metadata: Any) -> str | None:
    given = None
    for key, value in metadata or ():
        if key == TOKEN_METADATA_KEY:
            given = value
    return None if given is None else str(given)


class TokenCheck(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses calls, but ``Ping``, that do not carry the server's token (``UNAUTHENTICATED``)."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self._missing = self._deny(
            f"this code server requires a token: send it in the {TOKEN_METADATA_KEY!r} metadata "
            "header (configure CodeServerRunLauncher with token: ..., the same secret the "
            "server was started with, or let it read the token file the server wrote)"
        )
        self._wrong = self._deny(
            f"the {TOKEN_METADATA_KEY!r} metadata header does not match this code server's token; "
            "configure the launcher with the token the server was started with "
            "(--token or $RUNCORE_CODE_SERVER_TOKEN)"
        )

    @staticmethod
    def _deny(message: str) -> Any:
        def deny(request: Any, context: Any) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.unary_unary_rpc_method_handler(deny)

    def matches(self, metadata: Any) -> bool:
        """Whether call metadata carries this server's token (compared in constant time)."""
        given = _sent_token(metadata)
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        if handler_call_details.method in _OPEN_METHODS:
            return continuation(handler_call_details)
        if _sent_token(handler_call_details.invocation_metadata) is None:
            return self._missing
        if not self.matches(handler_call_details.invocation_metadata):
            return self._wrong
        return continuation(handler_call_details)
