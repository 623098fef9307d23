"""A built-in SYNTHETIC parallel sample for the demo, the sweep and the tests (no real language data).

English sentences are generated from templates over four topic domains (politics, sports, health, business:
each its own nouns, verbs and adjectives; function words, people and places shared). The "target language"
``syn`` is a seeded word-level cipher of English: every English word type becomes a made-up word of 2-3
syllables, names, places and numbers stay as they are (as named entities do in real news translation), and an
adjective follows its noun (as in Swahili), so the word alignment is not monotonic. The cipher is the true
lexicon, which lets a test or the demo measure lexicon induction exactly. Anything trained or evaluated on this
sample must be reported as synthetic.
"""

from __future__ import annotations

import os
import random

LANG = "syn"

DOMAINS: dict[str, dict[str, list[str]]] = {
    "politics": {
        "noun": "government minister parliament election vote party president law policy opposition senator "
                "budget reform campaign council treaty governor protest court constitution".split(),
        "verb": "approved rejected announced debated signed criticised proposed blocked".split(),
        "adj": "national controversial new federal strict popular democratic secret".split(),
    },
    "sports": {
        "noun": "team match coach player goal league championship stadium season referee tournament striker "
                "trophy fans victory defeat penalty club athlete race".split(),
        "verb": "won lost scored defended celebrated trained missed qualified".split(),
        "adj": "young fast strong famous final unbeaten talented injured".split(),
    },
    "health": {
        "noun": "hospital doctor patient vaccine disease clinic nurse malaria treatment virus medicine infection "
                "surgery outbreak diagnosis symptom pharmacy epidemic therapy ambulance".split(),
        "verb": "treated diagnosed vaccinated prevented examined infected cured tested".split(),
        "adj": "chronic sick healthy rural infectious medical deadly private".split(),
    },
    "business": {
        "noun": "company market bank investor price profit shares trade economy export factory loan bond "
                "inflation currency tax startup merger revenue supplier".split(),
        "verb": "invested borrowed exported bought sold raised lowered acquired".split(),
        "adj": "global cheap expensive digital annual foreign profitable local".split(),
    },
}
NAMES = ("Amina Baraka Juma Wanjiru Otieno Halima Musa Zawadi Kamau Nia Omondi Fatuma Rashid Imani Tunde "
         "Chike Ngozi Emeka Aisha Salim").split()
PLACES = ("Nairobi Mombasa Arusha Kisumu Dodoma Kano Lagos Abuja Kampala Kigali Zanzibar Tanga Mwanza Nakuru "
          "Eldoret Kaduna").split()
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
FUNCTION = "the a of in on after before with said that and for to was by".split()

# {n} noun, {v} verb, {a} adjective of the sentence's domain; {name}, {place}, {day}, {num}
TEMPLATES = [
    "{name} {v} the {a} {n} in {place} on {day}",
    "the {a} {n} {v} a {n} after the {n} in {place}",
    "{name} said that the {n} {v} {num} {a} {n}",
    "in {place} the {n} of the {a} {n} {v} the {n} on {day}",
    "the {n} {v} the {a} {n} with {name} and {name}",
    "on {day} {name} {v} the {n} for the {a} {n} of {place}",
    "{name} was {v} by the {a} {n} before the {n} in {place}",
    "the {a} {n} and the {n} {v} {num} {n} to {place}",
]

_CONSONANTS = "bdfghjklmnprstvwyz"
_VOWELS = "aeiou"


def _cipher(seed: int) -> dict[str, str]:
    words = sorted({w for d in DOMAINS.values() for k in d.values() for w in k} | set(DAYS) | set(FUNCTION))
    rng = random.Random(f"fastot-synthetic-cipher-{seed}")
    used: set[str] = set(words)
    out = {}
    for w in words:
        while True:
            n = rng.choice((2, 3, 3)) if len(w) > 3 else 2
            c = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(n))
            if c not in used:
                used.add(c)
                out[w] = c
                break
    return out


def true_lexicon(seed: int = 0) -> list[tuple[str, str]]:
    """The true lexicon, lower-cased: (English word, synthetic word) for every ciphered word type, and the
    names and places, which translate to themselves."""
    return sorted(_cipher(seed).items()) + sorted((w.lower(), w.lower()) for w in NAMES + PLACES)


