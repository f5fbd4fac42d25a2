"""`make_kws_dataset`: a SYNTHETIC keyword-spotting set (or one from recorded WAVs) as two
.mtd files, kws_train.mtd and kws_test.mtd, of normalized MFCCs shaped (49, 10, 1), and with
enroll_per_class a third, kws_enroll.mtd: a few clips per class from each held-out voice or
test speaker, for adapting a model to them (kws_test.mtd then holds the rest of theirs).

Features are normalized per coefficient with the training split's mean and standard
deviation, then clipped to +-NORM_CLIP: x = clip((mfcc - mean) / std, -4, 4). Both splits are
stored normalized, and the statistics are in meta["normalization"] so new audio can be
featurized the same way. int8 files share one scale and zero point, the training split's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..formats import int8_params, write_dataset
from ..formats.common import SAMPLE_DTYPES
from .augment import CLIP_SAMPLES, AugmentParams, augment_word, silence_clip, trim
from .enroll import ENROLL_FILE, plan_enrollment, split_enrollment
from .mfcc import MfccParams, mfcc
from .plan import (
    CLASS_NAMES,
    DEFAULT_TEST_VOICES,
    SILENCE,
    UNKNOWN,
    UNKNOWN_WORDS,
    Item,
    plan_split,  # fmt: skip
    rng_for,
    split_voices,
    voice_table,
)
from .synth import SAMPLE_RATE, Prosody, check_synthesizers, parse_voice, synthesize, versions
from .wavdir import WavClip, WavFolder, background_clip, read_clip, scan_wav_folder, split_wav_clips

TRAIN_FILE = "kws_train.mtd"
TEST_FILE = "kws_test.mtd"
NORM_CLIP = 4.0  # standard deviations; keeps rare outliers from stretching the int8 scale
FEATURE_BATCH = 64  # clips per MFCC batch: about 50 MB of spectra at a time
SERIAL_BELOW = 24  # syntheses: fewer than this are not worth starting worker processes


@dataclass
class KwsDataset:
    """What make_kws_dataset wrote."""

    train_path: Path
    test_path: Path
    train_count: int
    test_count: int
    class_names: list[str]
    sample_shape: tuple[int, ...]
    dtype: str
    synthetic: bool
    train_voices: list[str] = field(default_factory=list)  # voices, or speakers for WAVs
    test_voices: list[str] = field(default_factory=list)
    syntheses: int = 0
    seconds: float = 0.0
    enroll_path: Path | None = None  # with enroll_per_class: the held-out voices' enrollment clips
    enroll_count: int = 0


# -- turning plans into 1 s clips -------------------------------------------------------------


def _synth_job(job: tuple[str, str, int, int]) -> np.ndarray:
    """One trimmed synthesis; the rendition's rate and pitch come from the seed."""
    word, voice, rendition, seed = job
    prosody = Prosody.random(rng_for(seed, "prosody", word, voice, rendition))
    return trim(synthesize(word, parse_voice(voice), prosody))


def synthesize_sources(sources: Sequence[tuple[str, str, int]], seed: int,
                       workers: int = 2) -> dict[tuple[str, str, int], np.ndarray]:  # fmt: skip
    """Each (word, voice, rendition) synthesized once, on `workers` processes."""
    jobs = [(w, v, r, seed) for w, v, r in sources]
    if workers <= 1 or len(jobs) < SERIAL_BELOW:
        audio = [_synth_job(j) for j in jobs]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            audio = list(pool.map(_synth_job, jobs, chunksize=8))
    return dict(zip(sources, audio, strict=True))


def synthetic_clips(items: Sequence[Item], seed: int, augment: AugmentParams,
                    words: dict[tuple[str, str, int], np.ndarray],
                    ) -> Iterator[np.ndarray]:  # fmt: skip
    """Each item's 1 s clip: its word augmented, or silence."""
    for item in items:
        rng = rng_for(seed, "augment", item.key)
        source = item.source
        yield silence_clip(rng, augment) if source is None else augment_word(
            words[source], rng, augment)  # fmt: skip


