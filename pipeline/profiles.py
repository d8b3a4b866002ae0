"""Policy profiles: each community's rules, applied to the model's scores in the stream.

A profile (YAML or JSON, validated here) holds review and block thresholds per label, a mode (``enforce``,
or ``suggest``: advisory, never blocks), whether profanity alone is allowed, block and allow terms
(``pipeline/terms.py``), and the enforcement ladder (``pipeline/enforcement.py``). Profiles live in Redis,
each with a version the store assigns; channels map to profiles, and a channel without one gets the
profile named ``default`` (or, while none is stored, the built-in default: the model's thresholds,
enforce, no terms, no ladder). ``chatmod policy set`` validates a file before it is stored, and a worker
that reads a profile it cannot validate keeps the version it had: a bad profile never takes effect.

What a profile does to one message, in order (``CompiledProfile.decide``):
1. the decision from the thresholds (the model's, overridden per label by the profile);
2. profanity allowed: a decision driven only by ``toxic`` / ``obscene`` / ``severe_toxic``, on a text the
   model does not find targeted (``targeted`` under its calibrated threshold), becomes allow (reason
   ``rule:profanity-allowed``);
3. allow terms: a text holding one, not targeted and flagged for no insult, threat or identity hate, is
   allowed (``rule:allow-term``); an allow term never excuses a targeted attack;
4. block terms: any hit blocks (flag ``term``, reason ``term:block:<term-id>``);
5. suggest mode: ``block`` becomes ``review`` (reasons ``mode:suggest``, ``suggested:block``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.labels import DECIDING_LABELS
from pipeline.policy import Policy
from pipeline.terms import TermList

log = logging.getLogger("chatmod.profiles")

DEFAULT_PROFILE = "default"
PROFANITY_LABELS = frozenset({"toxic", "obscene", "severe_toxic"})  # what swearing alone may raise
ATTACK_LABELS = frozenset({"insult", "threat", "identity_hate"})  # aimed at someone: never excused
TARGETED_AT = 0.5  # the ``targeted`` signal's threshold where the model calibrated none
TERM_FLAG = "term"
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class LabelThresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    review: float | None = Field(None, ge=0.0, le=1.0)
    block: float | None = Field(None, ge=0.0, le=1.0)


class Rung(BaseModel):
    """At ``strikes`` or more (decayed), the user gets ``action``; ``timeout`` lasts ``minutes``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    strikes: float = Field(gt=0)
    action: Literal["warn", "hold", "timeout", "escalate"]
    minutes: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _minutes(self) -> Rung:
        if (self.action == "timeout") != (self.minutes is not None):
            raise ValueError("a timeout rung needs minutes, and only a timeout rung takes them")
        return self


class Strikes(BaseModel):
    """The strike ledger: a flagged message adds its decision's weight; strikes halve every ``half_life_s``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    half_life_s: float = Field(3600.0, gt=0)
    weights: dict[Literal["review", "block"], float] = Field(default_factory=lambda: {"review": 1.0, "block": 2.0})
    ladder: list[Rung] = Field(default_factory=list)

    @field_validator("ladder")
    @classmethod
    def _ascending(cls, value: list[Rung]) -> list[Rung]:
        levels = [r.strikes for r in value]
        if levels != sorted(set(levels)):
            raise ValueError(f"ladder rungs must climb: strikes {levels} are not strictly increasing")
        return value


class Flood(BaseModel):
    """Per user, over ``window_s``: more than ``max_messages`` messages, the same text more than
    ``max_repeats`` times, or a message with more than ``max_mentions`` mentions, is flagged ``flood``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: int = Field(10, ge=1, le=3600)
    max_messages: int = Field(8, ge=1)
    max_repeats: int = Field(3, ge=1)
    max_mentions: int = Field(5, ge=1)


class Raid(BaseModel):
    """Per channel: the flagged share of the last ``window_s`` (at least ``min_messages``) at or over
    ``flagged_share`` and ``over_baseline`` times the channel's long-run share is a raid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: int = Field(60, ge=5, le=3600)
    min_messages: int = Field(20, ge=1)
    flagged_share: float = Field(0.3, gt=0, le=1)
    over_baseline: float = Field(3.0, ge=1)


class Profile(BaseModel):
    """One community's rules (see the module docstring); the source format of ``chatmod policy set``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: int = Field(0, ge=0)  # assigned by the store: 1, 2, ... per name
    mode: Literal["enforce", "suggest"] = "enforce"
    thresholds: dict[str, LabelThresholds] = Field(default_factory=dict)
    allow_profanity: bool = False
    block_terms: list[str] = Field(default_factory=list)
    allow_terms: list[str] = Field(default_factory=list)
    strikes: Strikes = Field(default_factory=Strikes)
    flood: Flood | None = None
    raid: Raid | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"profile name {value!r}: lower-case letters, digits, '-', '_' and '.', at most 64")
        return value

    @field_validator("thresholds")
    @classmethod
    def _labels(cls, value: dict[str, LabelThresholds]) -> dict[str, LabelThresholds]:
        unknown = sorted(set(value) - set(DECIDING_LABELS))
        if unknown:
            raise ValueError(f"unknown labels {unknown}; thresholds take {list(DECIDING_LABELS)}")
        for label, t in value.items():
            if t.review is not None and t.block is not None and t.block < t.review:
                raise ValueError(f"{label}: block threshold {t.block} is below its review threshold {t.review}")
        return value

    @model_validator(mode="after")
    def _terms_compile(self) -> Profile:
        TermList(self.block_terms)  # raises a clear error for a malformed term
        TermList(self.allow_terms)
        return self

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def load_profile_file(path: Path) -> Profile:
    """A profile from a YAML or JSON file, validated; errors name the file and the field."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a profile is a mapping (name, mode, thresholds, ...)")
    return Profile.model_validate(data)


@dataclass(frozen=True)
class Verdict:
    """A profile's decision on one message."""

    decision: str
    flags: list[str]
    reasons: list[str] = field(default_factory=list)  # rule, term and mode codes, added to the result's reasons


