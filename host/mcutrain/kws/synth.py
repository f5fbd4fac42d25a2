"""SYNTHETIC speech for keyword spotting from Debian's synthesizers, espeak-ng and flite.

A `Voice` is one synthesizer setting: an espeak-ng accent with a voice variant
(`espeak:en-us+f3`) or a flite voice (`flite:slt`). `synthesize` returns one word as
float32 samples at 16 kHz; `Prosody` varies speaking rate and pitch between renditions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from ..formats.sources import read_wav

SAMPLE_RATE = 16000
ENGINES = ("espeak", "flite")
# espeak-ng's English accents (mbrola voices need packages Debian does not install by default).
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd", "en-gb-scotland", "en-029")  # fmt: skip
# "en-gb+VARIANT" does not find the variant (the name also matches an mbrola voice); the
# British voice's file name does.
ESPEAK_NAMES = {"en-gb": "gmw/en"}
# Variants change formants, pitch and voice quality: the numbered male and female ones, a
# Klatt-synthesis one and an old voice, of espeak-ng's ~90 (whispers and novelty voices are
# left out; adding the named human-like ones did not change held-out accuracy).
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "klatt3", "croak")  # fmt: skip
# flite's built-in voices; awb_time is a limited-domain voice that can only tell the time.
FLITE_VOICES = ("kal", "kal16", "awb", "rms", "slt")
# kal and kal16 are the same speaker (diphones at 8 and 16 kHz): one identity for the split.
FLITE_SPEAKERS = {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"}
TIMEOUT_S = 30.0


class SynthError(RuntimeError):
    """A synthesizer is missing or failed."""


@dataclass(frozen=True, order=True)
class Voice:
    """One synthesizer voice: engine "espeak" (name = accent, variant) or "flite" (name)."""

    engine: str
    name: str
    variant: str = ""

    def __str__(self) -> str:
        return f"{self.engine}:{self.name}" + (f"+{self.variant}" if self.variant else "")

    def identities(self) -> set[str]:
        """What a voice shares with others: its accent and variant, or its flite speaker.

        Two voices with a common identity never go to different splits."""
        if self.engine == "espeak":
            return {f"accent:{self.name}", f"variant:{self.variant}"}
        return {f"flite:{FLITE_SPEAKERS.get(self.name, self.name)}"}


def parse_voice(text: str) -> Voice:
    """`espeak:ACCENT+VARIANT` or `flite:NAME` as a Voice (checked against the known lists)."""
    engine, _, rest = text.partition(":")
    if engine == "espeak":
        accent, _, variant = rest.partition("+")
        if accent not in ESPEAK_ACCENTS or variant not in ESPEAK_VARIANTS:
            raise ValueError(f"unknown espeak-ng voice {text!r} (want espeak:ACCENT+VARIANT, "
                             f"accents {', '.join(ESPEAK_ACCENTS)}; "
                             f"variants {', '.join(ESPEAK_VARIANTS)})")  # fmt: skip
        return Voice("espeak", accent, variant)
    if engine == "flite":
        if rest not in FLITE_VOICES:
            raise ValueError(f"unknown flite voice {text!r} (want one of "
                             f"{', '.join('flite:' + v for v in FLITE_VOICES)})")  # fmt: skip
        return Voice("flite", rest)
    raise ValueError(f"unknown voice {text!r}: want espeak:ACCENT+VARIANT or flite:NAME")


def all_voices() -> list[Voice]:
    """Every voice this module knows, espeak-ng's accent x variant grid then flite's."""
    espeak = [Voice("espeak", a, v) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS]
    return espeak + [Voice("flite", v) for v in FLITE_VOICES]


@dataclass(frozen=True)
class Prosody:
    """Speaking rate and pitch relative to the voice's default (1.0 = unchanged)."""

    rate: float = 1.0
    pitch: float = 1.0

    @classmethod
    def random(cls, rng: np.random.Generator) -> Prosody:
        return cls(rate=float(rng.uniform(0.75, 1.15)), pitch=float(rng.uniform(0.6, 1.4)))


def check_synthesizers(engines: tuple[str, ...] = ENGINES) -> None:
    """Raise SynthError naming the Debian package when espeak-ng or flite is not installed."""
    for engine in engines:
        program = "espeak-ng" if engine == "espeak" else "flite"
        if shutil.which(program) is None:
            raise SynthError(f"{program} is not installed: the SYNTHETIC keyword-spotting set "
                             f"needs it (sudo apt-get install {program})")  # fmt: skip


def _command(word: str, voice: Voice, prosody: Prosody, out: str) -> list[str]:
    if voice.engine == "espeak":
        # espeak-ng's defaults are 175 words per minute and pitch 50 (of 0..99).
        speed = int(round(175 * prosody.rate))
        pitch = int(np.clip(round(50 * prosody.pitch), 0, 99))
        name = ESPEAK_NAMES.get(voice.name, voice.name)
        return ["espeak-ng", "-v", f"{name}+{voice.variant}", "-s", str(speed), "-p", str(pitch),
                "-w", out, word]  # fmt: skip
    # flite's pitch control differs between its voice types: only the rate is set here; the
    # augmentation's resampling varies the pitch of every voice alike.
    return ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1.0 / prosody.rate:.4f}",
            "-t", word, "-o", out]  # fmt: skip


def to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """audio resampled to 16 kHz (polyphase, exact rational ratio)."""
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32)
    g = np.gcd(rate, SAMPLE_RATE)
    return resample_poly(audio, SAMPLE_RATE // g, rate // g).astype(np.float32)


def synthesize(word: str, voice: Voice, prosody: Prosody = Prosody()) -> np.ndarray:
    """One word spoken by `voice` as float32 samples at 16 kHz (SYNTHETIC speech)."""
    with tempfile.TemporaryDirectory(prefix="mcutrain-kws-") as tmp:
        out = os.path.join(tmp, "word.wav")
        cmd = _command(word, voice, prosody, out)
        try:
            run = subprocess.run(cmd, capture_output=True, timeout=TIMEOUT_S, check=False)
        except FileNotFoundError:
            check_synthesizers((voice.engine,))
            raise
        if run.returncode != 0 or not os.path.exists(out):
            err = run.stderr.decode(errors="replace").strip()
            raise SynthError(f"{' '.join(cmd)} failed (exit {run.returncode}): {err}")
        audio, rate = read_wav(out)
    if audio.size == 0 or not np.any(audio):
        raise SynthError(f"{voice} produced no sound for {word!r}")
    return to_16k(audio, rate)


def versions() -> dict[str, str]:
    """The synthesizers' version strings (for the dataset's provenance)."""
    out = {}
    for program in ("espeak-ng", "flite"):
        try:
            run = subprocess.run([program, "--version"], capture_output=True, timeout=TIMEOUT_S)
            text = run.stdout.decode(errors="replace").strip()
        except (OSError, subprocess.TimeoutExpired):
            continue
        # "eSpeak NG text-to-speech: 1.51  Data at: ..."; flite: "  version: flite-2.2-current"
        for line in text.splitlines():
            if "text-to-speech:" in line:
                out[program] = line.split("text-to-speech:")[1].split("Data at")[0].strip()
            elif "version:" in line:
                out[program] = line.split("version:")[1].split()[0]
    return out