def wav_plan(clips: Sequence[WavClip], n: int, split: str, class_names: Sequence[str],
             seed: int, augmented: bool) -> list[tuple[int, Path | None, str]]:  # fmt: skip
    """(label, recording or None for silence, key) per sample: n per class when augmented
    (reusing a class's recordings if it has fewer), else at most n per class."""
    rng = rng_for(seed, "wav-plan", split)
    plan: list[tuple[int, Path | None, str]] = []
    for label, name in enumerate(class_names):
        mine = [c for c in clips if c.label == label]
        if name == SILENCE and not mine:
            plan += [(label, None, f"{split}/{name}/{i}") for i in range(n)]
            continue
        if not mine:
            raise ValueError(f"the {split} speakers have no recordings of {name!r}")
        order = [mine[j] for j in rng.permutation(len(mine))]
        count = n if augmented else min(n, len(order))
        plan += [(label, order[i % len(order)].path, f"{split}/{name}/{i}") for i in range(count)]
    return plan


def wav_clips(plan: Sequence[tuple[int, Path | None, str]], folder: WavFolder, seed: int,
              augment: AugmentParams | None) -> Iterator[np.ndarray]:  # fmt: skip
    """The planned 1 s clips: recordings augmented (or as recorded when augment is None), and
    silence from the background recordings or synthesized noise."""
    for _, path, key in plan:
        rng = rng_for(seed, "wav", key)
        if path is None:
            if folder.background and rng.random() < 0.5:
                yield background_clip(folder.background, rng) * 10 ** (rng.uniform(-20, 0) / 20)
            else:
                yield silence_clip(rng, augment or AugmentParams())
        elif augment is None:
            audio = read_clip(path)
            clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
            clip[: min(audio.size, CLIP_SAMPLES)] = audio[:CLIP_SAMPLES]
            yield clip
        else:
            yield augment_word(trim(read_clip(path)), rng, augment)


# -- features ---------------------------------------------------------------------------------


def features(clips: Iterable[np.ndarray], params: MfccParams) -> np.ndarray:
    """(N, frames, n_mfcc) MFCCs of 1 s clips, FEATURE_BATCH at a time (bounded memory)."""
    parts, batch = [], []
    for clip in clips:
        batch.append(clip)
        if len(batch) == FEATURE_BATCH:
            parts.append(mfcc(np.stack(batch), params))
            batch = []
    if batch:
        parts.append(mfcc(np.stack(batch), params))
    return np.concatenate(parts).astype(np.float32)


def normalization(train: np.ndarray) -> dict[str, Any]:
    """Per-coefficient mean and std over the training split's samples and frames."""
    mean = train.mean(axis=(0, 1), dtype=np.float64)
    std = np.maximum(train.std(axis=(0, 1), dtype=np.float64), 1e-6)
    return {"mean": [float(f"{m:.6g}") for m in mean], "std": [float(f"{s:.6g}") for s in std],
            "clip": NORM_CLIP, "computed_on": "train", "applied": True}  # fmt: skip


def normalize(x: np.ndarray, norm: dict[str, Any]) -> np.ndarray:
    """clip((x - mean) / std, -clip, clip), as stored in the files."""
    mean = np.asarray(norm["mean"], dtype=np.float32)
    std = np.asarray(norm["std"], dtype=np.float32)
    return np.clip((x - mean) / std, -norm["clip"], norm["clip"]).astype(np.float32)


# -- the whole set ----------------------------------------------------------------------------


def _check_args(samples_per_class: int, test_samples_per_class: int, dtype: str,
                classes: Sequence[str]) -> None:  # fmt: skip
    if samples_per_class < 1 or test_samples_per_class < 1:
        raise ValueError("samples per class must be at least 1")
    if dtype not in SAMPLE_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(SAMPLE_DTYPES)}, got {dtype!r}")
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes must be at least two distinct names, got {list(classes)}")


