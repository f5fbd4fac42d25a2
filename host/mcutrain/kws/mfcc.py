"""MFCC features for keyword spotting, in numpy/scipy.

The defaults give "Hello Edge"'s 49 x 10 input for a 1 s clip at 16 kHz (Zhang et al. 2017,
"Hello Edge: Keyword Spotting on Microcontrollers", sec. 3): 40 ms frames every 20 ms (49
frames), 40 mel filters, 10 coefficients. The steps follow the usual conventions:

1. optional pre-emphasis y[n] = x[n] - a x[n-1] (a = `preemphasis`, 0 turns it off),
2. frames of `window_ms` every `hop_ms`, no padding: 1 + (N - window) // hop frames,
3. a symmetric Hamming window, power spectrum |rfft|^2 with `n_fft` points,
4. `n_mels` triangular filters equally spaced on the HTK mel scale
   (mel = 2595 log10(1 + f / 700)) between `fmin` and `fmax`, unnormalized (peak 1),
5. natural log of the filter energies plus `log_floor`,
6. DCT-II with orthonormal scaling (scipy.fft.dct(type=2, norm="ortho")), the first
   `n_mfcc` coefficients kept (c0 included, no liftering).

`MfccParams(window_ms=25, hop_ms=10)` gives the speech-recognition 25 ms / 10 ms framing
(98 x 10 for 1 s, twice the work on the device).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy.fft import dct

from .synth import SAMPLE_RATE


@dataclass(frozen=True)
class MfccParams:
    """What produces the features; stored in the dataset's meta as `mfcc`."""

    sample_rate: int = SAMPLE_RATE
    window_ms: float = 40.0
    hop_ms: float = 20.0
    n_fft: int = 1024
    n_mels: int = 40
    n_mfcc: int = 10
    fmin: float = 20.0
    fmax: float = 4000.0
    preemphasis: float = 0.97
    log_floor: float = 1e-6
    window: str = "hamming"

    @property
    def window_length(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    def frames(self, samples: int) -> int:
        """Frames for a clip of `samples` samples."""
        return 1 + (samples - self.window_length) // self.hop_length

    def as_meta(self) -> dict[str, object]:
        return {**asdict(self), "mel_scale": "htk", "dct": "II-ortho", "log": "ln"}


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_band_edges(params: MfccParams) -> np.ndarray:
    """(n_mels + 2) frequencies in Hz: filter i rises from edge i, peaks at i+1, ends at i+2."""
    return mel_to_hz(np.linspace(hz_to_mel(params.fmin), hz_to_mel(params.fmax),
                                 params.n_mels + 2))  # fmt: skip


@lru_cache(maxsize=8)
def mel_filterbank(params: MfccParams) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular weights on the rfft bins."""
    edges = mel_band_edges(params)
    bins = np.fft.rfftfreq(params.n_fft, 1.0 / params.sample_rate)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lo) / (mid - lo)
    falling = (hi - bins) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


def _frames(audio: np.ndarray, params: MfccParams) -> np.ndarray:
    """(..., frames, window_length) views of audio (..., samples), pre-emphasized."""
    x = np.asarray(audio, dtype=np.float32)
    if x.shape[-1] < params.window_length:
        raise ValueError(f"audio of {x.shape[-1]} samples is shorter than one "
                         f"{params.window_length}-sample window")  # fmt: skip
    if params.preemphasis:
        x = np.concatenate([x[..., :1], x[..., 1:] - params.preemphasis * x[..., :-1]], axis=-1)
    n = params.frames(x.shape[-1])
    windows = np.lib.stride_tricks.sliding_window_view(x, params.window_length, axis=-1)
    return windows[..., : (n - 1) * params.hop_length + 1 : params.hop_length, :]


def power_spectrum(audio: np.ndarray, params: MfccParams = MfccParams()) -> np.ndarray:
    """(..., frames, n_fft // 2 + 1) windowed power spectra."""
    if params.window != "hamming":
        raise ValueError(f"window {params.window!r}: only 'hamming' is supported")
    frames = _frames(audio, params) * np.hamming(params.window_length).astype(np.float32)
    return np.abs(np.fft.rfft(frames, n=params.n_fft, axis=-1)) ** 2


def log_mel(audio: np.ndarray, params: MfccParams = MfccParams()) -> np.ndarray:
    """(..., frames, n_mels) log mel filter energies of audio (..., samples) in [-1, 1]."""
    energies = power_spectrum(audio, params) @ mel_filterbank(params).T
    return np.log(energies + params.log_floor).astype(np.float32)


def mfcc(audio: np.ndarray, params: MfccParams = MfccParams()) -> np.ndarray:
    """(..., frames, n_mfcc) MFCCs of audio (..., samples): 49 x 10 for 1 s by default."""
    coeffs = dct(log_mel(audio, params), type=2, norm="ortho", axis=-1)
    return coeffs[..., : params.n_mfcc].astype(np.float32)
