"""What the console's pages show and what their forms do, apart from HTTP: the queue with strike states,
verdicts as feedback labels, channel charts, models and policies."""

from __future__ import annotations

import json
import math
import time

from models.labels import DECIDING_LABELS, TOXICITY_LABELS
from models.registry import open_store
from pipeline.control import announce_current_models, announce_profiles_changed
from pipeline.enforcement import ledger_key, ledger_total
from pipeline.feedback import FeedbackStore
from pipeline.mood import channel_health
from pipeline.profiles import Profile, open_profile_store
from pipeline.settings import Settings
from pipeline.svgchart import Chart, Line, render


async def queue_view(console, wanted: dict[str, str | None]) -> dict:
    """Pending items matching ``wanted`` (channel, label, decision, profile), the most severe first, each
    with its user's strike total in its channel; and the verdict counts."""
    items = [i for i in await console.queue.pending(console.settings.console.queue_limit) if _matches(i["result"], wanted)]
    strikes = await _strikes(console, [i["result"] for i in items])
    for item, total in zip(items, strikes, strict=True):
        item["strikes"] = total
    return {"items": items, "verdicts": await verdict_counts(console)}


def _matches(result: dict, wanted: dict[str, str | None]) -> bool:
    if wanted.get("channel") and result.get("channel") != wanted["channel"]:
        return False
    if wanted.get("decision") and result.get("decision") != wanted["decision"]:
        return False
    if wanted.get("profile") and (result.get("profile") or "").split("@")[0] != wanted["profile"]:
        return False
    return not wanted.get("label") or f"label:{wanted['label']}" in result.get("reasons", [])


async def _strikes(console, results: list[dict]) -> list[float | None]:
    """Each result's user's decayed strike total in its channel now (None without a user)."""
    prefix = console.settings.redis.key_prefix
    keyed = [r for r in results if r.get("user")]
    if not keyed:
        return [None] * len(results)
    pipe = console.redis.pipeline(transaction=False)
    for r in keyed:
        pipe.hgetall(ledger_key(prefix, r.get("channel"), r["user"]))
    ledgers = iter(await pipe.execute())
    half_lives = await _half_lives(console, {(r.get("profile") or "").split("@")[0] for r in keyed})
    now = time.time()
    return [round(ledger_total(next(ledgers), now, half_lives.get((r.get("profile") or "").split("@")[0], 3600.0)), 2)
            if r.get("user") else None for r in results]


async def _half_lives(console, names: set[str]) -> dict[str, float]:

    names.discard("")
    if not names:
        return {}
    raw = await console.redis.hmget(f"{console.settings.redis.key_prefix}:v1:profiles", sorted(names))
    return {name: Profile.model_validate_json(r).strikes.half_life_s for name, r in zip(sorted(names), raw) if r}


async def verdict_counts(console) -> dict:
    """Verdicts the console published, and those in the feedback store (what the next retrain uses), per
    task; the store only where this console can read its folder."""
    published = await console.queue.verdicts_published()
    return {"published": published, "store": await console.store_counts()}


def feedback_store_counts(settings: Settings) -> dict[str, int] | None:

    root = settings.feedback.store
    if not root.is_dir():
        return None
    counts = {"toxicity": 0, "sentiment": 0}
    for record in FeedbackStore(root).read():
        counts["sentiment" if "sentiment" in record.feedback.labels else "toxicity"] += 1
    return counts


def feedback_labels(result: dict, action: str | None, labels: dict | None) -> dict[str, int]:
    """The feedback record's labels for a verdict. ``confirm``: the labels that flagged it (else those
    scored at 0.5 or more, else ``toxic``), as 1. ``overturn``: the moderator's corrected labels, every
    toxicity label 0 or 1 (all 0: not toxic, which also lifts the message's strike)."""
    if action == "confirm":
        flagged = [r.split(":", 1)[1] for r in result.get("reasons", []) if r.startswith("label:")]
        flagged = flagged or [k for k, v in result.get("toxicity", {}).items() if k in DECIDING_LABELS and v >= 0.5]
        return {label: 1 for label in flagged or ["toxic"]}
    if action == "overturn":
        if not isinstance(labels, dict):
            raise ValueError("an overturn needs the corrected labels: {label: 0|1, ...}")
        unknown = sorted(set(labels) - set(TOXICITY_LABELS))
        if unknown:
            raise ValueError(f"unknown labels {unknown}; toxicity labels are {list(TOXICITY_LABELS)}")
        if any(v not in (0, 1) for v in labels.values()):
            raise ValueError("labels are 0 or 1")
        return {label: int(labels.get(label, 0)) for label in TOXICITY_LABELS}
    raise ValueError("action must be confirm or overturn")