@dataclass
class _Splits:
    """Both splits' features (not yet normalized), labels and voices or speakers."""

    train: tuple[np.ndarray, np.ndarray]  # (MFCCs (N, frames, n_mfcc), labels (N,))
    test: tuple[np.ndarray, np.ndarray]
    train_names: list[str]
    test_names: list[str]
    meta: dict[str, Any]
    syntheses: int = 0
    enroll: tuple[np.ndarray, np.ndarray] | None = None


def _synthetic(classes: list[str], words: list[str], test_voices: Sequence[str], n: int,
               n_test: int, n_enroll: int, seed: int, augment: AugmentParams, workers: int,
               params: MfccParams) -> _Splits:  # fmt: skip
    if UNKNOWN in classes and not words:
        raise ValueError("the _unknown_ class needs unknown_words that are not classes")
    train_voices, held_out = split_voices(test_voices)
    check_synthesizers()
    train_items = plan_split("train", train_voices, n, seed, classes, words)
    test_items = plan_split("test", held_out, n_test, seed, classes, words)
    plans = [train_items, test_items]
    if n_enroll:
        plans.append(plan_enrollment(held_out, n_enroll, seed, classes, words))
    sources = sorted({s for items in plans for it in items if (s := it.source) is not None})
    audio = synthesize_sources(sources, seed, workers)
    splits = [(features(synthetic_clips(items, seed, augment, audio), params),
               np.array([it.label for it in items], dtype=np.int64))
              for items in plans]  # fmt: skip
    meta = {"synthetic": True, "source": "SYNTHETIC speech: espeak-ng and flite",
            "synthesizers": versions(), "unknown_words": words, "augment": augment.as_meta(),
            "voices": {"train": voice_table(train_voices), "test": voice_table(held_out)}}
    return _Splits(splits[0], splits[1], [str(v) for v in train_voices],
                   [str(v) for v in held_out], meta, len(sources),
                   splits[2] if n_enroll else None)  # fmt: skip


def _recorded(from_wav: str | os.PathLike[str], classes: list[str], n: int, n_test: int,
              n_enroll: int, seed: int, augment: AugmentParams,
              params: MfccParams) -> _Splits:  # fmt: skip
    folder = scan_wav_folder(from_wav, classes)
    train_wavs, test_wavs = split_wav_clips(folder, seed)
    test_names = sorted({c.speaker for c in test_wavs})
    enroll_wavs: list[WavClip] = []
    if n_enroll:
        enroll_wavs, test_wavs = split_enrollment(test_wavs, n_enroll, seed)
        short = [name for label, name in enumerate(classes)
                 if name != SILENCE and not any(c.label == label for c in enroll_wavs)]  # fmt: skip
        if short:
            raise ValueError(f"{folder.root}: the held-out speakers have fewer than 2 recordings of "
                             f"{', '.join(short)}; enrollment needs one and evaluation keeps one")  # fmt: skip
    jobs: list[tuple[list[WavClip], int, AugmentParams | None, str]] = [
        (train_wavs, n, augment, "train"), (test_wavs, n_test, None, "test")]
    if n_enroll:
        # every enrollment recording as recorded; silence: n_enroll noise clips per speaker
        jobs.append((enroll_wavs, n_enroll * len(test_names), None, "enroll"))
    splits = []
    for wavs, count, aug, split in jobs:
        plan = wav_plan(wavs, count, split, classes, seed, aug is not None)
        splits.append((features(wav_clips(plan, folder, seed, aug), params),
                       np.array([label for label, _, _ in plan], dtype=np.int64)))
    train, test = splits[:2]
    train_names = sorted({c.speaker for c in train_wavs})
    # Counts only: thousands of speaker ids would not fit a board's RAM when it reads the info.
    meta = {"synthetic": False, "source": f"recorded WAVs from {folder.root.name}",
            "unknown_words": folder.unknown_words, "augment": augment.as_meta(),
            "speakers": {"train": len(train_names), "test": len(test_names)}}
    return _Splits(train, test, train_names, test_names, meta,
                   enroll=splits[2] if n_enroll else None)


