"""The SYNTHETIC keyword-spotting set (mcutrain.kws): MFCCs against a direct computation,
the voice split, a tiny generated set (shapes, balance, determinism), recorded WAV folders,
bad inputs and the `mcutrain kws-dataset` command. Everything here runs in a few seconds."""

from __future__ import annotations

import shutil
import wave
from pathlib import Path

import conftest  # noqa: F401 - puts this checkout's host package on sys.path
import numpy as np
import pytest
from mcutrain.cli import main
from mcutrain.formats import read_dataset
from mcutrain.kws import (
    CLASS_NAMES,
    DEFAULT_TEST_VOICES,
    MfccParams,
    Voice,
    augment_word,
    log_mel,
    make_kws_dataset,
    make_noise,
    mfcc,
    parse_voice,
    split_voices,
    synthesize,  # fmt: skip
)
from mcutrain.kws.mfcc import hz_to_mel, mel_band_edges
from mcutrain.kws.synth import ESPEAK_ACCENTS

needs_synth = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="espeak-ng and flite are not installed (`make setup` installs them)",
)
RATE = 16000
SMALL = {"samples_per_class": 3, "test_samples_per_class": 2, "seed": 7}


def tone(freq: float, amplitude: float = 0.5, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


# -- MFCC -------------------------------------------------------------------------------------


def reference_mfcc(audio: np.ndarray, p: MfccParams) -> np.ndarray:
    """The textbook computation, one frame at a time, in float64 with explicit formulas."""
    x = np.asarray(audio, dtype=np.float64)
    x = np.concatenate([x[:1], x[1:] - p.preemphasis * x[:-1]])
    win, hop = p.window_length, p.hop_length
    n = np.arange(win)
    hamming = 0.54 - 0.46 * np.cos(2 * np.pi * n / (win - 1))
    k = np.arange(p.n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(n, k) / p.n_fft)  # zero padding to n_fft is implicit
    mel_lo, mel_hi = hz_to_mel(p.fmin), hz_to_mel(p.fmax)
    edges = [700 * (10 ** ((mel_lo + i * (mel_hi - mel_lo) / (p.n_mels + 1)) / 2595) - 1)
             for i in range(p.n_mels + 2)]  # fmt: skip
    freqs = k * p.sample_rate / p.n_fft
    out = []
    for start in range(0, len(x) - win + 1, hop):
        power = np.abs((x[start : start + win] * hamming) @ dft) ** 2
        logmel = []
        for m in range(p.n_mels):
            lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
            weights = [max(0.0, min((f - lo) / (mid - lo), (hi - f) / (hi - mid))) for f in freqs]
            logmel.append(np.log(np.dot(weights, power) + p.log_floor))
        coeffs = []
        for c in range(p.n_mfcc):
            scale = np.sqrt(1 / p.n_mels) if c == 0 else np.sqrt(2 / p.n_mels)
            coeffs.append(scale * sum(logmel[m] * np.cos(np.pi * c * (2 * m + 1) / (2 * p.n_mels))
                                      for m in range(p.n_mels)))  # fmt: skip
        out.append(coeffs)
    return np.array(out)


def test_mfcc_of_one_second_is_49_frames_of_10_coefficients():
    assert mfcc(tone(440)).shape == (49, 10)
    assert mfcc(np.stack([tone(440), tone(880)])).shape == (2, 49, 10)
    assert mfcc(tone(440), MfccParams(window_ms=25, hop_ms=10)).shape == (98, 10)


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0])
def test_log_mel_of_a_tone_peaks_in_the_filter_centred_nearest_its_frequency(freq):
    p = MfccParams()
    centres = mel_band_edges(p)[1:-1]
    expected = int(np.argmin(np.abs(hz_to_mel(centres) - hz_to_mel(freq))))
    bands = log_mel(tone(freq), p)
    assert (bands.argmax(axis=-1) == expected).all()
    # The tone's band holds far more energy than bands two filters or more away.
    far = np.abs(np.arange(p.n_mels) - expected) >= 2
    assert (bands[:, expected, None] - bands[:, far] > 5).all()  # > e^5 = 148x the energy


