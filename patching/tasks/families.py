"""Prompt-pair task families: the behaviours interpretability researchers patch most.

Each task yields :class:`TaskPair` values ``(clean, corrupt, answer, wrong)`` for the dashboard's
presets, the benchmarks and the evaluation, and complete sentences for training the default
model (``scripts/train_default_model.py``).

Tasks (keys of :data:`TASKS`):

``ioi``
    Indirect object identification (Wang et al. 2022, "Interpretability in the Wild"), with the
    paper's 15 BABA templates and their ABBA mirror images, e.g.
    ``"When Mary and John went to the store, John gave a drink to"`` -> ``" Mary"``.
    **Corrupt distribution:** the repeated name (S2, the subject of the second clause) is replaced
    by a third name C that appears nowhere else in the prompt:
    ``"When Mary and John went to the store, Kevin gave a drink to"``. This is the paper's "ABC"
    distribution restricted to the S2 position (the paper resamples all three names; keeping IO
    and S1 fixed makes the pair differ in one token, so position-wise patching has one place to
    look). ``answer`` is the indirect object (IO), ``wrong`` the subject (S).
``factual``
    Factual recall: ``"Paris is a city in the country of"`` -> ``" France"``; 156 real cities in
    30 countries, several templates. Corrupt = a city of another country; ``wrong`` is that
    city's country.
``greater_than``
    Hanna et al. 2023: ``"The war lasted from the year 1732 to the year 17"`` -> a two-digit end
    year greater than 32 (tokens ``"00"``..``"99"``, no leading space). Corrupt = the same
    prompt starting at ``"…01"``. ``answer`` is a year token above the start, ``wrong`` one below;
    the task's real metric is the probability mass on years > start (``evaluate.py``; in a
    patching run, the registry metric ``greater_than_prob_diff``).
``induction``
    A random sequence of words repeated: ``" a b c d … a b"`` -> ``" c"``. Corrupt = the same
    second half after a different first half (so nothing can be copied). ``wrong`` is a word that
    appears in neither prompt. The prompts start with a space, so every word, the first one
    included, is the same single ``" word"`` token in both halves.

Hold-outs: the ``"eval"`` split uses IOI name pairs that never occur together in training (both
orders), and every task has template wordings that training never uses; induction draws fresh
random sequences from a separate random stream. Every name, city and country is a prediction
target somewhere in the training text, so each token has been trained as an output.

>>> pair = make_pairs("ioi", 1)[0]
>>> pair.answer in pair.clean and pair.wrong in pair.clean
True
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from itertools import combinations
from typing import Callable

from metrics.greater_than import greater_than_start   # the start year: the task's metric reads it too

__all__ = [
    "TaskPair",
    "Task",
    "TASKS",
    "SPLITS",
    "make_pairs",
    "induction_key_pair",
    "PAIR_VARIANTS",
    "training_examples",
    "training_items",
    "training_text",
    "filler_sentence",
    "greater_than_start",
    "vocabulary_words",
    "NAMES",
    "CITIES",
    "COUNTRIES",
]

SPLITS = ("train", "eval")

# --------------------------------------------------------------------------------------------
# Word lists
# --------------------------------------------------------------------------------------------

# Common first names from Wang et al.'s IOI name list (all become single " Name" tokens).
NAMES: tuple[str, ...] = (
    "Michael", "Christopher", "Jessica", "Matthew", "Ashley", "Jennifer", "Joshua", "Amanda",
    "Daniel", "David", "James", "Robert", "John", "Joseph", "Andrew", "Ryan", "Brandon", "Jason",
    "Justin", "Sarah", "William", "Jonathan", "Stephanie", "Brian", "Nicole", "Nicholas",
    "Anthony", "Heather", "Eric", "Elizabeth", "Adam", "Megan", "Melissa", "Kevin", "Steven",
    "Thomas", "Timothy", "Christina", "Kyle", "Rachel", "Laura", "Lauren", "Amber", "Brittany",
    "Danielle", "Richard", "Kimberly", "Jeffrey", "Amy", "Crystal", "Michelle", "Tiffany",
    "Jeremy", "Benjamin", "Mark", "Emily", "Aaron", "Charles", "Rebecca", "Jacob", "Mary",
    "Paul", "Lisa", "Sean", "Kelly", "Samuel",
)

# The paper's places and objects.
PLACES: tuple[str, ...] = (
    "store", "garden", "restaurant", "school", "hospital", "office", "house", "station",
)
OBJECTS: tuple[str, ...] = (
    "ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack",
)

# country -> single-word cities. No city name is also a country name or another country's city.
CITIES_BY_COUNTRY: dict[str, tuple[str, ...]] = {
    "France": ("Paris", "Lyon", "Marseille", "Toulouse", "Nice", "Bordeaux"),
    "Germany": ("Berlin", "Munich", "Hamburg", "Frankfurt", "Cologne", "Stuttgart"),
    "Italy": ("Rome", "Milan", "Naples", "Turin", "Florence", "Venice"),
    "Spain": ("Madrid", "Barcelona", "Valencia", "Seville", "Bilbao", "Malaga"),
    "Japan": ("Tokyo", "Osaka", "Kyoto", "Yokohama", "Nagoya", "Sapporo"),
    "China": ("Beijing", "Shanghai", "Shenzhen", "Guangzhou", "Chengdu", "Wuhan"),
    "India": ("Mumbai", "Delhi", "Bangalore", "Chennai", "Kolkata", "Hyderabad"),
    "Brazil": ("Salvador", "Brasilia", "Recife", "Fortaleza", "Curitiba", "Manaus"),
    "Canada": ("Toronto", "Montreal", "Vancouver", "Calgary", "Ottawa", "Edmonton"),
    "Australia": ("Sydney", "Melbourne", "Brisbane", "Perth", "Adelaide", "Canberra"),
    "Russia": ("Moscow", "Novosibirsk", "Kazan", "Omsk", "Samara", "Yekaterinburg"),
    "Egypt": ("Cairo", "Alexandria", "Giza", "Luxor", "Aswan"),
    "Mexico": ("Guadalajara", "Monterrey", "Puebla", "Tijuana", "Cancun"),
    "Turkey": ("Istanbul", "Ankara", "Izmir", "Bursa", "Antalya"),
    "Poland": ("Warsaw", "Krakow", "Gdansk", "Wroclaw", "Poznan"),
    "Netherlands": ("Amsterdam", "Rotterdam", "Utrecht", "Eindhoven", "Groningen"),
    "Sweden": ("Stockholm", "Gothenburg", "Malmo", "Uppsala", "Linkoping"),
    "Argentina": ("Rosario", "Mendoza", "Salta", "Ushuaia"),
    "Greece": ("Athens", "Thessaloniki", "Patras", "Heraklion"),
    "Portugal": ("Lisbon", "Porto", "Braga", "Coimbra"),
    "Nigeria": ("Lagos", "Abuja", "Ibadan", "Kano"),
    "Kenya": ("Nairobi", "Mombasa", "Kisumu", "Nakuru"),
    "Korea": ("Seoul", "Busan", "Incheon", "Daegu"),
    "Vietnam": ("Hanoi", "Haiphong", "Hue", "Danang"),
    "Thailand": ("Bangkok", "Phuket", "Pattaya", "Ayutthaya"),
    "Ireland": ("Dublin", "Cork", "Galway", "Limerick"),
    "Norway": ("Oslo", "Bergen", "Trondheim", "Stavanger"),
    "Austria": ("Vienna", "Salzburg", "Graz", "Innsbruck"),
    "Switzerland": ("Zurich", "Geneva", "Basel", "Lausanne"),
    "Peru": ("Lima", "Cusco", "Arequipa", "Trujillo"),
}
COUNTRY_OF: dict[str, str] = {c: k for k, cs in CITIES_BY_COUNTRY.items() for c in cs}
CITIES: tuple[str, ...] = tuple(COUNTRY_OF)
COUNTRIES: tuple[str, ...] = tuple(CITIES_BY_COUNTRY)

# Hanna et al.'s event nouns (a subset).
GT_NOUNS: tuple[str, ...] = (
    "war", "accord", "affair", "agreement", "attack", "campaign", "conflict", "construction",
    "contract", "crisis", "deal", "dispute", "dynasty", "effort", "epidemic", "expedition",
    "famine", "friendship", "investigation", "journey", "kingdom", "marriage", "occupation",
    "operation", "outbreak", "plague", "program", "project", "rebellion", "reign", "relationship",
    "revolution", "rivalry", "siege", "strike", "study", "tour", "treaty", "trial", "voyage",
)
GT_CENTURIES: tuple[int, ...] = (11, 12, 13, 14, 15, 16, 17)

# Filler vocabulary (also the main pool for induction sequences).
FILLER_NOUNS: tuple[str, ...] = (
    "cat", "dog", "bird", "horse", "fish", "tree", "flower", "river", "mountain", "city", "village",
    "road", "car", "train", "boat", "book", "letter", "song", "story", "picture", "window", "door",
    "table", "chair", "bed", "lamp", "cup", "plate", "bread", "apple", "orange", "cake", "coffee",
    "tea", "water", "milk", "child", "teacher", "doctor", "farmer", "king", "queen", "friend",
    "family", "house", "room", "garden", "forest", "field", "lake", "sea", "sun", "moon", "star",
    "rain", "snow", "wind", "morning", "evening", "night", "day", "week", "year", "game",
    "question", "answer", "idea", "plan", "problem", "reason", "music", "money", "paper", "pen",
    "box", "bag", "hat", "shoe", "coat", "key", "phone", "clock", "bridge", "church", "market",
    "shop", "park", "beach", "island", "hill", "stone", "wall", "fire", "gold", "silver", "glass",
)
FILLER_ADJS: tuple[str, ...] = (
    "big", "small", "old", "new", "young", "red", "blue", "green", "white", "black", "happy",
    "sad", "quiet", "loud", "warm", "cold", "bright", "dark", "long", "short", "heavy", "light",
    "strong", "soft", "fast", "slow", "clean", "quick", "brown", "sweet", "kind", "busy",
)
FILLER_VERBS: tuple[str, ...] = (
    "saw", "found", "liked", "bought", "sold", "made", "took", "brought", "carried", "painted",
    "opened", "closed", "washed", "moved", "watched", "wanted", "needed", "lost", "kept", "left",
)
FILLER_PREPS: tuple[str, ...] = ("near", "behind", "under", "beside", "inside", "around", "past")


def vocabulary_words() -> list[str]:
    """Every content word the tasks use, without a leading space (the tokenizer makes each of
    ``" " + word`` a single token).

    >>> "Mary" in vocabulary_words()
    True
    """
    words = [*NAMES, *PLACES, *OBJECTS, *CITIES, *COUNTRIES, *GT_NOUNS, *FILLER_NOUNS,
             *FILLER_ADJS, *FILLER_VERBS, *FILLER_PREPS]
    return list(dict.fromkeys(words))


# Induction sequences use words whose leading-space form is a single token.
INDUCTION_POOL: tuple[str, ...] = tuple(dict.fromkeys(
    (*FILLER_NOUNS, *FILLER_ADJS, *FILLER_VERBS, *NAMES, *CITIES, *COUNTRIES, *GT_NOUNS,
     *OBJECTS)))

# --------------------------------------------------------------------------------------------
# Data types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskPair:
    """One clean/corrupt prompt pair with the expected and the contrasting next token.

    ``answer`` and ``wrong`` are single tokens written as they follow the prompt, so they
    include the leading space where the token has one (``" Mary"``; greater-than years such
    as ``"45"`` follow ``" 17"`` directly and have none).
    """

    clean: str
    corrupt: str
    answer: str
    wrong: str
    # the roles the family knows, as (role, character end of its word in `clean`, token offset):
    # the role's token is the last token of clean[:end], moved by offset (S1+1 = S1's end, +1);
    # `patching.tasks.presets.token_roles` turns them into token indices on a tokenizer
    spans: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self):
        for name, end, _ in self.spans:
            if not 0 < end <= len(self.clean):
                raise ValueError(f"TaskPair role {name} ends at character {end}, outside the clean "
                                 f"prompt (1-{len(self.clean)})")
        for field in ("clean", "corrupt", "answer", "wrong"):
            if not isinstance(getattr(self, field), str) or not getattr(self, field):
                raise ValueError(f"TaskPair.{field} must be a non-empty string, "
                                 f"not {getattr(self, field)!r}")
        if self.answer == self.wrong:
            raise ValueError(f"TaskPair answer and wrong must differ, both are {self.answer!r}")


@dataclass(frozen=True)
class Task:
    """A task family: how to draw one pair, and how to write one training item.

    ``pair(rng, split)`` draws a :class:`TaskPair`; ``train_item(rng)`` returns one complete
    training sentence (or sequence), answer included.
    """

    name: str
    title: str
    description: str
    metric: str                                   # the metric the eval reports for this task
    pair: Callable[[random.Random, str], TaskPair]
    train_item: Callable[[random.Random], str]
    patch_metric: str = "logit_diff"              # the registry metric that measures it in a patching run


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# IOI
# --------------------------------------------------------------------------------------------

# Wang et al.'s BABA templates; [A] is the indirect object, [B] the subject (repeated).
IOI_BABA_TEMPLATES: tuple[str, ...] = (
    "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a lot of fun at the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] were working at the [PLACE]. [B] decided to give a [OBJECT] to [A]",
    "Then, [B] and [A] were thinking about going to the [PLACE]. [B] wanted to give a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument, and afterwards [B] said to [A]",
    "After [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give it to [A]",
    "When [B] and [A] got a [OBJECT] at the [PLACE], [B] decided to give the [OBJECT] to [A]",
    "While [B] and [A] were working at the [PLACE], [B] gave a [OBJECT] to [A]",
    "While [B] and [A] were commuting to the [PLACE], [B] gave a [OBJECT] to [A]",
    "After the lunch, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Afterwards, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]",
    "Then, [B] and [A] had a long argument. Afterwards [B] said to [A]",
    "The [PLACE] [B] and [A] went to had a [OBJECT]. [B] gave it to [A]",
    "Friends [B] and [A] found a [OBJECT] at the [PLACE]. [B] gave it to [A]",
    # The issue's own example wording.
    "When [B] and [A] went to the [PLACE], [B] gave a [OBJECT] to [A]",
)
# ABBA: the same sentences with the first two names swapped.
IOI_ABBA_TEMPLATES: tuple[str, ...] = tuple(
    t.replace("[B] and [A]", "[A] and [B]", 1) for t in IOI_BABA_TEMPLATES)
# Wordings never used in training (indices into the lists above, both orders held out).
IOI_HELDOUT_TEMPLATES: tuple[int, ...] = (9, 14)


def _ioi_pairs_split() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Unordered name pairs, split ~85/15 into train / eval by a stable hash."""
    train, held = [], []
    for a, b in combinations(NAMES, 2):
        (held if _stable_hash(f"{a}|{b}") % 100 < 15 else train).append((a, b))
    return train, held