def make_kws_dataset(
    out_dir: str | os.PathLike[str],
    *,
    samples_per_class: int = 150,
    seed: int = 0,
    classes: Sequence[str] = CLASS_NAMES,
    test_voices: Sequence[str] = DEFAULT_TEST_VOICES,
    test_samples_per_class: int | None = None,
    dtype: str = "float32",
    unknown_words: Sequence[str] = UNKNOWN_WORDS,
    from_wav: str | os.PathLike[str] | None = None,
    mfcc_params: MfccParams = MfccParams(),  # noqa: B008 - frozen dataclasses: shared defaults are safe
    augment: AugmentParams = AugmentParams(),  # noqa: B008
    workers: int = 2,
    enroll_per_class: int = 0,
) -> KwsDataset:
    """Write out_dir/kws_train.mtd and kws_test.mtd: MFCCs (49, 10, 1), labels 0..len(classes)-1.

    SYNTHETIC speech from espeak-ng and flite unless from_wav names a folder of recordings.
    Test voices (or, for recordings, speakers) never occur in training. The test split has
    test_samples_per_class per class (default: a third of samples_per_class, at least 1).
    enroll_per_class > 0 also writes kws_enroll.mtd: that many clips per class from each
    held-out voice (new syntheses) or test speaker (recordings then left out of the test
    split, which keeps at least one per speaker and class). The same arguments and seed give
    byte-identical files.
    """
    t0 = time.monotonic()
    classes = list(classes)
    n_test = test_samples_per_class or max(1, -(-samples_per_class // 3))
    _check_args(samples_per_class, n_test, dtype, classes)
    if enroll_per_class < 0:
        raise ValueError(f"enroll_per_class must be 0 (none) or more, got {enroll_per_class}")
    if from_wav is None:
        words = [w for w in unknown_words if w not in classes]
        splits = _synthetic(classes, words, test_voices, samples_per_class, n_test,
                            enroll_per_class, seed, augment, workers, mfcc_params)  # fmt: skip
    else:
        splits = _recorded(from_wav, classes, samples_per_class, n_test, enroll_per_class, seed,
                           augment, mfcc_params)  # fmt: skip
    norm = normalization(splits.train[0])
    x_train = normalize(splits.train[0], norm)[..., None]
    x_test = normalize(splits.test[0], norm)[..., None]
    meta = {"sample_rate": SAMPLE_RATE, "clip_samples": CLIP_SAMPLES, "seed": seed,
            "mfcc": mfcc_params.as_meta(), "normalization": norm, **splits.meta}  # fmt: skip
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scale, zero_point = int8_params(x_train) if dtype == "int8" else (None, None)
    files = [(TRAIN_FILE, x_train, splits.train[1], "train"),
             (TEST_FILE, x_test, splits.test[1], "test")]  # fmt: skip
    if splits.enroll is not None:
        files.append((ENROLL_FILE, normalize(splits.enroll[0], norm)[..., None], splits.enroll[1],
                      "enroll"))  # fmt: skip
    for name, x, y, split in files:
        write_dataset(out / name, x, y, dtype=dtype, class_names=classes,
                      meta={**meta, "split": split}, scale=scale,
                      zero_point=zero_point)  # fmt: skip
    enroll_count = len(splits.enroll[1]) if splits.enroll is not None else 0
    if not enroll_count:
        (out / ENROLL_FILE).unlink(missing_ok=True)  # an earlier run's, normalized differently
    return KwsDataset(out / TRAIN_FILE, out / TEST_FILE, len(x_train), len(x_test), classes,
                      tuple(x_train.shape[1:]), dtype, from_wav is None, splits.train_names,
                      splits.test_names, splits.syntheses, time.monotonic() - t0,
                      out / ENROLL_FILE if enroll_count else None, enroll_count)  # fmt: skip