def test_mfcc_matches_the_direct_frame_by_frame_computation():
    rng = np.random.default_rng(0)
    audio = (tone(700, 0.3) + 0.05 * rng.standard_normal(RATE)).astype(np.float32)[:4000]
    p = MfccParams()
    ours = mfcc(audio, p)
    ref = reference_mfcc(audio, p)
    assert ours.shape == ref.shape == (p.frames(4000), 10)
    # float32 spectra against float64: log energies agree to ~1e-5 relative; c0 sums 40 of them.
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-3)


def test_mfcc_rejects_audio_shorter_than_one_window():
    with pytest.raises(ValueError, match="shorter than one 640-sample window"):
        mfcc(np.zeros(100, dtype=np.float32))


# -- voices, noise, augmentation -------------------------------------------------------------


def test_voice_split_shares_no_accent_variant_or_flite_speaker():
    train, test = split_voices(DEFAULT_TEST_VOICES)
    assert {str(v) for v in test} == set(DEFAULT_TEST_VOICES)
    assert {v.engine for v in test} == {"espeak", "flite"}
    held = set().union(*(v.identities() for v in test))
    assert not any(v.identities() & held for v in train)
    assert {v.engine for v in train} == {"espeak", "flite"} and len(train) > 50
    # kal and kal16 are one speaker: holding out one removes both.
    train_kal, _ = split_voices(["flite:kal16"])
    assert not {"flite:kal", "flite:kal16"} & {str(v) for v in train_kal}


def test_unknown_voices_are_rejected_with_the_known_ones_named():
    with pytest.raises(ValueError, match="accents en-us"):
        parse_voice("espeak:xx+m1")
    with pytest.raises(ValueError, match="flite:slt"):
        parse_voice("flite:nobody")
    with pytest.raises(ValueError, match="no test voices"):
        split_voices([])


@needs_synth
@pytest.mark.parametrize("accent", ESPEAK_ACCENTS)
def test_espeak_variants_change_the_voice_of_every_accent(accent):
    # espeak-ng ignores an unknown accent+variant silently ("en-gb+f3" once fell back to "en").
    a = synthesize("yes", Voice("espeak", accent, "m3"))
    b = synthesize("yes", Voice("espeak", accent, "f2"))
    assert a.size != b.size or not np.allclose(a, b)


@needs_synth
@pytest.mark.parametrize("name", ["kal", "slt"])
def test_flite_voices_come_out_at_16khz(name):
    audio = synthesize("stop", Voice("flite", name))
    assert audio.dtype == np.float32 and 0.2 * RATE < audio.size < 1.5 * RATE
    assert 0.01 < np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("kind, low_over_high", [("white", (0.5, 2)), ("pink", (5, 1e3)),
                                                 ("brown", (1e2, 1e6)), ("hum", (1e2, 1e9))])