class CompiledProfile:
    """A profile ready for the hot path: its policy over a model's thresholds and its term lists."""

    def __init__(self, profile: Profile, base: Policy):
        self.profile = profile
        self.ref = profile.ref
        review = dict(base.review)
        block = dict(base.block)
        for label, t in profile.thresholds.items():
            if label not in review:
                continue  # a label this model does not score
            review[label] = t.review if t.review is not None else review[label]
            block[label] = t.block if t.block is not None else max(block[label], review[label])
            if block[label] < review[label]:
                raise ValueError(f"profile {profile.ref}: {label} would block at {block[label]}, below its review "
                                 f"threshold {review[label]}")
        self.policy = Policy(labels=base.labels, review=review, block=block, signals=base.signals)
        self.targeted_at = base.signals.get("targeted", TARGETED_AT)
        self.block_terms = TermList(profile.block_terms)
        self.allow_terms = TermList(profile.allow_terms)

    def decide(self, decision: str, flags: list[str], tox: Mapping[str, float], text: str) -> Verdict:
        """Apply the profile to a decision made with ``self.policy`` (see the module docstring)."""
        reasons: list[str] = []
        deciding = [f for f in flags if f in DECIDING_LABELS]
        targeted = tox.get("targeted", 0.0) >= self.targeted_at or any(f in ATTACK_LABELS for f in deciding)
        if decision != "allow" and not targeted:
            if self.profile.allow_profanity and set(deciding) <= PROFANITY_LABELS:
                decision, reasons = "allow", ["rule:profanity-allowed"]
            elif self.allow_terms.size and self.allow_terms.find(text):
                decision, reasons = "allow", ["rule:allow-term"]
        hits = self.block_terms.find(text) if self.block_terms.size else []
        if hits:
            decision = "block"
            flags = [*flags, TERM_FLAG]
            reasons += [f"term:block:{tid}" for tid in dict.fromkeys(h.term_id for h in hits)]
        if self.profile.mode == "suggest" and decision == "block":
            decision = "review"
            reasons += ["mode:suggest", "suggested:block"]
        elif self.profile.mode == "suggest" and decision == "review":
            reasons.append("mode:suggest")
        return Verdict(decision, flags, reasons)


# ---------------------------------------------------------------- the store (Redis)


def open_profile_store(settings) -> ProfileStore:  # settings: pipeline.settings.Settings
    """The profile store in the worker's Redis (a short-lived sync client: the CLI and the reload thread)."""
    import redis as redis_lib

    r = settings.redis
    timeout = max(2.0, r.socket_timeout_s)
    client = redis_lib.Redis.from_url(r.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                      **r.credential_kwargs())
    return ProfileStore(client, r.key_prefix)


class ProfileStore:
    """Profiles and channel assignments in Redis (sync client: the CLI and the worker's reload thread).

    Keys (``prefix`` is ``CHATMOD_REDIS_KEY_PREFIX``): ``{prefix}:v1:profiles`` (hash: name -> JSON),
    ``{prefix}:v1:profile-channels`` (hash: channel -> name), ``{prefix}:v1:profiles-generation`` (a
    counter every change increments, so a worker re-reads only when something changed).
    """

    def __init__(self, client, prefix: str):
        self.client = client
        self.profiles_key = f"{prefix}:v1:profiles"
        self.channels_key = f"{prefix}:v1:profile-channels"
        self.generation_key = f"{prefix}:v1:profiles-generation"

    def generation(self) -> int:
        return int(self.client.get(self.generation_key) or 0)

    def put(self, profile: Profile) -> Profile:
        """Store ``profile`` as the next version of its name; returns it with that version."""
        current = self.get(profile.name)
        stored = profile.model_copy(update={"version": (current.version if current else 0) + 1})
        Profile.model_validate(stored.model_dump())  # the stored form is what workers will validate
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.profiles_key, profile.name, stored.model_dump_json())
        pipe.incr(self.generation_key)
        pipe.execute()
        return stored

    def get(self, name: str) -> Profile | None:
        raw = self.client.hget(self.profiles_key, name)
        return None if raw is None else Profile.model_validate_json(raw)

    def raw(self) -> dict[str, bytes]:
        return {k.decode(): v for k, v in self.client.hgetall(self.profiles_key).items()}

    def assignments(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.channels_key).items()}

    def assign(self, channel: str, name: str) -> None:
        if name != DEFAULT_PROFILE and self.get(name) is None:
            raise ValueError(f"no profile named {name!r}; store it first with `chatmod policy set FILE`")
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.channels_key, channel, name)
        pipe.incr(self.generation_key)
        pipe.execute()

    def remove(self, name: str) -> None:
        used = sorted(c for c, p in self.assignments().items() if p == name)
        if used:
            raise ValueError(f"profile {name!r} is assigned to channels {used[:5]}; reassign them first")
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.profiles_key, name)
        pipe.incr(self.generation_key)
        removed, _ = pipe.execute()
        if not removed:
            raise ValueError(f"no profile named {name!r}")