_IOI_TRAIN_PAIRS, _IOI_EVAL_PAIRS = _ioi_pairs_split()


def _ioi_templates(split: str) -> list[str]:
    ids = range(len(IOI_BABA_TEMPLATES))
    if split == "train":
        ids = [i for i in ids if i not in IOI_HELDOUT_TEMPLATES]
    return [t for i in ids for t in (IOI_BABA_TEMPLATES[i], IOI_ABBA_TEMPLATES[i])]


def _ioi_fill(rng: random.Random, split: str) -> tuple[str, str, str, str, str]:
    """-> (prompt template with [A]/[B]/[PLACE]/[OBJECT] filled except the last [A], io, s,
    template, place/object-filled template)."""
    template = rng.choice(_ioi_templates(split))
    a, b = rng.choice(_IOI_TRAIN_PAIRS if split == "train" else _IOI_EVAL_PAIRS)
    io, s = (a, b) if rng.random() < 0.5 else (b, a)
    filled = template.replace("[PLACE]", rng.choice(PLACES)).replace(
        "[OBJECT]", rng.choice(OBJECTS))
    return filled, io, s, template, filled


def _ioi_roles(prompt: str, io: str, s: str) -> tuple[tuple[str, int, int], ...]:
    """IO, S1, S1+1, S2, END of a prompt with [A] / [B] placeholders, filled with io / s.

    >>> _ioi_roles("When [A] and [B] went, [B] gave it to", "Mary", "John")
    (('IO', 9, 0), ('S1', 18, 0), ('S1+1', 18, 1), ('S2', 29, 0), ('END', 40, 0))
    """
    ends: dict[str, list[int]] = {"A": [], "B": []}
    grown = 0                              # characters the filled names add so far
    for m in re.finditer(r"\[(A|B)\]", prompt):
        grown += len(io if m.group(1) == "A" else s) - 3
        ends[m.group(1)].append(m.end() + grown)
    length = len(prompt) + grown
    return (("IO", ends["A"][0], 0), ("S1", ends["B"][0], 0), ("S1+1", ends["B"][0], 1),
            ("S2", ends["B"][1], 0), ("END", length, 0))


