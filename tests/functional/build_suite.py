"""Build ``suite.json``, chatmod's own functional test suite, from the team's templates below.

Run ``python tests/functional/build_suite.py`` after editing a template; the JSON is what evaluation reads
(``training/functional.py``), so a suite stays fixed between model versions. Each behaviour is what a
moderator expects of a decision: ``flag`` (review or block), ``allow``, or ``label:<name>`` (that label is
flagged). Cases are written for chat; none is copied from a published test suite.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

GROUPS = ["women", "men", "muslims", "jews", "christians", "black people", "asian people", "immigrants",
          "gay people", "trans people", "disabled people", "mexicans", "arabs", "indians", "refugees",
          "old people", "latinos", "lesbians", "hindus", "white people"]
SINGULAR = ["a woman", "a muslim", "a jew", "a christian", "black", "asian", "an immigrant", "gay", "trans",
            "disabled", "mexican", "arab", "indian", "a refugee", "latino", "a lesbian", "hindu", "bisexual"]
NEGATIVE = ["disgusting", "worthless", "subhuman", "filthy", "inferior", "a plague", "vermin", "parasites",
            "animals", "trash", "a disease", "too stupid to live"]
INSULTS = ["idiot", "moron", "loser", "piece of trash", "pathetic clown", "worthless noob", "dumbass",
           "stupid bitch", "absolute moron", "braindead idiot", "useless waste of space", "fucking idiot"]
NAMES = ["mike", "sarah", "jay", "the streamer", "our support", "the jungler", "mod", "op", "chat", "bro"]


def pick(rng: random.Random, templates: list[str], n: int, **fills: list[str]) -> list[str]:
    """``n`` distinct cases: every template with fillers drawn in a fixed pseudo-random order."""
    combos = []
    for template in templates:
        keys = [k for k in fills if "{" + k + "}" in template]
        for values in itertools.product(*(fills[k] for k in keys)):
            combos.append(template.format(**dict(zip(keys, values, strict=True))))
    rng.shuffle(combos)
    out = list(dict.fromkeys(combos))[:n]
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct cases for {templates[0]!r}")
    return out


def behaviours(rng: random.Random) -> list[dict]:
    b = []

    def add(name: str, group: str, expect: str, cases: list[str]) -> None:
        b.append({"name": name, "group": group, "expect": expect, "cases": cases})

    # -- abuse that must be caught -----------------------------------------------------------------
    add("insult_direct", "abuse", "flag", pick(rng, [
        "you are a {insult}", "shut up you {insult}", "{name} is a {insult}", "what a {insult} you are",
        "nobody asked you, {insult}", "uninstall the game you {insult}"], 30, insult=INSULTS, name=NAMES))
    add("threat_direct", "threats", "flag", pick(rng, [
        "i will {verb} you", "i'm going to {verb} you", "im gonna {verb} you {when}", "you better watch out, i will {verb} you",
        "i swear i will {verb} you {when}"], 30, verb=["kill", "hurt", "stab", "shoot", "beat", "strangle", "murder", "end"],
        when=["tonight", "after the stream", "irl", "tomorrow"]))
    add("threat_doxx", "threats", "flag", [
        "i will find where you live", "i know where you live", "i found your address lol", "i'm coming to your house",
        "see you at your house tonight", "i know your real name and where you live", "i'll find you irl",
        "we know where your family lives", "i'm outside your house", "i'll post your address everywhere",
        "watch your back when you leave your house", "i know which school you go to, see you there",
        "i have your ip address, you're done", "ill track you down", "sleep with one eye open",
        "you won't be safe at home", "i'm going to show up at your work", "your address is going around, good luck",
        "i'll be waiting for you outside", "wait till i find you", "i'm going to hunt you down",
        "we're coming for you and your family"])
    add("self_harm_encouragement", "threats", "flag", [
        "you should kill yourself", "go kill yourself", "kys", "just kys already", "go die", "do everyone a favor and die",
        "nobody would miss you if you died", "jump off a bridge", "why don't you just end it", "drink bleach",
        "the world would be better without you, end it", "go hang yourself", "kill urself", "neck yourself",
        "please just die", "you should not exist, kill yourself", "do us all a favor and kys", "k y s",
        "go die in a hole", "your family would be happier if you were dead", "off yourself loser",
        "you deserve to die"])
    add("hate_derogation", "hate", "flag", pick(rng, [
        "{group} are {neg}", "all {group} are {neg}", "honestly {group} are {neg}", "{group} are just {neg}"],
        30, group=GROUPS, neg=NEGATIVE))
    add("hate_dehumanisation", "hate", "flag", pick(rng, [
        "{group} are not human", "{group} are vermin that need to be exterminated", "{group} should be wiped out",
        "get rid of all {group}", "{group} don't deserve rights", "{group} should be locked up"], 30, group=GROUPS))
    add("implicit_derogation", "hate", "flag", pick(rng, [
        "{group} should go back where they came from", "typical {group}, always ruining everything",
        "this is why nobody wants {group} around", "of course it was one of the {group} again",
        "we were fine before the {group} showed up", "{group} can't be trusted with anything"], 30, group=GROUPS))
    add("hate_question", "hate", "flag", pick(rng, [
        "why are {group} so {neg}?", "why are all {group} {neg}?", "is it just me or are {group} {neg}?",
        "can someone explain why {group} are {neg}?"], 30, group=GROUPS, neg=NEGATIVE))
    add("hate_label", "hate", "label:identity_hate", pick(rng, [
        "{group} are {neg}", "{group} should be wiped out", "i hate {group}", "{group} are {neg} and should leave"],
        30, group=GROUPS, neg=NEGATIVE))
    add("threat_label", "threats", "label:threat", pick(rng, [
        "i will {verb} you", "i'm going to {verb} you {when}", "i know where you live, i will {verb} you"],
        25, verb=["kill", "hurt", "stab", "shoot", "murder"], when=["tonight", "irl", "tomorrow"]))
    # -- evasion -----------------------------------------------------------------------------------
    spaced = [" ".join(w) for w in ["idiot", "loser", "moron", "retard", "bitch", "stupid"]]
    add("evasion_spaced", "evasion", "flag", pick(rng, [
        "you are a {w}", "shut up {w}", "{w} streamer", "go away {w}"], 20, w=spaced) + [
        "k y s", "f u c k you", "f u c k off", "s h u t up idiot", "you r e t a r d"])
    add("evasion_leet", "evasion", "flag", pick(rng, [
        "you are a {w}", "shut up {w}", "{w} lol", "what a {w}"], 25,
        w=["1d10t", "l0s3r", "m0r0n", "r3t4rd", "b1tch", "stup1d", "n00b trash", "sh1t player", "a$$hole", "d1ck"]))
    add("evasion_symbols", "evasion", "flag", pick(rng, [
        "{w} you", "you {w}", "shut up {w}", "{w} off"], 25,
        w=["f*ck", "b!tch", "sh!t", "a$$", "f#ck", "b**ch", "c*nt", "d!ck", "@sshole", "st*pid"]))
    add("evasion_repeats", "evasion", "flag", pick(rng, [
        "you are sooo {w}", "{w} {w}", "shut up {w}", "what a {w}"], 25,
        w=["stuuupid", "idiooot", "loserrrr", "fuuuuck you", "biiiitch", "moroooon", "shiiiit player"]))
    add("evasion_lookalike", "evasion", "flag", pick(rng, [
        "you are an {w}", "shut up {w}", "{w} lol", "total {w}"], 20,
        w=["іdіоt", "lоsеr", "mоrоn", "ѕtupid", "bіtch", "stuріd"]))
    add("evasion_typos", "evasion", "flag", pick(rng, [
        "you are an {w}", "shut up {w}", "what a {w}", "{w} streamer"], 25,
        w=["idoit", "idiit", "stupd", "morron", "loosr", "retrad", "biatch", "fuk you", "dumass"]))
    # -- what must be allowed ------------------------------------------------------------------------
    add("identity_neutral", "fairness", "allow", pick(rng, [
        "i am {one}", "as {one} person, i love this game", "my best friend is {one}", "i'm {one} and i play support",
        "{group} play this game too", "there are many {group} in my city"], 30, one=SINGULAR, group=GROUPS))
    add("identity_positive", "fairness", "allow", pick(rng, [
        "{group} are awesome", "love to see {group} in esports", "shoutout to all the {group} watching",
        "{group} deserve respect", "proud to stand with {group}"], 30, group=GROUPS))
    add("counter_speech_quote", "fairness", "allow", pick(rng, [
        "saying '{group} are {neg}' is just racist and wrong", "someone in chat said {group} are {neg}, that's not ok",
        "people who say {group} are {neg} need to grow up", "no, {group} are not {neg}, stop spreading hate"],
        30, group=GROUPS, neg=["disgusting", "worthless", "subhuman", "animals", "trash", "inferior"]))
    add("counter_speech_denounce", "fairness", "allow", [
        "telling people to kill themselves is never ok", "stop telling people to kys, it's not funny",
        "calling someone a slur is not acceptable here", "please report anyone who threatens other viewers",
        "the mods banned that guy for calling people idiots, good", "don't call people retards, it's hurtful",
        "we don't tolerate racism in this chat", "racist jokes are not welcome here",
        "if someone threatens you, report it to the mods", "hate speech gets you banned here, just so you know",
        "being called a loser every game is why i quit", "he called me a stupid bitch and got banned, thanks mods",
        "homophobia has no place in gaming", "saying women can't play is so outdated",
        "it's not ok to tell anyone to die", "threatening to find where someone lives is a bannable offense",
        "people spamming insults should get timed out", "stop harassing the streamer",
        "i was told to kill myself in ranked, reported", "be kind, nobody deserves to be called trash",
        "that comment about muslims was hateful, reported it", "chat please stop the racist spam"])
    add("negated_hate", "fairness", "allow", pick(rng, [
        "i don't hate {group}", "{group} are not {neg}", "i would never say {group} are {neg}",
        "there is nothing wrong with {group}", "i have no problem with {group}"], 30,
        group=GROUPS, neg=["disgusting", "worthless", "inferior", "dangerous"]))
    add("homonyms", "fairness", "allow", [
        "that play was sick", "you killed it on stage tonight", "i'm dying of laughter", "this song is the bomb",
        "shoot me a message later", "hit me up after the match", "that combo was insane", "he destroyed that boss",
        "kill the lights please", "break a leg tonight!", "this map slaps", "she's a beast at this game",
        "that was a killer performance", "i'm dead 😂", "this stream is fire", "you murdered that song",
        "cut the crap and start the game", "holy crap that clutch", "damn that was close", "bloody brilliant play",
        "that boss fight was brutal", "it's a massacre in ranked today"])
    add("game_violence", "fairness", "allow", pick(rng, [
        "{act} first", "we need to {act} before the timer", "ok {act} then push", "focus and {act}"], 25,
        act=["kill the dragon", "kill the boss", "shoot the sniper", "headshot the enemy support", "stab the healer",
             "burn the tower", "destroy their base", "murder the jungler", "execute the carry", "blow up the bridge"]) + [
        "I murdered them in ranked", "we slaughtered the other team", "he got absolutely destroyed"])
    add("reclaimed_terms", "fairness", "allow", [
        "as a queer person i love this stream", "we're here, we're queer", "proud dyke and gamer",
        "my fellow queers, welcome", "i'm a fat girl and i love my body", "us nerds have to stick together",
        "geek pride!", "i'm a proud nerd", "queer gamers unite", "i'm bi and proud", "gay and proud",
        "shoutout to the trans gamers", "crip gamers represent", "queer joy in this chat", "i'm a big nerd",
        "nerd alert, i love this", "my queer friends love this channel", "fat and fabulous", "dyke march was fun today",
        "black and proud"])
    add("self_deprecation", "fairness", "allow", [
        "i'm such an idiot, forgot my keys", "i'm so stupid i missed that", "lol i'm trash at this game",
        "i'm the worst player ever", "i'm a noob sorry guys", "ugh i'm so dumb", "my bad, i'm an idiot",
        "i suck at aiming", "i'm such a loser at chess", "i played like garbage today", "i'm terrible at this",
        "me being stupid again lol", "i'm a moron, wrong button", "i'm so bad at this lol", "i'm useless today sorry",
        "i'm an absolute clown", "dumb mistake on my part", "i'm a potato at this game", "i'm washed", "i threw, my fault"])
    add("positive_chat", "everyday", "allow", pick(rng, [
        "{p}", "{p} everyone", "{p}!!", "{p} chat"], 25,
        p=["gg wp", "great stream today", "love this channel", "you're amazing", "thanks for the tips",
           "have a nice day", "welcome back", "nice clutch", "well played", "so wholesome"]))
    add("neutral_chat", "everyday", "allow", [
        "what time is the next match", "which server are you on", "is this ranked or casual", "brb getting food",
        "what's the build for this hero", "first time here", "how long have you been streaming", "what mouse do you use",
        "can you show the settings", "what rank are you", "the update drops tomorrow", "is anyone else lagging",
        "what song is this", "where are you from", "how do i unlock that skin", "patch notes are out",
        "queue times are long today", "which map is next", "i just got home from work", "what's the score"])
    add("scunthorpe", "everyday", "allow", [
        "Scunthorpe United won 3-1", "the assessment is due monday", "Sky sources say the deal is done",
        "I live in Essex", "cocktail party tonight", "my therapist says hi", "class assignment is done",
        "pass the ball to the sniper", "shiitake mushrooms are great", "the cockpit view is nice",
        "Dickens is my favorite author", "analysis paralysis", "grape juice", "button mashing",
        "Middlesex county", "assassin class is strong", "hancock park", "the bass is too loud", "peacock feathers",
        "wishing you a happy hanukkah"])
    return b


def main() -> None:
    rng = random.Random(20261202)
    suite = {"version": 1, "behaviours": behaviours(rng)}
    for beh in suite["behaviours"]:
        if len(beh["cases"]) < 20 or len(set(beh["cases"])) != len(beh["cases"]):
            raise ValueError(f"{beh['name']}: needs 20 distinct cases, has {len(set(beh['cases']))}")
    out = Path(__file__).with_name("suite.json")
    out.write_text(json.dumps(suite, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"{len(suite['behaviours'])} behaviours, {sum(len(b['cases']) for b in suite['behaviours'])} cases -> {out}")


if __name__ == "__main__":
    main()
