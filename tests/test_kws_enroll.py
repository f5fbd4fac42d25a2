"""Enrollment clips for on-device adaptation (mcutrain.kws.enroll): a few clips per class from
each held-out voice or test speaker, none of them (and for synthetic speech none of their
syntheses) in the evaluation split. Runs in seconds."""

from __future__ import annotations

import shutil
from pathlib import Path

import conftest  # noqa: F401 - puts this checkout's host package on sys.path
import numpy as np
import pytest
from mcutrain.cli import main
from mcutrain.formats import read_dataset
from mcutrain.kws import CLASS_NAMES, KEYWORDS, UNKNOWN_WORDS, make_kws_dataset, split_voices
from mcutrain.kws.enroll import ENROLL_FILE, plan_enrollment, split_enrollment
from mcutrain.kws.plan import SILENCE, plan_split
from mcutrain.kws.wavdir import scan_wav_folder
from test_kws_dataset import DEFAULT_TEST_VOICES, tone, write_wav

CLASSES = ("yes", "no", "_unknown_", "_silence_")


def test_enrollment_plan_gives_each_held_out_voice_its_own_new_syntheses():
    _, held_out = split_voices(DEFAULT_TEST_VOICES)
    words = [w for w in UNKNOWN_WORDS if w not in CLASS_NAMES]
    enroll = plan_enrollment(held_out, 3, seed=4, class_names=CLASS_NAMES, unknown_words=words)
    test = plan_split("test", held_out, 40, 4, CLASS_NAMES, words)
    # 3 per class and voice (silence: 3 per voice, voiceless), held-out voices only.
    assert len(enroll) == 3 * len(held_out) * len(CLASS_NAMES)
    for label, name in enumerate(CLASS_NAMES):
        mine = [it for it in enroll if it.label == label]
        assert len(mine) == 3 * len(held_out)
        if name != SILENCE:
            assert {it.voice for it in mine} == set(held_out)
    # No synthesis (word, voice, rendition) and no clip key is shared with the test split.
    assert not {it.source for it in enroll if it.source} & {it.source for it in test if it.source}
    assert not {it.key for it in enroll} & {it.key for it in test}
    assert len({it.key for it in enroll}) == len(enroll)
    with pytest.raises(ValueError, match="at least 1"):
        plan_enrollment(held_out, 0, 4, CLASS_NAMES, words)


def recorded_folder(root: Path, speakers: int = 4, takes: int = 3,
                    words: tuple[str, ...] = ("yes", "no", "cat")) -> None:  # fmt: skip
    """Tones standing in for words, several takes per speaker and word."""
    for w, (word, freq) in enumerate(zip(words, range(400, 400 + 300 * len(words), 300))):
        for s in range(speakers):
            for t in range(takes):
                audio = tone(freq * (1 + 0.02 * s + 0.005 * t), 0.5, 0.6 + 0.05 * w)
                write_wav(root / word / f"spk{s:02d}_nohash_{t}.wav", audio)


def test_recordings_split_per_speaker_and_class_keeping_one_for_evaluation(tmp_path):
    recorded_folder(tmp_path, speakers=3, takes=3)
    clips = scan_wav_folder(tmp_path, CLASSES).clips
    enroll, rest = split_enrollment(clips, 5, seed=1)
    assert not {c.path for c in enroll} & {c.path for c in rest}
    assert len(enroll) + len(rest) == len(clips)
    for speaker in ("spk00", "spk01", "spk02"):
        for label in (0, 1, 2):
            mine = [c for c in clips if c.speaker == speaker and c.label == label]
            kept = [c for c in rest if c.speaker == speaker and c.label == label]
            # 5 asked, 3 takes (unknown: 3 of cat): all but one enroll.
            assert len(kept) == 1 and len(mine) - len(kept) == 2
    again, _ = split_enrollment(clips, 5, seed=1)
    assert again == enroll
    one, _ = split_enrollment(clips, 1, seed=1)
    assert len(one) == 3 * 3


