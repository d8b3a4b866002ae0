"""Deployment files, validated statically: no Docker engine or cluster runs in CI.

docker-compose.yml is checked against the Compose Specification's JSON schema (vendored in tests/data)
and for what this project needs of it; the Kubernetes base, the Dockerfile and the Prometheus config are
checked structurally. Every CHATMOD_* name they set must be a real field of ``Settings`` and the values
must validate, so a typo or a bad value fails here instead of in a crash-looping pod.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.settings import ENV_PREFIX, Settings, TopicsSettings, WorkerSettings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
K8S = ROOT / "deploy" / "k8s" / "base"
COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec" / "compose-spec.json"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
WEB_PORT = WorkerSettings().web_port


# -- helpers -----------------------------------------------------------------------------------------
def settings_field(name: str) -> tuple[str, str]:
    """``CHATMOD_KAFKA_SASL_PASSWORD`` -> ("kafka", "sasl_password"); ValueError if no such field."""
    if not name.startswith(ENV_PREFIX):
        raise ValueError(f"{name} does not start with {ENV_PREFIX}")
    group, _, field = name[len(ENV_PREFIX):].lower().partition("_")
    info = Settings.model_fields.get(group)
    if info is None:
        raise ValueError(f"{name}: no settings group {group!r} (groups: {sorted(Settings.model_fields)})")
    fields = info.annotation.model_fields
    if field not in fields:
        raise ValueError(f"{name}: settings.{group} has no field {field!r} (fields: {sorted(fields)})")
    return group, field


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """``Settings()`` as a process with exactly ``env`` (as CHATMOD_* variables) would build it."""
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    return Settings()


def interpolate(value: Any) -> str:
    """Compose variable interpolation with no variables set: ``${X:-d}`` -> d, ``${X}`` -> "", ``$$`` -> $."""
    text = str(value)
    text = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)
    return text.replace("$$", "$")


def load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def one(kind: str, name: str | None = None) -> dict:
    found = [d for d in k8s_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def chatmod_env_of_base() -> dict[str, str]:
    return {**one("ConfigMap")["data"], **one("Secret")["stringData"]}


# -- docker-compose.yml ------------------------------------------------------------------------------
def test_compose_file_follows_the_compose_specification():
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(load_compose())]
    assert not errors, "\n".join(errors)
    # The schema is strict enough to catch the mistakes that matter here.
    broken = load_compose()
    broken["services"]["worker"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["redis"]["helthcheck"] = broken["services"]["redis"].pop("healthcheck")
    assert len(list(validator.iter_errors(broken))) >= 2


def test_compose_services_dependencies_and_healthchecks_fit_together():
    compose = load_compose()
    services = compose["services"]
    assert {"kafka", "redis", "topic-init", "worker", "trainer", "prometheus"} <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            condition = spec["condition"]
            assert condition in CONDITIONS, f"{name} -> {dep}: {condition}"
            if condition == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dep} has no healthcheck to wait for"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job: restart must be 'no'"
    for name in ("kafka", "redis", "worker"):
        test = services[name]["healthcheck"]["test"]
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert services["worker"]["depends_on"]["topic-init"]["condition"] == "service_completed_successfully"
    assert "/ready" in " ".join(services["worker"]["healthcheck"]["test"])


def test_compose_kafka_runs_in_kraft_mode_with_an_in_network_listener():
    kafka = load_compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    advertised = dict(part.split("://") for part in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "kafka:9092"
    assert str(env["KAFKA_CONTROLLER_QUORUM_VOTERS"]).startswith(f"{env['KAFKA_NODE_ID']}@kafka:")
    assert "zookeeper" not in json.dumps(kafka).lower()


def test_compose_worker_scales_and_its_settings_are_valid(monkeypatch):
    compose = load_compose()
    worker = compose["services"]["worker"]
    assert "container_name" not in worker, "a fixed container name breaks --scale worker=N"
    assert "ports" not in worker, "published host ports break --scale worker=N"
    assert (ROOT / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    env = {k: interpolate(v) for k, v in worker["environment"].items()}
    for name in env:
        settings_field(name)
    settings = settings_from(env, monkeypatch)
    assert settings.kafka.bootstrap == "kafka:9092"
    assert settings.redis.url.startswith("redis://redis:")
    assert settings.worker.web_port == WEB_PORT
    stop_grace = int(str(worker["stop_grace_period"]).rstrip("s"))
    assert stop_grace > settings.worker.shutdown_grace_s


def test_compose_console_is_local_only_and_its_settings_are_valid(monkeypatch):
    console = load_compose()["services"]["console"]
    env = {k: interpolate(v) for k, v in console["environment"].items()}
    for name in env:
        settings_field(name)
    settings = settings_from(env, monkeypatch)
    assert console["command"] == ["console"] and console["image"] == load_compose()["services"]["worker"]["image"]
    assert console["ports"] == [f"127.0.0.1:{settings.console.port}:{settings.console.port}"]  # loopback only
    assert f":{settings.console.port}/health" in " ".join(console["healthcheck"]["test"])
    assert settings.console.secure_cookies is False  # until a TLS proxy is in front (README "Console")


def test_compose_topic_init_creates_every_topic_with_partitions_from_the_environment():
    compose = load_compose()
    job = compose["services"]["topic-init"]
    script = interpolate("\n".join(job["command"]))
    defaults = TopicsSettings()
    loop = re.search(r"for topic in ([^;\n]+);", script)
    assert loop, "topic-init creates its topics in a `for topic in ...; do` loop"
    created = set(loop.group(1).split())
    wanted = (defaults.messages, defaults.moderated, defaults.flagged, defaults.dlq, defaults.feedback)
    assert created == set(wanted)
    assert "--if-not-exists" in script and '--partitions "$PARTITIONS"' in script
    assert "CHATMOD_PARTITIONS" in str(job["environment"]["PARTITIONS"])
    worker_partitions = compose["services"]["worker"]["environment"]["CHATMOD_TOPICS_PARTITIONS"]
    assert job["environment"]["PARTITIONS"] == worker_partitions


def test_compose_trainer_is_a_profile_built_with_the_train_extra():
    compose = load_compose()
    trainer = compose["services"]["trainer"]
    assert trainer["profiles"] == ["train"]
    assert trainer["build"]["args"]["CHATMOD_EXTRAS"] == "train"
    assert trainer["build"]["dockerfile"] == compose["services"]["worker"]["build"]["dockerfile"]
    assert trainer["image"] != compose["services"]["worker"]["image"], "the worker image must stay torch-free"
    assert trainer["command"][:2] == ["train", "all"]
    store = trainer["command"][trainer["command"].index("--store") + 1]
    assert any(v.endswith(f":{store}") for v in compose["services"]["worker"]["volumes"]), "one shared store"
    assert "profiles" not in compose["services"]["worker"]


def test_compose_volumes_are_declared_and_bind_mounts_exist():
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":")[0]
            if source.startswith((".", "/")):
                if name not in ("trainer", "retrainer"):  # their data folder is the user's (../shared/data)
                    assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared at the top level"


def test_prometheus_discovers_every_worker_replica_by_dns():
    config = yaml.safe_load(PROMETHEUS.read_text())
    services = load_compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["chatmod-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["names"][0] in services
    assert sd["type"] == "A" and sd["port"] == WEB_PORT
    mounts = services["prometheus"]["volumes"]
    assert any(m.startswith("./deploy/prometheus.yml:/etc/prometheus/prometheus.yml") for m in mounts)


# -- deploy/Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def dockerfile_stages() -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """(global instructions before the first FROM, {stage name: its instructions incl. FROM})."""
    preamble, stages, current = [], {}, None
    for keyword, args in dockerfile_instructions():
        if keyword == "FROM":
            parts = args.split()
            current = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else f"stage{len(stages)}"
            stages[current] = []
        (stages[current] if current else preamble).append((keyword, args))
    return preamble, stages


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


def test_dockerfile_builds_a_slim_non_root_worker_image_without_training_dependencies():
    preamble, stages = dockerfile_stages()
    global_args = dict(a.split("=", 1) for k, a in preamble if k == "ARG" and "=" in a)
    assert global_args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert len(stages) >= 2, "multi-stage: build, then a runtime stage without build tooling"
    runtime_name, runtime = list(stages.items())[-1]
    assert runtime[0][1].split()[0] in ("${PYTHON_IMAGE}", "python:3.11-slim")

    # The serving image never installs the train extra: the extras are a build arg that defaults to none,
    # and the runtime stage installs nothing itself, it copies the build stage's venv.
    build = stages["build"]
    extras = [a for k, a in build if k == "ARG" and a.startswith("CHATMOD_EXTRAS")]
    assert extras == ['CHATMOD_EXTRAS=""'], extras
    installs = [a for k, a in build if k == "RUN" and "pip install" in a]
    assert installs and all("[train" not in a for a in installs)
    assert any('".${CHATMOD_EXTRAS:+[${CHATMOD_EXTRAS}]}"' in a for a in installs)
    assert not [a for k, a in runtime if k == "RUN" and "pip" in a], "the runtime stage must not pip install"
    assert ("COPY", "--from=build /opt/venv /opt/venv") in runtime

    users = [a for k, a in runtime if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the worker must not run as root"
    env = {}
    for k, a in runtime:
        if k == "ENV":
            env.update(env_pairs(a))
    assert env["CHATMOD_WORKER_WEB_HOST"] == "0.0.0.0"
    for name in env:
        if name.startswith(ENV_PREFIX):
            settings_field(name)
    assert int(env.get("CHATMOD_WORKER_WEB_PORT", WEB_PORT)) == WEB_PORT
    assert ("EXPOSE", str(WEB_PORT)) in runtime
    healthchecks = [a for k, a in runtime if k == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "/health" in healthchecks[0] and " CMD " in f" {healthchecks[0]} "
    assert [json.loads(a) for k, a in runtime if k == "ENTRYPOINT"] == [["chatmod"]]
    assert [json.loads(a) for k, a in runtime if k == "CMD"] == [["worker"]]
    assert runtime_name == "runtime"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "model-store"} <= ignored
    _, stages = dockerfile_stages()
    for keyword, args in stages["build"]:
        if keyword == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
                assert source not in ignored, f"COPY {source}: excluded by .dockerignore"
    # The bundled default models are package data: `pip install .` puts them into the image.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'models = ["defaults/**/*", "lexicon/*"]' in pyproject  # the models and de-obfuscation's word lists


# -- deploy/k8s/base ---------------------------------------------------------------------------------
def test_kustomization_lists_existing_well_formed_resources():
    kust = kustomization()
    assert kust["apiVersion"].startswith("kustomize.config.k8s.io/") and kust["kind"] == "Kustomization"
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization lists {name}, which does not exist"
    unlisted = {p.name for p in K8S.glob("*.yaml")} - set(listed) - {"kustomization.yaml"}
    assert not unlisted, f"manifests not in kustomization.yaml: {unlisted}"
    seen = set()
    for doc in k8s_docs():
        assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get("name"), doc
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"duplicate {key}"
        seen.add(key)
    kinds = {kind for kind, _ in seen}
    assert {"Deployment", "ConfigMap", "Secret", "Service", "ScaledObject", "CronJob",
            "PersistentVolumeClaim"} <= kinds


def test_configmap_and_secret_name_real_settings_and_validate_together(monkeypatch):
    config, secret = one("ConfigMap", "chatmod-config"), one("Secret", "chatmod-secrets")
    assert "data" not in secret and secret["stringData"], "the Secret template uses stringData"
    for name in list(config["data"]) + list(secret["stringData"]):
        settings_field(name)  # raises on a typo, naming the field
    for name in secret["stringData"]:
        assert name not in config["data"], f"{name} is set in both the ConfigMap and the Secret"
    for name, value in secret["stringData"].items():
        if "PASSWORD" in name:
            assert "REPLACE_ME" in value, f"{name}: the template must hold a placeholder, not a secret"
    for name, value in config["data"].items():
        assert isinstance(value, str), f"{name}: ConfigMap values must be strings (quote {value!r})"
        assert "PASSWORD" not in name, f"{name} belongs in the Secret"
    settings = settings_from(chatmod_env_of_base(), monkeypatch)
    assert settings.kafka.security_protocol.startswith("SASL")
    assert settings.kafka.sasl_password is not None and settings.redis.password is not None


def test_worker_deployment_probes_resources_and_shutdown(monkeypatch):
    deployment = one("Deployment", "chatmod-worker")
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = pod["containers"]
    settings = settings_from(chatmod_env_of_base(), monkeypatch)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert settings.worker.web_port in ports.values()
    assert settings.worker.web_host == "0.0.0.0", "probes come from outside the container"

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        return get["path"], port

    assert probe("readinessProbe") == ("/ready", settings.worker.web_port)
    assert probe("livenessProbe") == ("/health", settings.worker.web_port)
    if "startupProbe" in container:
        assert probe("startupProbe") == ("/health", settings.worker.web_port)

    resources = container["resources"]
    for part in ("requests", "limits"):
        assert resources[part].get("cpu") and resources[part].get("memory"), f"resources.{part}"
    cpu_limit = float(str(resources["limits"]["cpu"]).rstrip("m")) / (1000 if str(
        resources["limits"]["cpu"]).endswith("m") else 1)
    assert settings.models.threads is not None and settings.models.threads <= max(1, cpu_limit), (
        "CHATMOD_MODELS_THREADS must fit the CPU limit (ONNX Runtime would use every core of the node)")
    assert pod["terminationGracePeriodSeconds"] > settings.worker.shutdown_grace_s
    refs = {("ConfigMap", e["configMapRef"]["name"]) if "configMapRef" in e
            else ("Secret", e["secretRef"]["name"]) for e in container["envFrom"]}
    assert refs == {("ConfigMap", "chatmod-config"), ("Secret", "chatmod-secrets")}
    for env in container.get("env", []):
        settings_field(env["name"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"chatmod-model-store", "chatmod-feedback"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(settings.models.store) in mounts
    for claim in claims:
        one("PersistentVolumeClaim", claim)


def test_metrics_service_selects_the_worker_pods_on_the_web_port():
    service = one("Service", "chatmod-worker-metrics")
    pod = one("Deployment", "chatmod-worker")["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert port["targetPort"] in container_ports or port["targetPort"] in container_ports.values()


def test_scaled_object_scales_the_worker_on_its_consumer_group_lag(monkeypatch):
    scaled = one("ScaledObject", "chatmod-worker")
    assert scaled["apiVersion"].startswith("keda.sh/")
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == "chatmod-worker" and target.get("kind", "Deployment") == "Deployment"
    one("Deployment", target["name"])
    settings = settings_from(chatmod_env_of_base(), monkeypatch)
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["consumerGroup"] == settings.kafka.consumer_group
    assert meta["topic"] == settings.topics.messages
    assert meta["bootstrapServers"] == settings.kafka.bootstrap
    assert int(meta["lagThreshold"]) > 0
    low, high = scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]
    assert 1 <= low <= high <= settings.topics.partitions, "workers beyond the partition count would sit idle"
    auth = one("TriggerAuthentication", trigger["authenticationRef"]["name"])
    secret = one("Secret")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], ref
    keda_sasl = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}
    assert meta["sasl"] == keda_sasl[settings.kafka.sasl_mechanism]
    assert meta["tls"] == ("enable" if settings.kafka.security_protocol.endswith("SSL") else "disable")


CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, CRON_RANGES):
        for item in field.split(","):
            base, _, step = item.partition("/")
            if step and not (step.isdigit() and int(step) > 0):
                return False
            if base == "*":
                continue
            bounds = base.split("-")
            if len(bounds) > 2 or not all(b.isdigit() and low <= int(b) <= high for b in bounds):
                return False
            if len(bounds) == 2 and int(bounds[0]) > int(bounds[1]):
                return False
    return True


@pytest.mark.parametrize("expr,ok", [("0 3 * * 0", True), ("*/15 0-6 1,15 * 1-5", True), ("0 3 * *", False),
                                     ("60 3 * * 0", False), ("0 3 * * 8", False), ("0 5-2 * * *", False)])
def test_cron_check_itself(expr, ok):
    assert valid_cron(expr) is ok


def test_compose_retrainer_reads_the_workers_feedback_and_writes_their_store():
    compose = load_compose()
    retrainer, worker = compose["services"]["retrainer"], compose["services"]["worker"]
    assert retrainer["profiles"] == ["train"] and retrainer["command"][:2] == ["train", "schedule"]
    assert retrainer["build"]["args"]["CHATMOD_EXTRAS"] == "train"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in retrainer["volumes"]}
    worker_mounts = {v.split(":")[1]: v.split(":")[0] for v in worker["volumes"]}
    feedback = worker["environment"]["CHATMOD_FEEDBACK_STORE"]
    assert retrainer["environment"]["CHATMOD_FEEDBACK_STORE"] == feedback
    assert mounts[feedback] == worker_mounts[feedback], "the retrainer must read what the workers append"
    assert mounts["/var/lib/chatmod/model-store"] == worker_mounts["/var/lib/chatmod/model-store"]
    assert retrainer["environment"]["CHATMOD_REDIS_URL"] == worker["environment"]["CHATMOD_REDIS_URL"]


def test_retraining_cronjob_trains_and_promotes_into_the_shared_store():
    cron = one("CronJob", "chatmod-retrain")
    assert cron["apiVersion"] == "batch/v1"
    assert valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    (container,) = pod["containers"]
    assert container["image"].split(":")[0] == "chatmod-train"
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "chatmod train retrain" in script and "--task" in script
    refs = {next(iter(ref.values()))["name"] for ref in container.get("envFrom", [])}
    assert refs == {"chatmod-config", "chatmod-secrets"}, "the workers' store, feedback folder and Redis"
    for env in container.get("env", []):
        if env["name"].startswith(ENV_PREFIX):
            settings_field(env["name"])
        else:
            assert env["name"] in {"HF_HUB_OFFLINE"}, f"unexpected variable {env['name']}"
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert {"chatmod-model-store", "chatmod-feedback"} <= claims
    for claim in claims:
        one("PersistentVolumeClaim", claim)
    store_volume = next(v["name"] for v in pod["volumes"]
                        if v.get("persistentVolumeClaim", {}).get("claimName") == "chatmod-model-store")
    store_mounts = [m for m in container["volumeMounts"] if m["name"] == store_volume]
    assert store_mounts and not store_mounts[0].get("readOnly")
    worker = one("Deployment", "chatmod-worker")["spec"]["template"]["spec"]["containers"][0]
    assert store_mounts[0]["mountPath"] in {m["mountPath"] for m in worker["volumeMounts"]}
    pvc = one("PersistentVolumeClaim", "chatmod-model-store")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "several workers and the CronJob share the store"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_the_base():
    done = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    built = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert len(built) == len(k8s_docs())
    images = {c["image"] for d in built if d["kind"] in ("Deployment", "CronJob")
              for c in (d["spec"]["template"]["spec"]["containers"] if d["kind"] == "Deployment"
                        else d["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"])}
    assert all(":" in image for image in images), images


def test_redis_keeps_an_append_only_file_in_compose_and_on_kubernetes():
    """Per-message records survive a Redis restart: redeliveries then republish byte-identical results."""
    redis = load_compose()["services"]["redis"]
    command = [str(c) for c in redis["command"]]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(str(v).endswith(":/data") for v in redis["volumes"]), "the AOF must live on a volume"
    assert "redis-data" in load_compose()["volumes"]

    statefulset = one("StatefulSet", "chatmod-redis")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes" and args[args.index("--appendfsync") + 1] == "everysec"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data"}
    claims = {c["metadata"]["name"] for c in statefulset["spec"]["volumeClaimTemplates"]}
    assert {m["name"] for m in container["volumeMounts"]} <= claims
    service = one("Service", "chatmod-redis")
    assert service["spec"]["selector"] == statefulset["spec"]["template"]["metadata"]["labels"]
    host = chatmod_env_of_base()["CHATMOD_REDIS_URL"].split("//")[1].split(":")[0]
    assert host == service["metadata"]["name"], "the workers' Redis URL names this Service"
    secret_key = container["env"][0]["valueFrom"]["secretKeyRef"]["key"]
    assert secret_key in one("Secret", "chatmod-secrets")["stringData"]
