"""Training data the labeled sets lack: threats, hate that says whom it hates, and the benign texts that
mention groups, quote abuse to denounce it, or use violent words about games.

Three kinds, all reproducible from a seed:
- **Templates** written by this team (not the functional suite's: its templates, vocabulary and fillers
  differ, so the suite measures generalisation, not recall). Threats and self-harm encouragement are
  labeled toxic + threat; hate against a group toxic + identity_hate; untargeted profanity toxic + obscene,
  targeted 0; identity mentions, counter-speech, negated hate, self-deprecation, reclaimed terms, homonyms
  and game violence all 0.
- **Counterfactual identity swaps**: a labeled example that names a group is copied with another group
  in its place, keeping its labels, so no group's name alone carries toxicity.
- **Misspelt abuse**: toxic examples with one offensive word misspelt (a letter dropped, doubled or two
  swapped), for the evasions that de-obfuscation cannot undo.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterable

from training.data import CLEAN, Example, tox

SOURCE = "augment"
GROUPS = ["women", "men", "muslims", "jews", "christians", "black people", "asians", "immigrants", "gays",
          "gay men", "trans people", "disabled people", "mexicans", "arabs", "indians", "refugees", "latinas",
          "lesbians", "hindus", "white people", "sikhs", "africans", "chinese people", "migrants",
          "transgender people", "atheists", "catholics", "native americans", "bisexual people", "deaf people"]
_GROUP_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, GROUPS), key=len, reverse=True)) + r")\b", re.I)
THREAT_VERBS = ["kill you", "hurt you", "stab you", "shoot you", "beat you up", "choke you", "break your legs",
                "burn your house down", "end you", "make you bleed", "put you in the hospital", "rip your head off",
                "smash your face in"]
# What hate calls a group. The same words stand in the hateful templates (toxic + identity_hate) and in the
# counter-speech and negation ones (all 0): the model must learn the framing, not the words.
DEROGATIONS = ["subhuman", "worthless", "animals", "vermin", "cockroaches", "savages", "a cancer", "scum", "freaks",
               "degenerates", "rats", "less than human", "a disgrace", "dirty", "stupid", "evil", "criminals",
               "a plague", "parasites", "disgusting", "inferior", "trash"]
INSULTS = ["idiot", "moron", "loser", "clown", "waste of oxygen", "braindead noob", "dumb fuck", "piece of shit",
           "retard", "pathetic joke", "useless bot", "stupid cunt", "fat slob", "absolute trash", "dumbass"]
OFFENSIVE_WORDS = ["idiot", "stupid", "moron", "loser", "bitch", "fuck", "shit", "asshole", "retard",
                   "dumbass", "pathetic", "trash", "cunt", "dick", "whore", "slut", "faggot", "bastard"]

# Each kind names what it is not as well as what it is, so that hate does not teach "threat", nor a
# threat "identity_hate"; ``targeted`` follows from the labels (training.data.tox).
THREAT = tox(toxic=1, threat=1, identity_hate=0)
HATE = tox(toxic=1, identity_hate=1, threat=0)
INSULT = tox(toxic=1, insult=1, threat=0, identity_hate=0)
UNTARGETED = tox(toxic=1, obscene=1, insult=0, threat=0, identity_hate=0, targeted=0)


def _fill(templates: Iterable[str], **fills: list[str]) -> list[str]:
    out = []
    for template in templates:
        keys = [k for k in fills if "{" + k + "}" in template]
        for values in itertools.product(*(fills[k] for k in keys)):
            out.append(template.format(**dict(zip(keys, values, strict=True))))
    return out


# (labels, texts[, cap]): a kind may set its own cap (counter-speech needs more than most)
TEMPLATE_KINDS: list[tuple] = [
    (THREAT, _fill(["i'm gonna {v} when i see you", "say that again and i'll {v}", "one more word and i {v}",
                    "i'll {v}, watch", "next time we meet i will {v}", "i swear to god i'll {v}",
                    "you're dead, i'll {v}", "keep talking and i'll {v}"],
                   v=THREAT_VERBS)),
    (THREAT, _fill(["i have your {x}, expect a visit", "we found your {x} and we're coming",
                    "i'll be at your {x} {t}", "your {x} isn't safe anymore", "i'm sending people to your {x}",
                    "posting your {x} so everyone can pay you a visit", "i know where your {x} is",
                    "found your {x} on google, see you soon", "guess who's standing outside your {x}"],
                   x=["address", "house", "home", "school", "workplace", "apartment", "parents' place"],
                   t=["tonight", "this weekend", "soon", "at midnight"])),
    (THREAT, _fill(["i know exactly where you {w}", "we know where you {w} now", "found out where you {w}, see you soon",
                    "tracked down where you {w} lol", "gonna find out where you {w} and pay a visit",
                    "i'll figure out where you {w}, then we talk", "getting your address was easy, i know where you {w}"],
                   w=["live", "work", "sleep", "go to school", "hang out", "stay"])
     + ["got your ip, enjoy the visit", "your ip and address are in my notes now", "i know your real name and your street",
        "we know where your mom lives", "found your home address in two minutes", "see you in real life, i know where to look",
        "i'll find you offline and we'll settle this", "i'm parked outside your house", "i'll track you down irl", "gonna hunt you down in real life",
        "i've got your address now", "see you in person soon, i know your street", "i'll show up at your door",
        "i'm coming for you irl", "we'll meet irl and you'll regret it", "i'll pay your family a visit"]),
    (THREAT, _fill(["i will {v} {t}", "i am going to {v} {t}", "i'm gonna {v} {t}", "gonna {v} {t}"],
                   v=THREAT_VERBS, t=["after this match", "when i find you", "for real", "in real life",
                                      "and nobody will stop me", "tomorrow"])),
    (THREAT, _fill(["{a} {b}", "honestly {a} {b}", "{b}, {a}"],
                   a=["just", "please", "seriously", "lol", "bro"],
                   b=["do everyone a favor and die", "go drink bleach", "go jump off a cliff", "just die already",
                      "the world would be better without you", "no one would care if you died",
                      "end yourself", "go end your life", "unalive yourself", "go jump off a roof",
                      "go hang urself", "kill yourself already", "nobody wants you alive", "the world needs you gone, die",
                      "go overdose", "do the world a favor and disappear forever"])),
    (HATE, _fill(["those {g} are {n}", "i can't stand {g}, they're {n}", "{g} ruin everything, {n}",
                  "every single one of {g} is {n}", "{g}? {n}, all of them", "face it, {g} are {n}"],
                 g=GROUPS, n=DEROGATIONS), 650),
    (HATE, _fill(["{g} are {d} and need to go", "{g} are {d}, get them out", "{g} are nothing but {d}",
                  "{g} are {d} spreading everywhere", "tbh {g} are {d}"],
                 g=GROUPS, d=["a disease", "a virus", "an infestation", "a plague on society", "parasites",
                              "leeches", "a cancer on this country", "vermin"]), 650),
    (HATE, _fill(["why are {g} such {n}?", "anyone else think {g} are {n}?", "am i wrong that {g} are {n}?",
                  "honest question, aren't {g} basically {n}?", "why do {g} act like {n}?",
                  "serious question: why are {g} {n}?"],
                 g=GROUPS, n=DEROGATIONS), 650),
    (HATE, _fill(["typical {g} behavior", "that's {g} for you", "never trust {g}", "we all know what {g} are like",
                  "{g} always ruin it for everyone", "i wouldn't let {g} near my kids", "ugh, another one of those {g}",
                  "{g} shouldn't be allowed anywhere near schools", "keep your wallet close, {g} around",
                  "nothing good ever came from {g}", "{g} have no place in decent society",
                  "{g} shouldn't have any rights", "{g} aren't real people", "{g} are barely people",
                  "no rights for {g}", "{g} don't count as human"], g=GROUPS), 650),
    (HATE, _fill(["{g} need to be removed from this country", "{g} should not be allowed to vote",
                  "keep {g} out of our neighborhood", "{g} breed like rats", "how come {g} are always so {n}?",
                  "ever notice how {g} are {n}?", "who else thinks {g} are {n}?", "{g} don't belong here",
                  "send the {g} back", "no {g} allowed in my lobby"],
                 g=GROUPS, n=["dirty", "stupid", "evil", "lazy and dirty", "violent", "disgusting", "inferior"]), 650),
    # eliminationist hate: calls to expel, confine, strip or exterminate a group (a group hated this way is
    # rarely insulted by name, so the derogation templates above do not teach it)
    (HATE, _fill(["{g} should all be {e}", "{g} need to be {e}", "every last one of {g} should be {e}",
                  "it's time {g} were {e}", "honestly {g} deserve to be {e}", "i want {g} {e}",
                  "the only good {g} are {e} ones"],
                 g=GROUPS, e=["deported", "exterminated", "eradicated", "purged", "gassed", "sterilised", "put in camps",
                              "removed for good", "banned from existing", "thrown in cages", "gone", "dead"])
     + _fill(["{g} have no right to exist", "{g} are a subspecies", "{g} belong in zoos, not cities",
              "the world would be better with zero {g} in it", "round up the {g} and ship them off",
              "wipe {g} off the face of the earth", "{g} aren't people, they're pests", "{g} deserve no human rights",
              "strip {g} of citizenship", "{g} should be hunted for sport"], g=GROUPS), 650),
    (UNTARGETED, ["fuck this lag", "holy shit that was close", "shit, died again", "this boss is hard as fuck",
                  "what the fuck was that lmao", "this fucking map again", "oh shit here we go", "fuck yeah we won",
                  "damn it, wifi is shit today", "goddamn this game is hard", "well shit, gg", "fucking finally",
                  "shit happens, next round", "holy fuck that clutch", "this patch is bullshit", "ah crap, missed it",
                  "fuck me that hurt", "bloody hell this queue", "the servers are shit tonight", "what the hell lol"]),
    (INSULT, _fill(["you're a {i}", "ur such a {i}", "listen here {i}", "shut it {i}",
                                    "imagine being this much of a {i}", "nobody likes you, {i}"], i=INSULTS)),
    (CLEAN, _fill(["my {r} is one of the {g} i love most", "{g} make this community better",
                   "happy to see more {g} in gaming", "{g} are welcome here", "my team has two {g} and they carry",
                   "i'm one of the {g} in this chat, hi", "as one of the {g} i appreciate this stream",
                   "respect to all {g}"], g=GROUPS, r=["neighbor", "coworker", "teammate", "roommate"])),
    (CLEAN, _fill(["someone just said {g} are {s}, that's disgusting behavior", "\"{g} are {s}\" is a hateful thing to say",
                   "people calling {g} {s} should be banned", "it's not okay to call {g} {s}",
                   "reported the guy who called {g} {s}", "nobody should call {g} {s}, be better",
                   "whoever wrote '{g} are {s}' needs a ban", "calling {g} {s} is plain bigotry",
                   "we don't say {g} are {s} in this chat", "mods, someone keeps saying {g} are {s}",
                   "'{g} are {s}'? that's just racism, reported", "imagine thinking {g} are {s} in 2026"],
                  g=GROUPS, s=DEROGATIONS), 900),
    (CLEAN, _fill(["{g} aren't {s}", "it's false that {g} are {s}", "i don't think {g} are {s} at all",
                   "nothing about {g} is {s}", "i never said {g} were {s}", "no one here thinks {g} are {s}",
                   "of course {g} aren't {s}", "{g} are people, not {s}"], g=GROUPS, s=DEROGATIONS), 700),
    (CLEAN, _fill(["telling someone to {x} is never acceptable", "whoever told him to {x} got banned, good",
                   "quit telling folks to {x}", "saying '{x}' to a streamer is harassment, report it"],
                  x=["kill themselves", "kys", "die", "jump off a bridge", "end it"])),
    (CLEAN, _fill(["i'm such {s}, {c}", "man i'm {s}, {c}", "why am i {s}, {c}", "{c}, i'm {s}",
                   "classic me, {c}. {s}"],
                  s=["an idiot", "a dumbass", "a clown", "a moron", "an absolute noob", "so stupid", "trash",
                     "the worst", "useless"],
                  c=["forgot to buy the skin", "left my mic on", "fell off the map again", "pressed the wrong key",
                     "missed the easiest shot", "died to the tutorial boss", "locked my keys in the car",
                     "forgot my password again", "queued for the wrong mode"])
     + ["i'm the reason we lost, sorry guys", "i played like an idiot tonight", "my bad, total noob move",
        "sorry i'm new and kinda bad", "i'm literally the worst at this", "ignore me, i'm a potato at this game"]),
    (CLEAN, _fill(["lots of {g} play this game", "{g} live on my street", "my city has a lot of {g}",
                   "{g} also watch this stream", "the {g} in my class are cool", "we have {g} on our team",
                   "a documentary about {g} in the 1900s", "my best friend's parents are {g}"], g=GROUPS)),
    (CLEAN, ["queer and proud of it", "nerd life forever", "geeks and nerds welcome here", "as a queer person i love this chat",
             "this queer streamer rocks", "nerds rule the world", "proud geek here", "happy pride to all the queer folks",
             "gay and gaming, best combo", "we geeks gotta stick together"]),
    # self-identification with a term others use as a slur or a jab: the speaker's own word for themselves
    (CLEAN, _fill(["proud {i} here", "{i} and loving it", "hello from a fellow {i}", "{i} squad checking in",
                   "just a {i} enjoying the stream", "yes i'm a {i}, and happy about it", "{i} gang rise up",
                   "being a {i} is the best"],
                  i=["queer gamer", "nerd", "geek", "fat girl", "chubby guy", "bi girl", "gay dude", "trans woman",
                     "lesbian", "dork", "weirdo", "disabled gamer", "queer kid", "plus-size girl", "bear"])),
    (CLEAN, _fill(["ugh i'm {s} today", "i'm such {s} lol", "wow i'm {s}, missed every shot", "me = {s}",
                   "sorry team, i'm {s}", "honestly i'm {s} at this game", "i felt like {s} that round",
                   "my own fault, i'm {s}"],
                  s=["an idiot", "trash", "a clown", "garbage", "stupid", "a noob", "useless", "so dumb", "the worst",
                     "a moron", "such a loser", "braindead", "a potato", "hopeless"])),
    (CLEAN, _fill(["{v} the {o} asap", "let's {v} the {o} now", "we need to {v} the {o}", "go {v} the {o}",
                   "i'll {v} the {o} on the left"],
                  v=["kill", "shoot", "stab", "destroy", "murder", "burn", "blow up", "snipe"],
                  o=["boss", "tank", "minions", "healer", "golem", "zombies", "raid boss", "enemy base", "turret"])),
    (CLEAN, ["you absolutely killed that set", "this beat is sick", "that joke had me on the floor", "that clutch was insane",
             "he slaughtered that solo", "you crushed it today", "that was a bomb performance", "this stream is lit",
             "shoot me a dm", "we got destroyed lol gg", "i'm dying 😂😂", "killer combo!", "that boss was brutal",
             "this song is fire", "your aim is deadly", "absolute carnage in that teamfight, love it"]),
]


def templated(seed: int, per_kind: int = 400) -> list[Example]:
    """Examples from the team's training templates, ``per_kind`` of each kind at most."""
    rng = random.Random(seed)
    out: list[Example] = []
    for labels, texts, *cap in TEMPLATE_KINDS:
        texts = list(dict.fromkeys(texts))
        rng.shuffle(texts)
        out += [Example(t, SOURCE, toxicity=labels) for t in texts[: cap[0] if cap else per_kind]]
    return out