def sentence_pair(rng: random.Random, domain: str, cipher: dict[str, str]) -> tuple[str, str]:
    """One generated English sentence of ``domain`` and its cipher translation."""
    d = DOMAINS[domain]
    slots = {"n": d["noun"], "v": d["verb"], "a": d["adj"], "name": NAMES, "place": PLACES, "day": DAYS}
    en, tgt = [], []
    for tok in rng.choice(TEMPLATES).split():
        if tok.startswith("{"):
            key = tok[1:-1]
            w = str(rng.randint(2, 99)) if key == "num" else rng.choice(slots[key])
            en.append(w)
            tgt.append((w, key))
        else:
            en.append(tok)
            tgt.append((tok, "f"))
    out = []
    i = 0
    while i < len(tgt):
        if tgt[i][1] == "a" and i + 1 < len(tgt) and tgt[i + 1][1] == "n":  # adjective after its noun
            out += [tgt[i + 1], tgt[i]]
            i += 2
        else:
            out.append(tgt[i])
            i += 1
    text = " ".join(cipher.get(w, w) for w, _ in out)
    return _capitalise(" ".join(en)) + " .", _capitalise(text) + " ."


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def generate(n: int, domains, *, seed: int = 0, stream: str = "") -> tuple[list[str], list[str]]:
    """``n`` sentence pairs, domains taken in turn from ``domains`` (one name or several)."""
    domains = [domains] if isinstance(domains, str) else list(domains)
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ValueError(f"domains: expected names from {sorted(DOMAINS)}, got {domains}")
    cipher = _cipher(seed)
    rng = random.Random(f"fastot-synthetic-{seed}-{stream}")
    pairs = [sentence_pair(rng, domains[i % len(domains)], cipher) for i in range(n)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def _write(folder: str, split: str, en: list[str], tgt: list[str]) -> None:
    for ext, lines in (("en", en), (LANG, tgt)):
        _write_atomic(os.path.join(folder, f"{split}.{ext}"), "\n".join(lines) + "\n")


def _write_atomic(path: str, text: str) -> None:
    """Through a file of this process's own and a rename: sweep workers may write the same sample at once."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_sample(folder: str, *, seed: int = 0, n_train: int = 2000, n_domain_train: int = 600,
                 n_dev: int = 300) -> dict:
    """Write the sample in the MAFAND layout: ``train`` (all domains mixed: distillation and lexicon),
    ``train-<domain>`` (reranker training per domain), ``dev`` (mixed) and ``dev-<domain>`` (held out), each
    ``<split>.en`` / ``<split>.syn``, plus ``SYNTHETIC.txt`` saying what it is. Returns the counts."""
    if os.path.isdir(folder) and os.listdir(folder) and not os.path.exists(os.path.join(folder, "SYNTHETIC.txt")):
        raise FileExistsError(f"folder: {folder!r} is not empty and holds no synthetic sample (no SYNTHETIC.txt); "
                              "the sample is only written to a new folder or over an earlier sample")
    os.makedirs(folder, exist_ok=True)
    # the marker first: a second sweep worker writing the same sample at once sees a sample folder, not a foreign one
    _write_atomic(os.path.join(folder, "SYNTHETIC.txt"), f"Generated by fastot.experiments.synthetic (seed {seed:d}): English "
                  f"template sentences and a seeded word cipher '{LANG}'. Not real language data.\n")
    names = sorted(DOMAINS)
    _write(folder, "train", *generate(n_train, names, seed=seed, stream="train"))
    _write(folder, "dev", *generate(n_dev, names, seed=seed, stream="dev"))
    for d in names:
        _write(folder, f"train-{d}", *generate(n_domain_train, d, seed=seed, stream=f"train-{d}"))
        _write(folder, f"dev-{d}", *generate(n_dev, d, seed=seed, stream=f"dev-{d}"))
    return {"train": n_train, "dev": n_dev, "domains": names, "domain_train": n_domain_train, "seed": seed}


def lexicon_accuracy(bitext: str, lang: str, truth, *, split: str = "train", **induce_options) -> dict:
    """Precision and recall of the Dice lexicon induced from ``bitext`` against the true cipher ``truth``."""
    from ..ir.data import read_bitext
    from ..lexicons import induce_from_bitext  # noqa: PLC0415

    en, tgt = read_bitext(bitext, lang, split)
    induced = {(s, t) for s, t, _ in induce_from_bitext(en, tgt, **induce_options)}
    true = set(truth)
    hit = len(induced & true)
    return {"induced": len(induced), "true": len(true), "correct": hit,
            "precision": hit / len(induced) if induced else 0.0, "recall": hit / len(true) if true else 0.0}
