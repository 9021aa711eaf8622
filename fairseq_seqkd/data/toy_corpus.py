"""A deterministic, multimodal synthetic English-to-German-like parallel corpus.

Real translation is multimodal: one source has many valid translations. A student trained
on raw references learns a blurred mixture of them; a teacher's beam search picks one mode
consistently, which is what sequence-level KD passes on. This corpus reproduces that in
seconds, with no download: a small grammar generates English-like sources, and each source
gets a German-like translation with random synonyms, optional words and free word order.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

# source word -> (translations, probabilities). One entry: deterministic.
NOUNS = {
    "cat": (["katze"], [1.0]), "dog": (["hund"], [1.0]), "house": (["haus"], [1.0]),
    "tree": (["baum"], [1.0]), "car": (["auto", "wagen"], [0.6, 0.4]),
    "man": (["mann"], [1.0]), "woman": (["frau"], [1.0]), "child": (["kind"], [1.0]),
    "bird": (["vogel"], [1.0]), "book": (["buch"], [1.0]), "city": (["stadt"], [1.0]),
    "river": (["fluss", "strom"], [0.7, 0.3]), "teacher": (["lehrer"], [1.0]),
    "friend": (["freund", "kumpel"], [0.6, 0.4]), "doctor": (["arzt", "doktor"], [0.55, 0.45]),
    "table": (["tisch"], [1.0]), "garden": (["garten"], [1.0]), "school": (["schule"], [1.0]),
    "street": (["strasse", "gasse"], [0.6, 0.4]), "horse": (["pferd", "gaul"], [0.8, 0.2]),
    "apple": (["apfel"], [1.0]), "letter": (["brief"], [1.0]),
    "ship": (["schiff", "boot"], [0.5, 0.5]), "mountain": (["berg"], [1.0]),
    "window": (["fenster"], [1.0]), "door": (["tuer"], [1.0]), "king": (["koenig"], [1.0]),
    "student": (["student", "schueler"], [0.6, 0.4]), "bread": (["brot"], [1.0]),
    "song": (["lied"], [1.0]), "girl": (["maedchen"], [1.0]), "boy": (["junge", "knabe"], [0.7, 0.3]),
}
ADJECTIVES = {
    "big": (["gross", "riesig"], [0.6, 0.4]), "small": (["klein", "winzig"], [0.7, 0.3]),
    "old": (["alt"], [1.0]), "young": (["jung"], [1.0]), "red": (["rot"], [1.0]),
    "blue": (["blau"], [1.0]), "green": (["gruen"], [1.0]),
    "happy": (["froh", "gluecklich"], [0.5, 0.5]), "sad": (["traurig"], [1.0]),
    "fast": (["schnell", "flink"], [0.6, 0.4]), "quiet": (["leise", "still"], [0.55, 0.45]),
    "beautiful": (["schoen", "huebsch"], [0.65, 0.35]), "strong": (["stark"], [1.0]),
    "tired": (["muede"], [1.0]), "clever": (["klug", "schlau"], [0.5, 0.5]),
}
VERBS = {
    "sees": (["sieht", "erblickt"], [0.6, 0.4]), "likes": (["mag"], [1.0]),
    "finds": (["findet"], [1.0]), "builds": (["baut"], [1.0]), "buys": (["kauft"], [1.0]),
    "reads": (["liest"], [1.0]), "visits": (["besucht"], [1.0]), "follows": (["folgt"], [1.0]),
    "paints": (["malt"], [1.0]), "hears": (["hoert"], [1.0]), "carries": (["traegt"], [1.0]),
    "helps": (["hilft"], [1.0]), "knows": (["kennt"], [1.0]),
    "calls": (["ruft", "nennt"], [0.6, 0.4]), "loves": (["liebt"], [1.0]),
}
ADVERBS = {
    "often": (["oft", "haeufig"], [0.6, 0.4]), "today": (["heute"], [1.0]),
    "never": (["nie", "niemals"], [0.7, 0.3]), "quickly": (["schnell", "rasch"], [0.5, 0.5]),
    "again": (["wieder", "erneut"], [0.6, 0.4]),
}
PREPOSITIONS = {
    "in": (["in"], [1.0]), "with": (["mit"], [1.0]), "near": (["bei", "nahe"], [0.6, 0.4]),
    "behind": (["hinter"], [1.0]), "under": (["unter"], [1.0]),
}
DETERMINERS = {"the": (["der"], [1.0]), "a": (["ein"], [1.0]), "every": (["jeder"], [1.0])}
# Grammatical gender of each target noun: the determiner and the adjective endings agree with it,
# so they depend on a word that comes later (and on which synonym was chosen), as in German.
GENDER = {
    "f": "katze frau stadt schule strasse gasse tuer".split(),
    "n": "haus auto kind buch pferd schiff boot fenster brot lied maedchen".split(),
}
DETERMINER_FORMS = {  # nominative, by gender m / f / n
    "der": ("der", "die", "das"), "ein": ("ein", "eine", "ein"), "jeder": ("jeder", "jede", "jedes"),
}
INDEFINITE_ENDINGS = ("er", "e", "es")  # after ein/eine/ein; after definite determiners always "e"
CONJUNCTIONS = {"and": (["und"], [1.0]), "but": (["aber", "doch"], [0.7, 0.3])}
VERY = (["sehr", "ganz", ""], [0.6, 0.25, 0.15])  # the empty choice: an optional word

P_ADJ_SWAP = 0.3  # two adjectives: target keeps their order or swaps them
P_ADV_FRONT = 0.4  # adverb: fronted with verb-second inversion, or after the verb


@dataclass
class ToySplit:
    """One split: parallel lists of whitespace-tokenized sentences."""

    source: list[str]
    target: list[str]


def _gender(noun: str) -> int:
    return 1 if noun in GENDER["f"] else 2 if noun in GENDER["n"] else 0


def _inflect(adjective: str, determiner: str, gender: int) -> str:
    ending = INDEFINITE_ENDINGS[gender] if determiner == "ein" else "e"
    return adjective + (ending[1:] if adjective.endswith("e") else ending)


def _pick(rng: random.Random, entry: tuple[list[str], list[float]]) -> str:
    words, probs = entry
    return words[0] if len(words) == 1 else rng.choices(words, probs)[0]


class _Generator:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def noun_phrase(self) -> tuple[list[str], list[str]]:
        rng = self.rng
        det = rng.choice(list(DETERMINERS))
        n_adj = rng.choices([0, 1, 2], [0.45, 0.4, 0.15])[0]
        adjs = rng.sample(list(ADJECTIVES), n_adj)
        noun = rng.choice(list(NOUNS))
        src = [det]
        tgt_adjs: list[list[str]] = []
        for adj in adjs:
            very = rng.random() < 0.2
            src += (["very"] if very else []) + [adj]
            t = [_pick(rng, ADJECTIVES[adj])]
            if very:
                v = _pick(rng, VERY)
                t = ([v] if v else []) + t
            tgt_adjs.append(t)
        if len(tgt_adjs) == 2 and rng.random() < P_ADJ_SWAP:
            tgt_adjs.reverse()
        src.append(noun)
        noun_t = _pick(rng, NOUNS[noun])
        gender = _gender(noun_t)
        det_t = _pick(rng, DETERMINERS[det])
        adjs_t = [w if i < len(a) - 1 else _inflect(w, det_t, gender)  # 'sehr' does not inflect
                  for a in tgt_adjs for i, w in enumerate(a)]
        return src, [DETERMINER_FORMS[det_t][gender]] + adjs_t + [noun_t]

    def clause(self) -> tuple[list[str], list[str]]:
        rng = self.rng
        subj_s, subj_t = self.noun_phrase()
        verb = rng.choice(list(VERBS))
        obj_s, obj_t = self.noun_phrase()
        adv = rng.choice(list(ADVERBS)) if rng.random() < 0.35 else None
        pp = rng.choice(list(PREPOSITIONS)) if rng.random() < 0.35 else None
        src = subj_s + [verb] + obj_s
        verb_t = _pick(rng, VERBS[verb])
        if adv is not None:
            src = src[:len(subj_s) + 1] + [adv] + src[len(subj_s) + 1:]
            adv_t = _pick(rng, ADVERBS[adv])
            if rng.random() < P_ADV_FRONT:
                tgt = [adv_t, verb_t] + subj_t + obj_t
            else:
                tgt = subj_t + [verb_t, adv_t] + obj_t
        else:
            tgt = subj_t + [verb_t] + obj_t
        if pp is not None:
            pp_s, pp_t = self.noun_phrase()
            src += [pp] + pp_s
            tgt += [_pick(rng, PREPOSITIONS[pp])] + pp_t
        return src, tgt

    def sentence(self) -> tuple[str, str]:
        src, tgt = self.clause()
        if self.rng.random() < 0.3:
            conj = self.rng.choice(list(CONJUNCTIONS))
            s2, t2 = self.clause()
            src += [conj] + s2
            tgt += [_pick(self.rng, CONJUNCTIONS[conj])] + t2
        return " ".join(src), " ".join(tgt)


def generate_split(n: int, seed: int) -> ToySplit:
    """Generate ``n`` sentence pairs, deterministically from ``seed``."""
    gen = _Generator(random.Random(seed))
    pairs = [gen.sentence() for _ in range(n)]
    return ToySplit([s for s, _ in pairs], [t for _, t in pairs])


DEFAULT_SIZES = {"train": 15000, "valid": 500, "test": 500}


def write_corpus(out_dir: str, sizes: dict[str, int] | None = None, seed: int = 1,
                 src: str = "en", tgt: str = "de") -> dict[str, int]:
    """Write ``{split}.{src}`` and ``{split}.{tgt}`` files; return the pair count per split."""
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    os.makedirs(out_dir, exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        data = generate_split(n, seed * 1000 + i)
        for lang, lines in ((src, data.source), (tgt, data.target)):
            path = os.path.join(out_dir, f"{split}.{lang}")
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, path)
    return sizes