def _ioi_pair(rng: random.Random, split: str) -> TaskPair:
    filled, io, s, _, _ = _ioi_fill(rng, split)
    c = rng.choice([n for n in NAMES if n not in (io, s)])
    prompt = filled[: filled.rindex(" [A]")]
    clean = prompt.replace("[A]", io).replace("[B]", s)
    # Corrupt: the second [B] (S2) becomes a third name C.
    first_b = prompt.index("[B]")
    s2 = prompt.index("[B]", first_b + 1)
    corrupt = (prompt[:s2] + c + prompt[s2 + 3:]).replace("[A]", io).replace("[B]", s)
    return TaskPair(clean, corrupt, " " + io, " " + s, _ioi_roles(prompt, io, s))


def _ioi_train_item(rng: random.Random) -> str:
    filled, io, s, _, _ = _ioi_fill(rng, "train")
    return filled.replace("[A]", io).replace("[B]", s) + "."


# --------------------------------------------------------------------------------------------
# Factual recall
# --------------------------------------------------------------------------------------------

FACT_TEMPLATES: tuple[str, ...] = (
    "[CITY] is a city in the country of",
    "The city of [CITY] is in the country of",
    "The city of [CITY] is located in the country of",
    "I live in [CITY], which is in the country of",
    "We flew to [CITY], a city in the country of",
    "[CITY] is located in the country of",
    # Held out:
    "We flew to [CITY], which is in the country of",
)
FACT_HELDOUT_TEMPLATES: tuple[int, ...] = (6,)
# Training sentences where the city itself is the target (so every city is trained as output).
FACT_REVERSE_TEMPLATES: tuple[str, ...] = (
    "One city in [COUNTRY] is [CITY].",
    "A famous city in the country of [COUNTRY] is [CITY].",
)


