"""kafka-python client settings from chatmod's Kafka settings (bootstrap, security), for the plain clients:
the console's feed, ``chatmod produce``, ``status`` and ``replay``. No Faust."""

from __future__ import annotations

from typing import Any

from pipeline.settings import KafkaSettings


def kafka_client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments (bootstrap, security) from settings."""
    config: dict[str, Any] = {
        "bootstrap_servers": [h.strip() for h in kafka.bootstrap.split(",")],
        "client_id": f"{kafka.client_id}-tools",
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol.startswith("SASL"):
        config.update(sasl_mechanism=kafka.sasl_mechanism or "PLAIN", sasl_plain_username=kafka.sasl_username,
                      sasl_plain_password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None)
    if kafka.security_protocol.endswith("SSL"):
        config.update(ssl_cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
                      ssl_certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
                      ssl_keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None)
    return config