async def channel_charts(console) -> list[dict]:
    """Per active channel: SVG charts of message rate, flagged share, toxicity by label and mood."""
    out = []
    health = await channel_health(console.redis, console.settings.redis.key_prefix)
    for channel, series in health.items():
        first = next((i for i, s in enumerate(series) if s["n"]), len(series))
        series = series[max(0, min(first, len(series) - 10)):]  # from its first active minute, ten at least
        minutes = [s["minute"] for s in series]
        top = max(s["n"] for s in series)
        count_max = max(4.0, math.ceil(top * 1.1 / 4) * 4)  # whole-number ticks

        def clock(v: float) -> str:
            return time.strftime("%H:%M", time.localtime(v))

        def pct(v: float) -> str:
            return f"{v:.0%}"

        def chart(title, y_label, lines, y_max=None, y_format=pct):
            return render(Chart(title, "time (minute)", y_label, lines, y_max=y_max, x_format=clock, y_format=y_format,
                                x_from_zero=False, width=560, height=260))

        labels = sorted({k for s in series for k in s["toxicity"] if k in DECIDING_LABELS})
        classes = [c for c in ("negative", "neutral", "positive") if any(c in s["sentiment"] for s in series)]
        out.append({"channel": channel, "messages": int(sum(s["n"] for s in series)), "charts": [
            chart("messages per minute", "messages", [Line("messages", list(zip(minutes, [s["n"] for s in series])))],
                  count_max, y_format=lambda v: f"{v:,.0f}"),
            chart("flagged share", "share flagged",
                  [Line("flagged", list(zip(minutes, [s["flagged_share"] for s in series])), "#c0392b")], 1.0),
            chart("mean toxicity by label", "mean score",
                  [Line(label, [(m, s["toxicity"].get(label, 0.0)) for m, s in zip(minutes, series)]) for label in labels],
                  1.0),
            chart("mood", "share of messages",
                  [Line(c, [(m, s["sentiment"].get(c, 0.0)) for m, s in zip(minutes, series)],
                        {"negative": "#c0392b", "neutral": "#7f8c8d", "positive": "#27ae60"}[c]) for c in classes], 1.0),
        ]})
    return out


def models_view(settings: Settings) -> dict:
    """Current models per task, every model with its candidate state and gate report, the shadow."""
    registry = open_store(settings.models.store)
    current = {t: registry.current(t) for t in ("toxicity", "sentiment")}
    candidates = set(registry.candidates())
    rows = []
    for manifest in registry.manifests():
        retrain = manifest.metrics.get("retrain", {})
        rows.append({"ref": manifest.ref, "family": manifest.family, "tasks": [str(t) for t in manifest.tasks],
                     "serving": [t for t, ref in current.items() if ref == manifest.ref],
                     "candidate": manifest.ref in candidates, "validation": manifest.metrics.get("validation", {}),
                     "gate": retrain.get("gate"), "created": manifest.created_at.strftime("%Y-%m-%d %H:%M")})
    return {"current": current, "models": rows, "shadow": settings.models.shadow}


def change_models(settings: Settings, action: str, form) -> str:
    """Promote or roll back through the registry, then tell the workers; returns what happened."""
    registry = open_store(settings.models.store)
    if action == "promote":
        ref = str(form["ref"])
        tasks = registry.promote(ref)
        done = f"promoted {ref} for {', '.join(str(t) for t in tasks)}"
    elif action == "rollback":
        task = str(form["task"])
        done = f"{task} rolled back to {registry.rollback(task)}"
    else:
        raise ValueError(f"unknown action {action!r}")
    heard = announce_current_models(settings.redis, registry, f"console: {done}")
    return done + (f"; {heard} worker(s) notified" if heard is not None else "")


def policies_view(settings: Settings) -> dict:
    import yaml

    store = open_profile_store(settings)
    profiles = {name: Profile.model_validate_json(raw) for name, raw in store.raw().items()}
    return {"profiles": {name: yaml.safe_dump(json.loads(p.model_dump_json(exclude={"version"})), sort_keys=False)
                         for name, p in sorted(profiles.items())},
            "versions": {name: p.version for name, p in profiles.items()}, "assignments": store.assignments()}


def change_policies(settings: Settings, action: str, form) -> tuple[list[str], str]:
    """Store a profile (YAML source) or assign a channel; (errors to show inline, what happened)."""
    import yaml
    from pydantic import ValidationError

    store = open_profile_store(settings)
    try:
        if action == "set":
            data = yaml.safe_load(str(form.get("source", "")))
            if not isinstance(data, dict):
                return ["a profile is a mapping: name, mode, thresholds, block_terms, ..."], ""
            done = f"stored {store.put(Profile.model_validate(data)).ref}"
        elif action == "assign":
            store.assign(str(form["channel"]), str(form["name"]))
            done = f"channel {form['channel']} -> {form['name']}"
        else:
            return [f"unknown action {action!r}"], ""
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or 'profile'}: {e['msg']}" for e in exc.errors()], ""
    except (ValueError, KeyError, yaml.YAMLError) as exc:
        return [str(exc)], ""
    announce_profiles_changed(settings.redis, f"console: {done}")
    return [], done