def _fact_templates(split: str) -> list[str]:
    return [t for i, t in enumerate(FACT_TEMPLATES)
            if split == "eval" or i not in FACT_HELDOUT_TEMPLATES]


def _fact_pair(rng: random.Random, split: str) -> TaskPair:
    template = rng.choice(_fact_templates(split))
    city = rng.choice(CITIES)
    other = rng.choice([c for c in CITIES if COUNTRY_OF[c] != COUNTRY_OF[city]])
    clean = template.replace("[CITY]", city)
    return TaskPair(clean, template.replace("[CITY]", other), " " + COUNTRY_OF[city], " " + COUNTRY_OF[other],
                    (("CITY", template.index("[CITY]") + len(city), 0), ("END", len(clean), 0)))


def _fact_train_item(rng: random.Random) -> str:
    city = rng.choice(CITIES)
    if rng.random() < 0.2:
        template = rng.choice(FACT_REVERSE_TEMPLATES)
        return template.replace("[COUNTRY]", COUNTRY_OF[city]).replace("[CITY]", city)
    template = rng.choice(_fact_templates("train"))
    return template.replace("[CITY]", city) + " " + COUNTRY_OF[city] + "."


# --------------------------------------------------------------------------------------------
# Greater-than
# --------------------------------------------------------------------------------------------