def test_noise_has_unit_rms_and_its_colour(kind, low_over_high):
    noise = make_noise(kind, RATE, np.random.default_rng(1))
    assert np.sqrt(np.mean(noise.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    power = np.abs(np.fft.rfft(noise)) ** 2  # 1 Hz bins
    ratio = power[20:500].mean() / power[2000:6000].mean()
    assert low_over_high[0] < ratio < low_over_high[1]


def test_augmented_clip_is_one_second_of_16_bit_audio():
    word = tone(500, 0.8, 0.4)
    clip = augment_word(word, np.random.default_rng(3))
    assert clip.shape == (RATE,) and clip.dtype == np.float32
    assert np.array_equal(clip * 32768, np.rint(clip * 32768))
    assert np.abs(clip).max() < 1.0
    # A word longer than a second is sped up to fit rather than cut.
    long = augment_word(tone(500, 0.8, 1.3), np.random.default_rng(3))
    assert long.shape == (RATE,)


# -- the generated set ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("espeak-ng and flite are not installed (`make setup` installs them)")
    out = tmp_path_factory.mktemp("kws")
    info = make_kws_dataset(out, **SMALL)
    return out, info


def test_small_set_has_balanced_classes_of_49x10x1_features(small):
    out, info = small
    train, test = read_dataset(out / "kws_train.mtd"), read_dataset(out / "kws_test.mtd")
    assert train.x.shape == (3 * 12, 49, 10, 1) and test.x.shape == (2 * 12, 49, 10, 1)
    assert train.class_names == test.class_names == list(CLASS_NAMES)
    assert np.bincount(train.y.reshape(-1), minlength=12).tolist() == [3] * 12
    assert np.bincount(test.y.reshape(-1), minlength=12).tolist() == [2] * 12
    assert info.train_count == 36 and info.sample_shape == (49, 10, 1)
    # Normalized with the training split's statistics and clipped at 4 standard deviations.
    assert np.abs(train.x).max() <= 4.0 and abs(float(train.x.mean())) < 0.1


def test_small_set_meta_says_synthetic_and_how_the_features_were_made(small):
    out, _ = small
    meta = read_dataset(out / "kws_test.mtd").meta
    assert meta["synthetic"] is True and meta["split"] == "test"
    assert meta["mfcc"]["window_ms"] == 40 and meta["mfcc"]["n_mels"] == 40
    assert meta["mfcc"]["n_mfcc"] == 10 and meta["sample_rate"] == 16000
    norm = meta["normalization"]
    assert norm["computed_on"] == "train" and len(norm["mean"]) == len(norm["std"]) == 10
    voices = meta["voices"]
    assert voices["test"] == {"espeak:en-029": ["f4", "m4"],
                              "espeak:en-gb-scotland": ["f4", "m4"], "flite": ["rms"]}  # fmt: skip
    # No accent, variant or flite voice of the test split is in the training split.
    assert not set(voices["train"]) & {"espeak:en-029", "espeak:en-gb-scotland"}
    train_variants = {v for k, vs in voices["train"].items() if k != "flite" for v in vs}
    assert train_variants and not train_variants & {"f4", "m4"}
    assert "rms" not in voices["train"]["flite"] and "slt" in voices["train"]["flite"]
    assert "espeak-ng" in meta["synthesizers"] and "flite" in meta["synthesizers"]


def test_the_same_seed_gives_identical_files_and_another_seed_others(small, tmp_path):
    out, _ = small
    make_kws_dataset(tmp_path / "again", **SMALL)
    for name in ("kws_train.mtd", "kws_test.mtd"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
    make_kws_dataset(tmp_path / "other", **{**SMALL, "seed": 8})
    assert (tmp_path / "other" / "kws_train.mtd").read_bytes() != (
        out / "kws_train.mtd").read_bytes()  # fmt: skip


@needs_synth
def test_int8_files_share_the_training_split_scale(tmp_path):
    make_kws_dataset(tmp_path, samples_per_class=1, dtype="int8", seed=1,
                     classes=("yes", "no", "_silence_"))  # fmt: skip
    train = read_dataset(tmp_path / "kws_train.mtd")
    test = read_dataset(tmp_path / "kws_test.mtd")
    assert train.x.dtype == np.int8 and train.x.shape == (3, 49, 10, 1)
    assert (train.scale, train.zero_point) == (test.scale, test.zero_point)
    assert train.class_names == ["yes", "no", "_silence_"]


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="at least 1"):
        make_kws_dataset(tmp_path, samples_per_class=0)
    with pytest.raises(ValueError, match="dtype"):
        make_kws_dataset(tmp_path, samples_per_class=1, dtype="int4")
    with pytest.raises(ValueError, match="distinct"):
        make_kws_dataset(tmp_path, samples_per_class=1, classes=("yes", "yes"))
    with pytest.raises(ValueError, match="unknown espeak-ng voice"):
        make_kws_dataset(tmp_path, samples_per_class=1, test_voices=("espeak:en-us+zz",))


# -- recorded WAV folders ---------------------------------------------------------------------


def write_wav(path: Path, audio: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 0.999) * 32767).astype("<i2").tobytes())


