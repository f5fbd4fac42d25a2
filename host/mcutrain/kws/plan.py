"""Which clips a SYNTHETIC keyword-spotting set holds: classes, words, the voice split, and
a per-class plan of (word, voice, rendition) items, all drawn from the seed."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .synth import Voice, all_voices, parse_voice

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "_unknown_"
SILENCE = "_silence_"
CLASS_NAMES = (*KEYWORDS, UNKNOWN, SILENCE)
# Speech Commands' other words, spoken for _unknown_.
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house",
                 "marvin", "nine", "one", "seven", "sheila", "six", "three", "tree", "two",
                 "wow", "zero", "backward", "forward", "follow", "learn", "visual")  # fmt: skip
# Held out: two accents and two variants that no training voice uses, and one flite speaker.
DEFAULT_TEST_VOICES = ("espeak:en-gb-scotland+m4", "espeak:en-gb-scotland+f4",
                       "espeak:en-029+m4", "espeak:en-029+f4", "flite:rms")  # fmt: skip
FLITE_SHARE = 0.25  # of each class's speech samples when both engines are in a split
MAX_RENDITIONS = 4  # distinct syntheses (rate, pitch) per word and voice; more reuse them


@dataclass(frozen=True)
class Item:
    """One sample to make: a word by a voice (rendition r), or silence (word None)."""

    label: int
    word: str | None
    voice: Voice | None
    rendition: int
    key: str  # names the sample's own random stream

    @property
    def source(self) -> tuple[str, str, int] | None:
        """The synthesis this sample is derived from, or None for silence."""
        if self.word is None or self.voice is None:
            return None
        return self.word, str(self.voice), self.rendition


def rng_for(seed: int, *parts: object) -> np.random.Generator:
    """A generator that depends only on the seed and the parts (not on call order)."""
    key = zlib.crc32("/".join(str(p) for p in parts).encode())
    return np.random.default_rng(np.random.SeedSequence([seed, key]))


def split_voices(test_voices: Sequence[str | Voice]) -> tuple[list[Voice], list[Voice]]:
    """(train voices, test voices): training gets every voice sharing no accent, variant or
    flite speaker with a test voice, so the test voices are unheard in training."""
    test = sorted({v if isinstance(v, Voice) else parse_voice(v) for v in test_voices})
    if not test:
        raise ValueError("no test voices: the split needs at least one held-out voice")
    held = set().union(*(v.identities() for v in test))
    train = [v for v in all_voices() if not (v.identities() & held)]
    if not train:
        raise ValueError(f"test voices {', '.join(map(str, test))} leave no voice for training")
    return train, test


def voice_table(voices: Sequence[Voice]) -> dict[str, list[str]]:
    """Voices grouped for a dataset's meta: {"espeak:ACCENT": [variants], "flite": [names]}
    (a third of the bytes of a flat list, which a board reading the info must hold)."""
    table: dict[str, list[str]] = {}
    for v in sorted(voices):
        if v.engine == "espeak":
            table.setdefault(f"espeak:{v.name}", []).append(v.variant)
        else:
            table.setdefault(v.engine, []).append(v.name)
    return table


def _cycle(items: Sequence, n: int, rng: np.random.Generator) -> list:
    """n picks from items: shuffled rounds through all of them (balanced use)."""
    out: list = []
    while len(out) < n:
        out.extend(items[i] for i in rng.permutation(len(items)))
    return out[:n]


def plan_split(split: str, voices: Sequence[Voice], n: int, seed: int,
               class_names: Sequence[str], unknown_words: Sequence[str]) -> list[Item]:  # fmt: skip
    """n items per class for one split, speech spread over the voices (flite gets FLITE_SHARE
    when both engines are present) and _unknown_ spread over unknown_words."""
    rng = rng_for(seed, "plan", split)
    by_engine = {e: [v for v in voices if v.engine == e] for e in ("espeak", "flite")}
    engines = [e for e, vs in by_engine.items() if vs]
    items: list[Item] = []
    uses: dict[tuple[str, Voice], int] = {}
    for label, name in enumerate(class_names):
        if name == SILENCE:
            items += [Item(label, None, None, 0, f"{split}/{name}/{i}") for i in range(n)]
            continue
        if len(engines) == 2:
            n_flite = int(round(FLITE_SHARE * n))
            picks = ["espeak"] * (n - n_flite) + ["flite"] * n_flite
            engine_of = [picks[i] for i in rng.permutation(n)]
        else:
            engine_of = engines * n
        voice_picks = {e: iter(_cycle(by_engine[e], engine_of.count(e), rng)) for e in engines}
        words = _cycle(list(unknown_words), n, rng) if name == UNKNOWN else [name] * n
        for i in range(n):
            voice = next(voice_picks[engine_of[i]])
            count = uses.get((words[i], voice), 0)
            uses[(words[i], voice)] = count + 1
            items.append(Item(label, words[i], voice, count % MAX_RENDITIONS,
                              f"{split}/{name}/{i}"))  # fmt: skip
    return items