GT_TEMPLATES: tuple[str, ...] = (
    "The [NOUN] lasted from the year [XX][YY] to the year [XX]",
    "The [NOUN] started in the year [XX][YY] and ended in the year [XX]",
    "The [NOUN] began in [XX][YY] and was over by [XX]",
    "The [NOUN] went on from [XX][YY] until [XX]",
    # Held out:
    "The [NOUN] ran from the year [XX][YY] until the year [XX]",
)
GT_HELDOUT_TEMPLATES: tuple[int, ...] = (4,)


def _gt_templates(split: str) -> list[str]:
    return [t for i, t in enumerate(GT_TEMPLATES)
            if split == "eval" or i not in GT_HELDOUT_TEMPLATES]


def _gt_fill(template: str, noun: str, xx: int, yy: int) -> str:
    return template.replace("[NOUN]", noun).replace("[XX]", str(xx)).replace("[YY]", f"{yy:02d}")


def _gt_pair(rng: random.Random, split: str) -> TaskPair:
    template = rng.choice(_gt_templates(split))
    noun, xx, yy = rng.choice(GT_NOUNS), rng.choice(GT_CENTURIES), rng.randint(2, 98)
    answer = (yy + 100) // 2            # a year strictly above the start
    wrong = yy // 2                     # a year strictly below the start
    clean = _gt_fill(template, noun, xx, yy)
    year = f"{xx}{yy:02d}"
    return TaskPair(clean, _gt_fill(template, noun, xx, 1), f"{answer:02d}", f"{wrong:02d}",
                    (("YEAR", clean.index(year) + len(year), 0), ("END", len(clean), 0)))


