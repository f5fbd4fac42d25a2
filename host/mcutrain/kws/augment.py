"""Augmentation of SYNTHETIC (or recorded) words into 1 s, 16 kHz, 16-bit clips.

Each base clip is synthesized once; every sample derived from it gets its own speed/pitch
change (resampling), an occasional echo, time shift, gain and synthesized background noise
(white, pink, brown or mains hum) at a random SNR, drawn from its own seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from .synth import SAMPLE_RATE

CLIP_SAMPLES = SAMPLE_RATE  # 1 s
NOISE_KINDS = ("white", "pink", "brown", "hum")


@dataclass(frozen=True)
class AugmentParams:
    """Ranges the augmentation draws from (uniformly)."""

    speed: tuple[float, float] = (0.88, 1.12)  # resampling factor: >1 faster and higher
    shift_s: float = 0.15  # max offset of the word's centre from the clip's centre
    snr_db: tuple[float, float] = (5.0, 30.0)  # speech to noise power
    echo_prob: float = 0.3  # a room-like echo: one delayed, quieter copy of the word
    echo_delay_s: tuple[float, float] = (0.01, 0.12)
    echo_gain: tuple[float, float] = (0.1, 0.5)
    noise_prob: float = 0.85  # the rest are clean (apart from 16-bit rounding)
    peak_dbfs: tuple[float, float] = (-24.0, -1.0)  # the word's peak level after gain
    silence_dbfs: tuple[float, float] = (-70.0, -20.0)  # RMS of a _silence_ clip

    def as_meta(self) -> dict[str, object]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def trim(audio: np.ndarray, threshold_db: float = -40.0, margin_s: float = 0.02) -> np.ndarray:
    """audio without leading and trailing silence (frames quieter than peak + threshold_db)."""
    if audio.size == 0:
        return audio
    hop = SAMPLE_RATE // 100
    frames = audio[: audio.size // hop * hop].reshape(-1, hop) if audio.size >= hop else audio[None]
    energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    loud = np.flatnonzero(energy > energy.max() * 10 ** (threshold_db / 20))
    if loud.size == 0:
        return audio
    margin = int(margin_s * SAMPLE_RATE)
    start = max(0, loud[0] * hop - margin)
    stop = min(audio.size, (loud[-1] + 1) * hop + margin)
    return audio[start:stop]


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """audio played `factor` times faster (and higher), by polyphase resampling."""
    up = 100
    down = int(round(up * factor))
    if down == up:
        return audio
    return resample_poly(audio, up, down).astype(np.float32)


def _colored(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f**exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1.0 / SAMPLE_RATE)
    f[0] = f[1]  # no infinite DC gain
    noise = np.fft.irfft(spectrum / f ** (exponent / 2), n)
    return noise - noise.mean()


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """n samples of synthesized background noise of unit RMS."""
    if kind == "white":
        noise = rng.standard_normal(n)
    elif kind == "pink":
        noise = _colored(n, rng, 1.0)
    elif kind == "brown":
        noise = _colored(n, rng, 2.0)
    elif kind == "hum":
        # Mains hum: 50 or 60 Hz and its harmonics, with a little hiss.
        t = np.arange(n) / SAMPLE_RATE
        base = rng.choice((50.0, 60.0)) * rng.uniform(0.99, 1.01)
        noise = 0.05 * rng.standard_normal(n)
        for h in range(1, 8):
            noise += rng.uniform(0.1, 1.0) / h * np.sin(2 * np.pi * h * base * t
                                                        + rng.uniform(0, 2 * np.pi))  # fmt: skip
    else:
        raise ValueError(f"unknown noise kind {kind!r}: want one of {', '.join(NOISE_KINDS)}")
    rms = np.sqrt(np.mean(noise**2))
    return (noise / rms).astype(np.float32) if rms > 0 else noise.astype(np.float32)


def to_int16_range(clip: np.ndarray) -> np.ndarray:
    """clip rounded to 16-bit PCM values (and saturated), back as float32 in [-1, 1)."""
    return (np.clip(np.rint(clip * 32768.0), -32768, 32767) / 32768.0).astype(np.float32)


def place(word: np.ndarray, rng: np.random.Generator, shift_s: float) -> np.ndarray:
    """word in a 1 s clip, centred then shifted by up to shift_s either way (kept inside)."""
    clip = np.zeros(CLIP_SAMPLES, dtype=np.float32)
    word = word[:CLIP_SAMPLES]
    slack = CLIP_SAMPLES - word.size
    shift = int(rng.uniform(-shift_s, shift_s) * SAMPLE_RATE)
    start = int(np.clip(slack // 2 + shift, 0, slack))
    clip[start : start + word.size] = word
    return clip


def echo(audio: np.ndarray, delay_s: float, gain: float) -> np.ndarray:
    """audio plus a copy delayed by delay_s and scaled by gain (longer by the delay)."""
    d = int(delay_s * SAMPLE_RATE)
    out = np.zeros(audio.size + d, dtype=np.float32)
    out[: audio.size] = audio
    out[d:] += gain * audio
    return out


def augment_word(word: np.ndarray, rng: np.random.Generator,
                 params: AugmentParams = AugmentParams()) -> np.ndarray:  # fmt: skip
    """One 1 s clip from a (trimmed) word: speed, echo, shift, gain, noise, 16-bit."""
    fast = change_speed(word, float(rng.uniform(*params.speed)))
    if rng.random() < params.echo_prob:
        fast = echo(fast, rng.uniform(*params.echo_delay_s), rng.uniform(*params.echo_gain))
    if fast.size > CLIP_SAMPLES:  # too long for 1 s: speed it up just enough
        fast = change_speed(fast, np.ceil(100 * fast.size / (0.98 * CLIP_SAMPLES)) / 100)
    clip = place(fast, rng, params.shift_s)
    peak = float(np.max(np.abs(clip)))
    gain = 10 ** (rng.uniform(*params.peak_dbfs) / 20) / peak if peak > 0 else 1.0
    clip *= gain
    if rng.random() < params.noise_prob:
        speech_rms = float(np.sqrt(np.mean(fast.astype(np.float64) ** 2))) * gain
        snr = rng.uniform(*params.snr_db)
        noise = make_noise(str(rng.choice(NOISE_KINDS)), CLIP_SAMPLES, rng)
        clip += noise * speech_rms * 10 ** (-snr / 20)
    return to_int16_range(clip)


def silence_clip(rng: np.random.Generator, params: AugmentParams = AugmentParams()) -> np.ndarray:
    """A 1 s _silence_ clip: background noise only (one or two kinds), at a random level."""
    noise = make_noise(str(rng.choice(NOISE_KINDS)), CLIP_SAMPLES, rng)
    if rng.random() < 0.3:
        noise = noise + rng.uniform(0.1, 1.0) * make_noise(str(rng.choice(NOISE_KINDS)),
                                                           CLIP_SAMPLES, rng)  # fmt: skip
        noise /= np.sqrt(np.mean(noise**2))
    return to_int16_range(noise * 10 ** (rng.uniform(*params.silence_dbfs) / 20))
