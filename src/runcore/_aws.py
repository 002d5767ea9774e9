"""boto3 at the boundary: building clients lazily, reading botocore errors.

boto3 is the ``ecs`` extra (``pip install 'runcore[ecs]'``) and is imported here on first use
only, so ``import runcore`` never loads it. Every AWS error runcore raises on purpose is
translated (``raise ... from exc``) by the caller with the code and message read here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from runcore.errors import ConfigError

T = TypeVar("T")

#: botocore's own retries are turned off: runcore retries in one place (tenacity, see
#: :mod:`runcore._retry`), so a throttled call is counted and logged where it is retried.
NO_BOTOCORE_RETRIES: dict[str, Any] = {"total_max_attempts": 1, "mode": "standard"}


def make_client(
    service: str,
    *,
    region_name: str | None = None,
    endpoint_url: str | None = None,
    timeout: float = 30.0,
) -> Any:
    """A boto3 client for ``service`` (credentials from the usual boto3 chain); raises
    :class:`ConfigError` if boto3 is not installed."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise ConfigError(
            f"the AWS {service} client needs boto3: pip install 'runcore[ecs]'"
        ) from exc
    config = Config(retries=NO_BOTOCORE_RETRIES, connect_timeout=timeout, read_timeout=timeout)
    return boto3.client(service, region_name=region_name, endpoint_url=endpoint_url, config=config)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ``ClientError`` (``ThrottlingException``), else ``""``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def describe(exc: BaseException) -> str:
    """An AWS error in one line: ``ThrottlingException: Rate exceeded``, or the exception."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict) and "Error" in response:
        err = response["Error"]
        return f"{err.get('Code', type(exc).__name__)}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def is_botocore_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from botocore (an AWS answer or a connection failure)."""
    return any(cls.__module__.startswith("botocore") for cls in type(exc).__mro__)


def call(error: type[Exception], what: str, fn: Callable[..., T], /, **kwargs: Any) -> T:
    """``fn(**kwargs)``, a botocore error raised as ``error`` (``"<what> failed: <AWS's
    reason>"``, ``raise ... from``); other exceptions pass through."""
    try:
        return fn(**kwargs)
    except Exception as exc:
        if not is_botocore_error(exc):
            raise
        raise error(f"{what} failed: {describe(exc)}") from exc
