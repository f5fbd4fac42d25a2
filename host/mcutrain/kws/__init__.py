"""Keyword spotting on the host: a SYNTHETIC speech dataset and its MFCC features.

    make_kws_dataset("data", samples_per_class=150, seed=0)   # data/kws_train.mtd, kws_test.mtd
    mfcc(audio)                                                 # (49, 10) for 1 s at 16 kHz

Speech comes from espeak-ng and flite (`synth`), is augmented into 1 s clips (`augment`),
turned into MFCCs (`mfcc`) and split by voice (`plan`); `wavdir` reads recorded WAV folders.
"""

from .augment import AugmentParams, augment_word, make_noise, silence_clip
from .dataset import KwsDataset, make_kws_dataset, normalize
from .mfcc import MfccParams, log_mel, mel_filterbank, mfcc
from .plan import CLASS_NAMES, DEFAULT_TEST_VOICES, KEYWORDS, UNKNOWN_WORDS, split_voices
from .synth import SynthError, Voice, all_voices, parse_voice, synthesize

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_TEST_VOICES",
    "KEYWORDS",
    "UNKNOWN_WORDS",
    "AugmentParams",
    "KwsDataset",
    "MfccParams",
    "SynthError",
    "Voice",
    "all_voices",
    "augment_word",
    "log_mel",
    "make_kws_dataset",
    "make_noise",
    "mel_filterbank",
    "mfcc",
    "normalize",
    "parse_voice",
    "silence_clip",
    "split_voices",
    "synthesize",
]
