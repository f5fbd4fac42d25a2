"""Each board's own keyword-spotting clips for a fleet run, split non-IID by voice: board N
holds the SYNTHETIC clips (espeak-ng, flite; mcutrain.kws) of its own one or two training
voices, and the held-out test voices (the ones `mcutrain kws-dataset` holds out) are heard by
no board. The boards share one feature normalization and one int8 scale, computed over all
their training clips together: a fleet fixes its input pipeline before it is deployed, as it
fixes the model's graph. POOLED is every board's clips in one file, for the centralized
baseline (docs/fleet.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..formats import int8_params, write_dataset
from ..kws.augment import AugmentParams
from ..kws.dataset import features, normalization, normalize, synthesize_sources, synthetic_clips
from ..kws.mfcc import MfccParams
from ..kws.plan import CLASS_NAMES, DEFAULT_TEST_VOICES, UNKNOWN_WORDS, plan_split, rng_for, split_voices
from ..kws.synth import check_synthesizers
from .data import Shard

POOLED = "pooled_train.mtd"


@dataclass
class KwsFleetData:
    shards: list[Shard]
    central: Path  # the held-out voices
    pooled: Path
    voices: list[list[str]]  # each board's voices


def kws_voice_shards(out: Path | str, boards: int, *, voices_per_board: int = 2, samples_per_class: int = 40,
                     test_samples_per_class: int = 30, seed: int = 0, workers: int = 1) -> KwsFleetData:  # fmt: skip
    """Write OUT/board-N/train.mtd (samples_per_class clips per class by the board's voices),
    OUT/central_test.mtd (the held-out voices) and OUT/pooled_train.mtd, all int8."""
    if boards < 1 or voices_per_board < 1:
        raise ValueError("a fleet needs at least one board with at least one voice")
    out = Path(out)
    train_voices, held_out = split_voices(DEFAULT_TEST_VOICES)
    if boards * voices_per_board > len(train_voices):
        raise ValueError(f"{boards} boards x {voices_per_board} voices: only {len(train_voices)} training voices")
    check_synthesizers()
    order = rng_for(seed, "fleet", "voices").permutation(len(train_voices))
    chosen = [train_voices[i] for i in order[: boards * voices_per_board]]
    per_board = [chosen[b * voices_per_board:(b + 1) * voices_per_board] for b in range(boards)]
    words = [w for w in UNKNOWN_WORDS if w not in CLASS_NAMES]
    plans = [plan_split(f"fleet-train-{b + 1}", voices, samples_per_class, seed, CLASS_NAMES, words)
             for b, voices in enumerate(per_board)]  # fmt: skip
    test_plan = plan_split("test", held_out, test_samples_per_class, seed, CLASS_NAMES, words)
    sources = sorted({s for plan in [*plans, test_plan] for it in plan if (s := it.source) is not None})
    audio = synthesize_sources(sources, seed, workers)
    augment, params = AugmentParams(), MfccParams()
    feats = [features(synthetic_clips(plan, seed, augment, audio), params) for plan in [*plans, test_plan]]
    labels = [np.array([it.label for it in plan], dtype=np.int64) for plan in [*plans, test_plan]]
    norm = normalization(np.concatenate(feats[:-1]))
    xs = [normalize(f, norm)[..., None] for f in feats]
    scale, zero_point = int8_params(np.concatenate(xs[:-1]))
    meta = {"synthetic": True, "source": "SYNTHETIC speech: espeak-ng and flite", "normalization": norm,
            "mfcc": params.as_meta(), "seed": seed}  # fmt: skip

    def write(path: Path, x: np.ndarray, y: np.ndarray, voices: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(path, x, y, dtype="int8", class_names=list(CLASS_NAMES), scale=scale, zero_point=zero_point,
                      meta={**meta, "voices": voices})  # fmt: skip

    central = out / "central_test.mtd"
    write(central, xs[-1], labels[-1], [str(v) for v in held_out])
    shards = []
    for b, voices in enumerate(per_board):
        path = out / f"board-{b + 1}" / "train.mtd"
        write(path, xs[b], labels[b], [str(v) for v in voices])
        shards.append(Shard(path, central, len(labels[b]), list(range(len(CLASS_NAMES)))))
    pooled = out / POOLED
    write(pooled, np.concatenate(xs[:-1]), np.concatenate(labels[:-1]), [str(v) for v in chosen])
    return KwsFleetData(shards, central, pooled, [[str(v) for v in vs] for vs in per_board])