def _gt_train_item(rng: random.Random) -> str:
    template = rng.choice(_gt_templates("train"))
    noun, xx = rng.choice(GT_NOUNS), rng.choice(GT_CENTURIES)
    yy = rng.randint(0, 98)
    end = rng.randint(yy + 1, 99)
    return _gt_fill(template, noun, xx, yy) + f"{end:02d}."


# --------------------------------------------------------------------------------------------
# Induction
# --------------------------------------------------------------------------------------------

INDUCTION_MIN_LEN, INDUCTION_MAX_LEN = 6, 20


def _induction_pair(rng: random.Random, split: str) -> TaskPair:
    length = rng.randint(INDUCTION_MIN_LEN, INDUCTION_MAX_LEN)
    words = rng.sample(INDUCTION_POOL, 2 * length + 1)
    first, other, distractor = words[:length], words[length:2 * length], words[-1]
    k = rng.randint(2, length - 1)      # tokens already repeated; the answer is first[k]
    # A leading space makes every word the same " word" token in both halves.
    clean = " " + " ".join(first + first[:k])
    corrupt = " " + " ".join(other + first[:k])
    answer_end = len(" " + " ".join(first[:k + 1]))     # the answer's first occurrence
    return TaskPair(clean, corrupt, " " + first[k], " " + distractor,
                    (("ANS1", answer_end, 0), ("END", len(clean), 0)))


