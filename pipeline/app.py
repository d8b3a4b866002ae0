"""The Faust application, built by a factory from settings.

``create_app(Settings())`` is the one entry point; the module-level ``app`` exists only so that
``faust -A pipeline.app worker`` works, and it loads nothing until the worker starts.
"""

from __future__ import annotations

import ssl
import tempfile
from pathlib import Path

import faust

from pipeline.settings import KafkaSettings, Settings


def broker_credentials(kafka: KafkaSettings) -> faust.types.auth.CredentialsT | None:
    """SASL and/or TLS credentials from settings (PLAINTEXT needs none)."""
    protocol = kafka.security_protocol.upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=kafka.ssl_cafile)
        if kafka.ssl_certfile:
            context.load_cert_chain(kafka.ssl_certfile, kafka.ssl_keyfile)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        if not kafka.sasl_username or kafka.sasl_password is None:
            raise ValueError(f"security_protocol {protocol} needs CHATMOD_KAFKA_SASL_USERNAME and _PASSWORD")
        mechanism = kafka.sasl_mechanism.upper()
        password = kafka.sasl_password.get_secret_value()
        if mechanism.startswith("SCRAM"):
            return faust.SASLCredentials(username=kafka.sasl_username, password=password, mechanism=mechanism,
                                         ssl_context=context)
        return faust.SASLCredentials(username=kafka.sasl_username, password=password, ssl_context=context)
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def cap_fetch_wait(max_wait_ms: int) -> None:
    """Make Faust's consumers use ``max_wait_ms`` as aiokafka's ``fetch_max_wait_ms``.

    Faust's aiokafka driver passes a fixed 1500 ms and offers no setting; the fetcher reads the value
    when the consumer starts, so setting it right after construction is enough.
    """
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    original = getattr(AIOKafkaConsumerThread, "_chatmod_original_create", None)
    if original is None:
        original = AIOKafkaConsumerThread._create_worker_consumer
        AIOKafkaConsumerThread._chatmod_original_create = original

    def create(self, transport):  # noqa: ANN001, ANN202 - Faust's own signature
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    AIOKafkaConsumerThread._create_worker_consumer = create


def create_app(settings: Settings, *, with_agents: bool = True) -> faust.App:
    """A Faust app configured from ``settings``, with the moderation agent registered."""
    kafka, batching, worker = settings.kafka, settings.batching, settings.worker
    cap_fetch_wait(kafka.fetch_max_wait_ms)
    datadir = Path(worker.datadir) if getattr(worker, "datadir", None) else Path(tempfile.gettempdir()) / "chatmod-faust"
    app = faust.App(
        kafka.consumer_group,  # Faust's app id is the Kafka consumer group
        broker=[f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",")],
        broker_credentials=broker_credentials(kafka),
        broker_client_id=kafka.client_id,
        broker_session_timeout=kafka.session_timeout_s,
        broker_heartbeat_interval=kafka.heartbeat_interval_s,
        broker_commit_interval=1.0,
        consumer_auto_offset_reset="earliest",
        value_serializer="raw",
        key_serializer="raw",
        stream_buffer_maxsize=batching.stream_buffer_maxsize,  # bounded: a slow model applies backpressure
        topic_partitions=settings.topics.partitions,
        topic_replication_factor=settings.topics.replication_factor,
        producer_acks=-1,
        producer_linger=kafka.producer_linger_ms / 1000.0,
        web_enabled=worker.web_enabled,
        web_port=worker.web_port,
        web_bind=worker.web_host,
        datadir=str(datadir),
        logging_config=None,
    )
    if with_agents:
        from pipeline.agents import register_agents
        from pipeline.views import register_views

        register_views(app, register_agents(app, settings))
    return app


_module_app: faust.App | None = None


def __getattr__(name: str) -> faust.App:
    """``faust -A pipeline.app`` asks for ``app``; it is built from the environment on first access."""
    global _module_app
    if name != "app":
        raise AttributeError(name)
    if _module_app is None:
        _module_app = create_app(Settings())
    return _module_app