def test_wav_folder_with_enrollment_writes_three_speaker_consistent_files(tmp_path):
    recorded_folder(tmp_path / "wavs", speakers=5, takes=3)
    info = make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=4,
                            seed=0, classes=CLASSES, enroll_per_class=2)  # fmt: skip
    train = read_dataset(tmp_path / "out" / "kws_train.mtd")
    test = read_dataset(tmp_path / "out" / "kws_test.mtd")
    enroll = read_dataset(tmp_path / "out" / ENROLL_FILE)
    assert info.enroll_path == tmp_path / "out" / ENROLL_FILE and info.enroll_count == len(enroll.y)
    assert len(info.test_voices) == 1  # 20% of 5 speakers, seeded
    # its 3 takes per word: 2 enroll, 1 evaluates; silence: 2 noise clips per speaker.
    assert np.bincount(enroll.y.reshape(-1), minlength=4).tolist() == [2, 2, 2, 2]
    assert np.bincount(test.y.reshape(-1), minlength=4).tolist()[:3] == [1, 1, 1]
    assert enroll.meta["split"] == "enroll" and enroll.meta["synthetic"] is False
    assert (enroll.scale, enroll.zero_point) == (train.scale, train.zero_point)
    # No enrollment clip's features equal an evaluation clip's.
    flat_test = {row.tobytes() for row in test.x}
    assert not any(row.tobytes() in flat_test for row in enroll.x if not np.all(row == row.flat[0]))
    # Without enrollment, an earlier run's kws_enroll.mtd goes (it was normalized for other data).
    make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=4,
                     seed=0, classes=CLASSES)  # fmt: skip
    assert not (tmp_path / "out" / ENROLL_FILE).exists()


@pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("flite") is None,
                    reason="espeak-ng and flite are not installed (`make setup` installs them)")
def test_synthetic_enrollment_file_holds_held_out_voices_and_leaves_the_test_split_alone(tmp_path):
    small = {"samples_per_class": 2, "test_samples_per_class": 2, "seed": 5,
             "classes": ("yes", "no", "_silence_")}  # fmt: skip
    info = make_kws_dataset(tmp_path / "with", enroll_per_class=1, **small)
    make_kws_dataset(tmp_path / "without", **small)
    enroll = read_dataset(info.enroll_path)
    assert info.enroll_count == 3 * 5  # 1 per class and each of the 5 held-out voices
    assert enroll.meta["voices"]["test"] == read_dataset(info.test_path).meta["voices"]["test"]
    for name in ("kws_train.mtd", "kws_test.mtd"):
        assert (tmp_path / "with" / name).read_bytes() == (tmp_path / "without" / name).read_bytes()
    with pytest.raises(ValueError, match="enroll_per_class"):
        make_kws_dataset(tmp_path / "bad", enroll_per_class=-1, **small)


def test_cli_kws_dataset_writes_and_describes_the_enrollment_file(tmp_path, capsys):
    recorded_folder(tmp_path / "wavs", speakers=5, takes=3, words=(*KEYWORDS, "cat"))
    assert main(["kws-dataset", str(tmp_path / "out"), "--from-wav", str(tmp_path / "wavs"),
                 "--samples-per-class", "2", "--enroll-per-class", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "kws_enroll.mtd: 12 enrollment samples" in out and "none of them in the test file" in out
    assert len(read_dataset(tmp_path / "out" / ENROLL_FILE).y) == 12


def test_enrollment_from_too_few_recordings_names_the_classes(tmp_path):
    recorded_folder(tmp_path / "wavs", speakers=5, takes=1)
    with pytest.raises(ValueError, match="fewer than 2 recordings of yes, no, _unknown_"):
        make_kws_dataset(tmp_path / "out", from_wav=tmp_path / "wavs", samples_per_class=2,
                         classes=CLASSES, enroll_per_class=1)  # fmt: skip