def speech_commands_like(root: Path, speakers: int = 5) -> None:
    """Tones standing in for words: yes/, no/, two other words, background noise."""
    for w, (word, freq) in enumerate({"yes": 400, "no": 900, "cat": 1500, "dog": 2500}.items()):
        for s in range(speakers):
            audio = tone(freq * (1 + 0.02 * s), 0.5, 0.6 + 0.05 * w)
            write_wav(root / word / f"spk{s:02d}_nohash_0.wav", audio)
    write_wav(root / "_background_noise_" / "hum.wav", 0.1 * make_noise(
        "hum", 3 * RATE, np.random.default_rng(0)))  # fmt: skip


def test_wav_folder_gives_speaker_disjoint_splits(tmp_path):
    speech_commands_like(tmp_path / "wavs")
    info = make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=4,
                            seed=0, classes=("yes", "no", "_unknown_", "_silence_"))  # fmt: skip
    train = read_dataset(tmp_path / "out" / "kws_train.mtd")
    test = read_dataset(tmp_path / "out" / "kws_test.mtd")
    assert train.x.shape == (16, 49, 10, 1)
    assert np.bincount(train.y.reshape(-1)).tolist() == [4, 4, 4, 4]
    assert not info.synthetic and train.meta["synthetic"] is False
    assert not set(info.train_voices) & set(info.test_voices)
    assert train.meta["speakers"] == {"train": 4, "test": 1}
    assert train.meta["unknown_words"] == ["cat", "dog"]
    # Test clips are used as recorded, at most test_samples_per_class per class: 1 speaker.
    assert np.bincount(test.y.reshape(-1), minlength=4).tolist()[:3] == [1, 1, 2]


def test_wav_folder_testing_list_chooses_the_test_speakers(tmp_path):
    speech_commands_like(tmp_path / "wavs")
    (tmp_path / "wavs" / "testing_list.txt").write_text("yes/spk03_nohash_0.wav\n")
    info = make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=2,
                            classes=("yes", "no", "_unknown_"))  # fmt: skip
    assert info.test_voices == ["spk03"] and "spk03" not in info.train_voices


def test_wav_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "missing", samples_per_class=1)
    speech_commands_like(tmp_path / "wavs")
    with pytest.raises(ValueError, match="no .wav files for class.*left"):
        make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=1)
    write_wav(tmp_path / "wavs" / "yes" / "spk09_nohash_0.wav", tone(400, 0.5, 0.5), rate=8000)
    with pytest.raises(ValueError, match="8000 Hz, need 16000 Hz"):
        make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=8,
                         classes=("yes", "no"))  # fmt: skip


# -- the command ------------------------------------------------------------------------------


@needs_synth
def test_cli_kws_dataset_writes_both_files_and_says_they_are_synthetic(tmp_path, capsys):
    assert main(["kws-dataset", str(tmp_path), "--samples-per-class", "1", "--dtype", "int8"]) == 0
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "kws_train.mtd: 12 samples" in out
    assert "kws_test.mtd: 12 samples" in out and "flite:rms" in out
    assert (tmp_path / "kws_test.mtd").is_file()


def test_cli_kws_dataset_reports_a_missing_wav_folder(tmp_path, capsys):
    assert main(["kws-dataset", str(tmp_path), "--from-wav", str(tmp_path / "nope")]) == 1
    assert "no such folder of WAV recordings" in capsys.readouterr().err