class Profiles:
    """What a worker applies: compiled profiles by name and the channel map; swapped whole on reload."""

    def __init__(self, profiles: Mapping[str, Profile], channels: Mapping[str, str], base: Policy,
                 generation: int = 0, fallback: Profile | None = None):
        self.generation = generation
        self.base = base
        self.fallback = fallback
        self.stored = dict(profiles)  # as read from the store (the built-in or file default is not among them)
        self.channels = dict(channels)
        self.compiled = {name: CompiledProfile(p, base) for name, p in profiles.items()}
        if DEFAULT_PROFILE not in self.compiled:
            self.compiled[DEFAULT_PROFILE] = CompiledProfile(fallback or Profile(name=DEFAULT_PROFILE), base)

    def for_channel(self, channel: str | None) -> CompiledProfile:
        name = self.channels.get(channel, DEFAULT_PROFILE) if channel is not None else DEFAULT_PROFILE
        return self.compiled.get(name) or self.compiled[DEFAULT_PROFILE]

    def refreshed(self, store: ProfileStore, base: Policy) -> Profiles:
        """The profiles as the store now holds them. A stored profile that fails validation (written to
        Redis by hand, or by a newer version) is refused and logged: the version this worker had stays."""
        generation = store.generation()
        kept: dict[str, Profile] = {}
        for name, raw in store.raw().items():
            try:
                kept[name] = Profile.model_validate_json(raw)
                CompiledProfile(kept[name], base)
            except ValueError as exc:
                previous = self.compiled.get(name)
                log.error("refused a stored profile; the previous version stays in force",
                          extra={"profile": name, "error": str(exc)[:300],
                                 "kept": previous.ref if previous else None})
                if previous is not None:
                    kept[name] = previous.profile
        return Profiles(kept, store.assignments(), base, generation, self.fallback)


def profiles_holder(settings) -> ProfilesHolder:  # settings: pipeline.settings.Settings
    """The profiles a worker (or a replay) applies: the Redis store, and the default profile file if set."""
    fallback = load_profile_file(settings.policy.default_profile) if settings.policy.default_profile else None
    return ProfilesHolder(open_profile_store(settings) if settings.redis.enabled else None, fallback)


class ProfilesHolder:
    """The worker's profiles: re-read from the store when its generation moves (a poll, or a control
    notice), compiled against the serving model's policy (recompiled when a model reload replaces it).
    Without a store (Redis disabled) every channel gets the built-in default."""

    def __init__(self, store: ProfileStore | None, fallback: Profile | None = None):
        if fallback is not None and fallback.name != DEFAULT_PROFILE:
            fallback = fallback.model_copy(update={"name": DEFAULT_PROFILE})  # it stands in for "default"
        self.store = store
        self.fallback = fallback
        self._profiles: dict[str, Profile] = {}
        self._channels: dict[str, str] = {}
        self.generation = -1
        self._compiled: Profiles | None = None

    def get(self, base: Policy) -> Profiles:
        compiled = self._compiled
        if compiled is None or compiled.base is not base or compiled.generation != self.generation:
            compiled = self._compiled = Profiles(self._profiles, self._channels, base, self.generation, self.fallback)
        return compiled

    def refresh(self, base: Policy) -> str:
        """Re-read the store if it changed: ``unchanged``, ``loaded`` or ``unavailable`` (Redis away: the
        profiles in force stay)."""
        if self.store is None:
            return "unchanged"
        import redis as redis_lib

        try:
            if self.store.generation() == self.generation:
                return "unchanged"
            previous = Profiles(self._profiles, self._channels, base, self.generation, self.fallback)
            fresh = previous.refreshed(self.store, base)
        except (OSError, redis_lib.RedisError) as exc:
            log.warning("profiles unavailable; the ones in force stay", extra={"error": str(exc)})
            return "unavailable"
        self._profiles = fresh.stored
        self._channels = fresh.channels
        self.generation = fresh.generation
        log.info("profiles loaded", extra={"generation": self.generation,
                                           "profiles": sorted(f"{n}@{p.version}" for n, p in self._profiles.items())})
        return "loaded"
