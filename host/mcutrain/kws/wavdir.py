"""Recorded speech instead of SYNTHETIC: a folder of 16 kHz WAVs in the class layout.

One subfolder per word, as Speech Commands ships it (`yes/0a7c2a8d_nohash_0.wav`). Folders
named after a class become that class; other words become _unknown_; `_background_noise_`
recordings supply half of the _silence_ clips. The split is by speaker (the file name before
`_nohash_`): Speech Commands' testing_list.txt when present, else a seeded 20% of speakers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats.sources import read_wav
from .plan import SILENCE, UNKNOWN, rng_for
from .synth import SAMPLE_RATE

TEST_SPEAKER_SHARE = 0.2
BACKGROUND = "_background_noise_"


@dataclass(frozen=True)
class WavClip:
    label: int
    path: Path
    speaker: str


@dataclass(frozen=True)
class WavFolder:
    """What a WAV folder holds for the classes asked for."""

    root: Path
    clips: list[WavClip]
    unknown_words: list[str]
    background: list[Path]


def speaker_of(path: Path) -> str:
    """Speech Commands' speaker id (the name before `_nohash_`), else the file's stem."""
    return path.stem.split("_nohash_")[0]


def scan_wav_folder(root: str | os.PathLike[str], class_names: Sequence[str]) -> WavFolder:
    """The folder's clips labelled by class (sorted, so the same folder gives the same list)."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder of WAV recordings")
    clips: list[WavClip] = []
    unknown: list[str] = []
    folders = sorted(d for d in base.iterdir() if d.is_dir())
    for folder in folders:
        if folder.name.startswith("_") and folder.name not in class_names:
            continue
        if folder.name in class_names:
            label = class_names.index(folder.name)
        elif UNKNOWN in class_names:
            label = class_names.index(UNKNOWN)
        else:
            continue
        files = sorted(folder.glob("*.wav"))
        if files and folder.name not in class_names:
            unknown.append(folder.name)
        clips += [WavClip(label, f, speaker_of(f)) for f in files]
    background = sorted((base / BACKGROUND).glob("*.wav")) if (base / BACKGROUND).is_dir() else []
    have = {class_names[c.label] for c in clips} | ({SILENCE} & set(class_names))
    missing = [c for c in class_names if c not in have]
    if missing:
        raise ValueError(f"{base}: no .wav files for class(es) {', '.join(missing)} "
                         "(want one subfolder of 16 kHz WAVs per class)")  # fmt: skip
    return WavFolder(base, clips, unknown, background)


def split_wav_clips(folder: WavFolder, seed: int) -> tuple[list[WavClip], list[WavClip]]:
    """(train, test) clips with no speaker in both."""
    listed = folder.root / "testing_list.txt"
    if listed.is_file():
        names = {line.strip() for line in listed.read_text().splitlines() if line.strip()}
        test_speakers = {c.speaker for c in folder.clips
                         if c.path.relative_to(folder.root).as_posix() in names}  # fmt: skip
    else:
        speakers = sorted({c.speaker for c in folder.clips})
        n_test = max(1, int(round(TEST_SPEAKER_SHARE * len(speakers)))) if len(speakers) > 1 else 0
        order = rng_for(seed, "wav-split").permutation(len(speakers))
        test_speakers = {speakers[i] for i in order[:n_test]}
    train = [c for c in folder.clips if c.speaker not in test_speakers]
    test = [c for c in folder.clips if c.speaker in test_speakers]
    if not train or not test:
        raise ValueError(f"{folder.root}: cannot split {len(folder.clips)} clips by speaker into "
                         "a training and a test set (need at least two speakers)")  # fmt: skip
    return train, test


def read_clip(path: Path) -> np.ndarray:
    """A recorded clip as float32 at 16 kHz; any other rate is an error (resample first)."""
    audio, rate = read_wav(path)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: sample rate {rate} Hz, need {SAMPLE_RATE} Hz "
                         "(resample the recordings to 16 kHz mono first)")  # fmt: skip
    return audio


def background_clip(paths: Sequence[Path], rng: np.random.Generator) -> np.ndarray:
    """A random 1 s excerpt of one of the background recordings (zero-padded if shorter)."""
    audio = read_clip(paths[int(rng.integers(len(paths)))])
    clip = np.zeros(SAMPLE_RATE, dtype=np.float32)
    start = int(rng.integers(max(1, audio.size - SAMPLE_RATE + 1)))
    part = audio[start : start + SAMPLE_RATE]
    clip[: part.size] = part
    return clip