def induction_key_pair(pair: TaskPair) -> TaskPair:
    """An induction pair whose corrupt prompt differs from the clean one in one word only: the
    word *before* the answer's first occurrence (replaced by the pair's distractor). The answer
    token itself stays where it was, so an induction head still finds the same values; only its
    keys (which hold the previous token, written there by a previous-token head) lose the match.
    Path patching a previous-token head into an induction head's keys shows K-composition on
    these pairs; on `make_pairs("induction")` (the whole first half replaced) the values differ
    too, and a keys-only patch cannot restore the answer.

    >>> p = induction_key_pair(make_pairs("induction", 1, seed=2)[0])
    >>> [a != b for a, b in zip(p.clean.split(), p.corrupt.split())].count(True), p.answer in p.corrupt
    (1, True)
    """
    words = pair.clean.split()
    role, end, _ = pair.spans[0] if pair.spans else ("", 0, 0)
    k = len(pair.clean[:end].split()) - 1            # word index of the answer's first occurrence
    if role != "ANS1" or k < 1 or pair.answer.strip() != words[k] or pair.wrong.strip() in words:
        raise ValueError(f"not an induction pair from make_pairs('induction'): {pair.clean!r}")
    corrupt = words[: k - 1] + [pair.wrong.strip()] + words[k:]
    return TaskPair(pair.clean, " " + " ".join(corrupt), pair.answer, pair.wrong, pair.spans)


