"""Enrollment clips: a few clips per class from each held-out voice (or test speaker), for
adapting a model on the board to voices it never heard. The evaluation split keeps the rest:
no clip, and for synthetic speech no synthesis, is in both."""

from __future__ import annotations

from collections.abc import Sequence

from .plan import MAX_RENDITIONS, SILENCE, UNKNOWN, Item, _cycle, rng_for
from .synth import Voice
from .wavdir import WavClip

ENROLL_FILE = "kws_enroll.mtd"


def plan_enrollment(voices: Sequence[Voice], per_class: int, seed: int,
                    class_names: Sequence[str], unknown_words: Sequence[str]) -> list[Item]:  # fmt: skip
    """per_class items per class and voice (silence: per_class per voice, voiceless). Their
    renditions start at MAX_RENDITIONS, which the test split never reaches, so an enrollment
    clip is a new synthesis (its own rate and pitch), not an augmented copy of a test clip."""
    if per_class < 1:
        raise ValueError(f"enrollment needs at least 1 clip per class, got {per_class}")
    rng = rng_for(seed, "plan", "enroll")
    items: list[Item] = []
    for label, name in enumerate(class_names):
        if name == SILENCE:
            items += [Item(label, None, None, 0, f"enroll/{name}/{i}")
                      for i in range(per_class * len(voices))]  # fmt: skip
            continue
        for voice in voices:
            words = _cycle(list(unknown_words), per_class, rng) if name == UNKNOWN else [name] * per_class
            items += [Item(label, words[j], voice, MAX_RENDITIONS + j, f"enroll/{name}/{voice}/{j}")
                      for j in range(per_class)]  # fmt: skip
    return items


def split_enrollment(clips: Sequence[WavClip], per_class: int,
                     seed: int) -> tuple[list[WavClip], list[WavClip]]:  # fmt: skip
    """(enrollment, evaluation) recordings: per speaker and class, per_class seeded picks
    enroll and the rest evaluate. A speaker with no more than per_class recordings of a
    class keeps one of them for evaluation, so every enrolled speaker is also evaluated."""
    if per_class < 1:
        raise ValueError(f"enrollment needs at least 1 clip per class, got {per_class}")
    groups: dict[tuple[str, int], list[WavClip]] = {}
    for clip in clips:
        groups.setdefault((clip.speaker, clip.label), []).append(clip)
    enroll: list[WavClip] = []
    for (speaker, label), group in sorted(groups.items()):
        order = rng_for(seed, "enroll", speaker, label).permutation(len(group))
        enroll += [group[i] for i in order[: min(per_class, len(group) - 1)]]
    chosen = {c.path for c in enroll}
    return enroll, [c for c in clips if c.path not in chosen]