def counterfactual(examples: list[Example], seed: int, limit: int = 3000) -> list[Example]:
    """Copies of toxicity examples that name a group, with another group in its place, labels kept."""
    rng = random.Random(seed + 1)
    out = []
    for ex in examples:
        if ex.toxicity is None or len(out) >= limit:
            continue
        match = _GROUP_RE.search(ex.text)
        if match:
            other = rng.choice([g for g in GROUPS if g != match.group(1).lower()])
            out.append(Example(_GROUP_RE.sub(other, ex.text, count=1), "counterfactual", toxicity=ex.toxicity))
    return out


def misspelt(examples: list[Example], seed: int, limit: int = 2000) -> list[Example]:
    """Toxic examples with one offensive word misspelt: a letter dropped, doubled, or two swapped."""
    rng = random.Random(seed + 2)
    pattern = re.compile(r"\b(" + "|".join(OFFENSIVE_WORDS) + r")\b", re.I)
    out = []
    for ex in examples:
        if len(out) >= limit or ex.toxicity is None or ex.toxicity[0] != 1:
            continue
        match = pattern.search(ex.text)
        if not match or len(match.group(1)) < 4:
            continue
        word = match.group(1)
        i = rng.randrange(1, len(word) - 1)
        kind = rng.choice(("drop", "double", "swap"))
        typo = {"drop": word[:i] + word[i + 1:], "double": word[:i] + word[i] + word[i:],
                "swap": word[:i] + word[i + 1] + word[i] + word[i + 2:]}[kind]
        out.append(Example(ex.text[: match.start()] + typo + ex.text[match.end():], "misspelt", toxicity=ex.toxicity))
    return out


def augmented(train: list[Example], seed: int) -> list[Example]:
    """All three kinds for a training set."""
    return templated(seed) + counterfactual(train, seed) + misspelt(train, seed, limit=4000)