def _induction_train_item(rng: random.Random) -> str:
    # Half the sequences are short (3-6 words): copying from a short context is learnt within a
    # few hundred steps and bootstraps the general induction circuit the long ones need.
    length = rng.randint(3, 6) if rng.random() < 0.5 else rng.randint(INDUCTION_MIN_LEN,
                                                                        INDUCTION_MAX_LEN + 4)
    words = rng.sample(INDUCTION_POOL, length)
    repeat = words[: rng.randint(max(2, length // 2), length)]
    return " " + " ".join(words + repeat) + "."


# --------------------------------------------------------------------------------------------
# Filler
# --------------------------------------------------------------------------------------------


def filler_sentence(rng: random.Random) -> str:
    """One simple English sentence from a small grammar, so the model stays a language model.

    >>> filler_sentence(random.Random(0)).endswith(".")
    True
    """
    n, a, v, p = FILLER_NOUNS, FILLER_ADJS, FILLER_VERBS, FILLER_PREPS
    name, city = rng.choice(NAMES), rng.choice(CITIES)
    forms = (
        lambda: f"The {rng.choice(a)} {rng.choice(n)} {rng.choice(v)} the {rng.choice(n)} "
                f"{rng.choice(p)} the {rng.choice(n)}.",
        lambda: f"{name} {rng.choice(v)} a {rng.choice(a)} {rng.choice(n)} in the {rng.choice(PLACES)}.",
        lambda: f"{name} said that the {rng.choice(n)} was very {rng.choice(a)}.",
        lambda: f"In {rng.randint(1100, 1999)}, the {rng.choice(n)} was {rng.choice(a)}.",
        lambda: f"Last year {name} moved to {city} with a {rng.choice(a)} {rng.choice(n)}.",
        lambda: f"A {rng.choice(a)} {rng.choice(n)} and a {rng.choice(a)} {rng.choice(n)} "
                f"were {rng.choice(p)} the {rng.choice(n)}.",
        lambda: f"She {rng.choice(v)} the {rng.choice(OBJECTS)} and he {rng.choice(v)} the "
                f"{rng.choice(n)}.",
        lambda: f"The {rng.choice(GT_NOUNS)} was {rng.choice(a)} for the {rng.choice(n)}.",
    )
    sentence = rng.choice(forms)()
    return sentence if rng.random() < 0.6 else sentence + " " + rng.choice(forms)()


# --------------------------------------------------------------------------------------------
# Registry and public functions
# --------------------------------------------------------------------------------------------

TASKS: dict[str, Task] = {t.name: t for t in (
    Task("ioi", "IOI (indirect object)",
         "When Mary and John went to the store, John gave a drink to → Mary; corrupt: "
         "a third name replaces the repeated one.",
         "logit_diff", _ioi_pair, _ioi_train_item),
    Task("factual", "Factual recall (city → country)",
         "Paris is a city in the country of → France; corrupt: a city of another country.",
         "accuracy", _fact_pair, _fact_train_item),
    Task("greater_than", "Greater-than (years)",
         "The war lasted from the year 1732 to the year 17 → a year above 32; corrupt: starts "
         "at …01.",
         "prob_mass", _gt_pair, _gt_train_item, patch_metric="greater_than_prob_diff"),
    Task("induction", "Induction (repeated sequence)",
         "A random word sequence repeated: predict the word that followed last time; corrupt: "
         "a different first half.",
         "accuracy", _induction_pair, _induction_train_item),
)}

# Share of training items per kind (filler included), used by training_items.
TRAIN_MIX: dict[str, float] = {
    "ioi": 0.38, "factual": 0.22, "greater_than": 0.08, "induction": 0.22, "filler": 0.10,
}


# Pair sets derived from a task's own pairs: offered as presets and by make_pairs, never trained
# on or evaluated (training and evaluate read TASKS). name -> (task, title, derive).
PAIR_VARIANTS: dict[str, tuple[str, str, Callable[[TaskPair], TaskPair]]] = {
    "induction_keys": ("induction", "Induction, keys only (one word changed: the one before the "
                                    "answer's first use)", induction_key_pair),
}


def _task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return TASKS[task]


def make_pairs(task: str, n: int, *, split: str = "eval", seed: int = 0) -> list[TaskPair]:
    """``n`` deterministic prompt pairs of one task.

    ``split="eval"`` draws from the held-out material (IOI name pairs never seen together in
    training, every template wording including the held-out ones, fresh induction sequences);
    ``split="train"`` from what training uses.

    >>> make_pairs("greater_than", 1, seed=3)[0].corrupt
    'The attack started in the year 1201 and ended in the year 12'

    A name of :data:`PAIR_VARIANTS` derives its pairs from its task's (same draws):

    >>> make_pairs("induction_keys", 1)[0].clean == make_pairs("induction", 1)[0].clean
    True
    """
    if task in PAIR_VARIANTS:
        base, _, derive = PAIR_VARIANTS[task]
        return [derive(p) for p in make_pairs(base, n, split=split, seed=seed)]
    spec = _task(task)
    _check_split(split)
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, not {n!r}")
    # Different streams per task and split, so eval induction sequences are fresh.
    rng = random.Random(f"{task}/{split}/{seed}")
    return [spec.pair(rng, split) for _ in range(n)]


def training_examples(n: int, *, seed: int = 0,
                      mix: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """``n`` training items as ``(kind, text)``, kind one of the task names or ``"filler"``.

    Each text is one complete sentence or sequence (answer included) meant to follow a BOS
    token; task items end with their answer followed by ``"."``.

    >>> [kind for kind, _ in training_examples(3, mix={"ioi": 1.0})]
    ['ioi', 'ioi', 'ioi']
    """
    mix = dict(TRAIN_MIX if mix is None else mix)
    unknown = set(mix) - set(TASKS) - {"filler"}
    if unknown:
        raise ValueError(f"unknown mix keys {sorted(unknown)}; choose from "
                         f"{', '.join([*TASKS, 'filler'])}")
    rng = random.Random(f"train-items/{seed}")
    kinds, weights = list(mix), [mix[k] for k in mix]
    return [(kind, filler_sentence(rng) if kind == "filler" else TASKS[kind].train_item(rng))
            for kind in rng.choices(kinds, weights, k=n)]


def training_items(n: int, *, seed: int = 0, mix: dict[str, float] | None = None) -> list[str]:
    """The texts of :func:`training_examples`.

    >>> len(training_items(5))
    5
    """
    return [text for _, text in training_examples(n, seed=seed, mix=mix)]


def training_text(n: int, *, seed: int = 0, separator: str = "<|endoftext|>") -> str:
    """``n`` training items joined into one text, each preceded by ``separator`` (the BOS).

    >>> training_text(2).count("<|endoftext|>")
    2
    """
    return "".join(separator + item for item in training_items(n, seed=seed))
