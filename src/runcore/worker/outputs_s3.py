"""Step outputs in S3: what runs in ECS tasks (no shared disk with the daemon) need.

:class:`S3OutputStore` pickles each output, like :class:`~runcore.worker.outputs.FileOutputStore`,
to the object ``<prefix>/<run_id>/<step_key>/result`` of one bucket (``result``: an op's one
output). S3 reads see every write that returned before them, and a PUT replaces an object
whole, so a reader racing a writer gets the old value or the new one.

Configured as the instance's output store (the ``ecs`` extra, boto3)::

    outputs:
      class: runcore.worker.outputs_s3:S3OutputStore
      config: {bucket: my-runs, prefix: runcore/outputs, region_name: eu-west-1}

Every process of the instance (daemon, run workers in their tasks) builds its own client from
the usual AWS credential chain (in a task: its task role); no credential is in the config.
"""

from __future__ import annotations

import threading
from typing import Any

from runcore import _aws, _validate
from runcore.errors import ConfigError, OutputStoreError
from runcore.worker.outputs import OutputStore

#: The name of an op's one output: the last part of its object key.
OUTPUT_NAME = "result"


class S3OutputStore(OutputStore):
    """Outputs pickled to ``s3://<bucket>/<prefix>/<run_id>/<step_key>/result``.

    ``client``: a boto3 S3 client to use (tests, custom sessions); else one is built on first
    use from ``region_name`` and ``endpoint_url``. The constructor does no I/O.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "runcore/outputs",
        region_name: str | None = None,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        if not isinstance(bucket, str) or not bucket:
            raise ConfigError(f"S3OutputStore bucket must be a bucket name, got {bucket!r}")
        if not isinstance(prefix, str):
            raise ConfigError(f"S3OutputStore prefix must be a string, got {prefix!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        self._client = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3OutputStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client (built on first use; boto3 clients are thread-safe)."""
        with self._lock:
            if self._client is None:
                self._client = _aws.make_client(
                    "s3", region_name=self.region_name, endpoint_url=self.endpoint_url
                )
            return self._client

    def key(self, run_id: str, step_key: str) -> str:
        """The object key of an output; a :class:`ConfigError` for a malformed id or key."""

        _validate.run_id(run_id)
        _validate.path_name(step_key, "step key")
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, run_id, step_key, OUTPUT_NAME])

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put(self, run_id: str, step_key: str, value: Any) -> None:
        import pickle

        key = self.key(run_id, step_key)
        try:
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise OutputStoreError(
                f"the output of step {step_key!r} ({type(value).__name__}) cannot be stored: "
                f"{type(exc).__name__}: {exc}. Outputs stored in S3 are pickled: return a "
                "picklable value (plain data or module-level classes)"
            ) from exc
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            raise OutputStoreError(
                f"the output of step {step_key!r} cannot be written to {self._where(key)}: "
                f"{_aws.describe(exc)}"
            ) from exc

    def get(self, run_id: str, step_key: str) -> Any:
        import pickle

        key = self.key(run_id, step_key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            data = body.read()
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            if _aws.error_code(exc) in ("NoSuchKey", "404"):
                raise OutputStoreError(
                    f"no output of step {step_key!r} is stored for run {run_id!r} "
                    f"(looked at {self._where(key)})"
                ) from None
            raise OutputStoreError(
                f"cannot read the output at {self._where(key)}: {_aws.describe(exc)}"
            ) from exc
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise OutputStoreError(
                f"the output of step {step_key!r} at {self._where(key)} cannot be loaded: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

    def has(self, run_id: str, step_key: str) -> bool:
        key = self.key(run_id, step_key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if not _aws.is_botocore_error(exc):
                raise
            if _aws.error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise OutputStoreError(
                f"cannot look up the output at {self._where(key)}: {_aws.describe(exc)}"
            ) from exc
        return True
