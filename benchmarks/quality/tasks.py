"""Four generated text-classification tasks for the merge-quality experiment.

Everything is generated from word lists with a fixed data seed, so the experiment needs no
download. The tasks are chosen to be learnable in a few dozen optimizer steps but different
from each other, and not solved by a linear probe on the frozen sentence embedding:

* ``sentiment`` (2 classes) - short reviews; the polarity word can be negated ("not", "never",
  "hardly") and a "but" clause overrides the first one. The probe sees the adjectives but not
  how the sentence composes them.
* ``agent`` (2 classes) - did a person or an animal do it: "the dog bit the farmer" (animal),
  "the dog was bitten by the farmer" (person). Both sentences hold the same kind of words;
  only word order and voice tell.
* ``grammar`` (2 classes) - is subject-verb agreement right: "the keys to the cabinet are
  missing" vs "the keys to the cabinet is missing"; an attractor noun of the other number
  usually stands between subject and verb.
* ``parity`` (2 classes) - is the number written in words ("forty three red apples") odd or even.

Each task has disjoint train / validation / test sentences.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DATA_SEED = 1234


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: list[int]


@dataclass(frozen=True)
class Task:
    name: str
    classes: tuple[str, ...]
    train: Split
    val: Split
    test: Split

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# -- sentiment --------------------------------------------------------------------------------

_POS = ("great good excellent wonderful lovely delightful superb pleasant fantastic brilliant "
        "amazing enjoyable charming perfect fine nice solid impressive outstanding terrific "
        "friendly tasty fresh comfortable clean").split()
_NEG = ("bad awful terrible horrible poor dreadful boring dull mediocre disappointing nasty "
        "unpleasant lousy weak bland rude stale noisy dirty slow cheap annoying painful "
        "tedious sloppy").split()
_THINGS = ("movie film show book meal food service hotel room staff trip concert album game "
           "coffee pizza ride visit lecture class app phone car seat view").split()
_NEGATORS = ("not", "never", "hardly", "not at all", "far from")
_INTENS = ("", "", "", "very ", "really ", "quite ", "truly ", "rather ")
_ARTS = ("the", "this", "that", "our", "my")
_VERBS_BE = ("was", "is", "seemed", "felt", "looked")


def _sent_clause(rng: random.Random, thing: str | None = None) -> tuple[str, int]:
    pos = rng.random() < 0.5
    adj = rng.choice(_POS if pos else _NEG)
    thing = thing or rng.choice(_THINGS)
    verb = rng.choice(_VERBS_BE)
    neg = rng.random() < 0.45
    if neg:
        negator = rng.choice(_NEGATORS)
        if negator == "not at all":
            text = f"{rng.choice(_ARTS)} {thing} {verb} not {adj} at all"
        else:
            text = f"{rng.choice(_ARTS)} {thing} {verb} {negator} {rng.choice(_INTENS)}{adj}"
    else:
        text = f"{rng.choice(_ARTS)} {thing} {verb} {rng.choice(_INTENS)}{adj}"
    label = int(pos) ^ int(neg)
    return text, label


def _sentiment(rng: random.Random) -> tuple[str, int]:
    text, label = _sent_clause(rng)
    if rng.random() < 0.4:
        # "A but B": B decides. Pick B with the other polarity most of the time so the first
        # clause is a misleading cue.
        for _ in range(20):
            text2, label2 = _sent_clause(rng)
            if label2 != label or rng.random() < 0.25:
                break
        text, label = f"{text} but {text2}", label2
    return text, label


# -- agent: who did it ----------------------------------------------------------------------

_PEOPLE = ("boy girl doctor farmer teacher child woman man nurse baker sailor hunter "
           "king student").split()
_ANIMALS = "dog cat horse snake bee goose bull wolf fox bear monkey rat lion spider".split()
_ACTIONS = (("chased", "chased"), ("bit", "bitten"), ("pushed", "pushed"), ("kicked", "kicked"),
            ("followed", "followed"), ("scared", "scared"), ("saw", "seen"), ("woke", "woken"),
            ("found", "found"), ("watched", "watched"), ("attacked", "attacked"),
            ("ignored", "ignored"), ("fed", "fed"), ("hurt", "hurt"))
_WHEN = ("", "", "", "yesterday", "last night", "in the morning", "again", "near the barn")


def _agent(rng: random.Random) -> tuple[str, int]:
    person, animal = rng.choice(_PEOPLE), rng.choice(_ANIMALS)
    active, passive = rng.choice(_ACTIONS)
    animal_did_it = rng.random() < 0.5
    doer, other = (animal, person) if animal_did_it else (person, animal)
    if rng.random() < 0.5:
        text = f"the {doer} {active} the {other}"
    else:
        text = f"the {other} was {passive} by the {doer}"
    when = rng.choice(_WHEN)
    return (f"{text} {when}" if when else text), int(animal_did_it)


# -- grammar: subject-verb agreement across an attractor ---------------------------------------

_NOUNS = (("key", "keys"), ("dog", "dogs"), ("book", "books"), ("letter", "letters"),
          ("car", "cars"), ("teacher", "teachers"), ("box", "boxes"), ("child", "children"),
          ("road", "roads"), ("song", "songs"), ("bridge", "bridges"), ("painting", "paintings"),
          ("woman", "women"), ("report", "reports"), ("lamp", "lamps"), ("horse", "horses"))
_PREPS = ("on", "near", "of", "behind", "in", "with", "from", "next to", "by", "under")
_PLACES = (("table", "tables"), ("window", "windows"), ("house", "houses"), ("door", "doors"),
           ("farm", "farms"), ("chair", "chairs"), ("river", "rivers"), ("tree", "trees"),
           ("cabinet", "cabinets"), ("garden", "gardens"))
_VERBS_AGREE = {("is", "are"): ("broken", "here", "new", "red", "old", "missing", "ready"),
                ("was", "were"): ("lost", "found", "stolen", "cheap", "heavy", "late"),
                ("has", "have"): ("gone", "arrived", "changed", "failed", "vanished")}


def _grammar(rng: random.Random) -> tuple[str, int]:
    noun = rng.choice(_NOUNS)
    plural = rng.random() < 0.5
    subj = noun[plural]
    text = f"the {subj}"
    if rng.random() < 0.85:  # an attractor noun between subject and verb, usually of the other number
        place = rng.choice(_PLACES)
        attr_plural = (not plural) if rng.random() < 0.7 else plural
        text = f"{text} {rng.choice(_PREPS)} the {place[attr_plural]}"
    verbs = rng.choice(list(_VERBS_AGREE))
    grammatical = rng.random() < 0.5
    verb = verbs[plural == grammatical]
    return f"{text} {verb} {rng.choice(_VERBS_AGREE[verbs])}", int(grammatical)


# -- parity of a number in words ------------------------------------------------------------

_ONES = "zero one two three four five six seven eight nine".split()
_TEENS = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ITEMS = ("apples books chairs birds coins cups stones letters boxes trees lamps keys shirts "
          "cars houses pencils").split()
_ADJ = ("", "", "red", "old", "small", "heavy", "new", "green", "broken", "shiny")
_PARITY_TEMPLATES = ("{n} {adj}{items}", "there were {n} {adj}{items}", "we counted {n} {adj}{items}",
                     "she bought {n} {adj}{items} yesterday", "{n} {adj}{items} on the table")


def number_words(n: int) -> str:
    if n < 10:
        return _ONES[n]
    if n < 20:
        return _TEENS[n - 10]
    if n < 100:
        t, o = divmod(n, 10)
        return _TENS[t] if o == 0 else f"{_TENS[t]} {_ONES[o]}"
    h, r = divmod(n, 100)
    return f"{_ONES[h]} hundred" + ("" if r == 0 else f" and {number_words(r)}")


def _parity(rng: random.Random) -> tuple[str, int]:
    n = rng.randrange(2, 1000)
    adj = rng.choice(_ADJ)
    text = rng.choice(_PARITY_TEMPLATES).format(
        n=number_words(n), adj=f"{adj} " if adj else "", items=rng.choice(_ITEMS))
    return text, n % 2


# -- assembling the splits ------------------------------------------------------------------

_GENERATORS = {
    "sentiment": (_sentiment, ("negative", "positive")),
    "agent": (_agent, ("person", "animal")),
    "grammar": (_grammar, ("ungrammatical", "grammatical")),
    "parity": (_parity, ("even", "odd")),
}

TASK_NAMES: tuple[str, ...] = tuple(_GENERATORS)


def make_task(name: str, n_train: int, n_val: int, n_test: int,
              seed: int = DATA_SEED) -> Task:
    gen, classes = _GENERATORS[name]
    rng = random.Random(f"{seed}:{name}")
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[int] = []
    total = n_train + n_val + n_test
    tries = 0
    while len(texts) < total:
        tries += 1
        if tries > total * 200:
            raise RuntimeError(f"task {name}: cannot draw {total} distinct sentences")
        text, label = gen(rng)
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    a, b = n_train, n_train + n_val
    return Task(name, classes, Split(texts[:a], labels[:a]), Split(texts[a:b], labels[a:b]),
                Split(texts[b:], labels[b:]))


def make_tasks(n_train: int, n_val: int, n_test: int) -> dict[str, Task]:
    return {name: make_task(name, n_train, n_val, n_test) for name in TASK_NAMES}


if __name__ == "__main__":  # print a few examples of each task
    for t in make_tasks(8, 0, 0).values():
        print(f"== {t.name} {t.classes}")
        for x, y in zip(t.train.texts, t.train.labels):
            print(f"  [{t.classes[y]}] {x}")
