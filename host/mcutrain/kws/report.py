"""What `mcutrain kws-dataset` prints about the set it wrote."""

from __future__ import annotations

from collections.abc import Sequence

from ..progress import human_bytes
from .dataset import KwsDataset


def summarize_voices(names: Sequence[str], limit: int = 8) -> str:
    """Voices in a line: listed when few, else espeak-ng's accents x variants and flite's."""
    if len(names) <= limit:
        return ", ".join(names)
    accents, variants, flite, other = set(), set(), [], []
    for name in names:
        engine, _, rest = name.partition(":")
        if engine == "espeak":
            accent, _, variant = rest.partition("+")
            accents.add(accent)
            variants.add(variant)
        elif engine == "flite":
            flite.append(rest)
        else:
            other.append(name)
    parts = []
    if accents:
        parts.append(f"espeak-ng {len(accents)} accents ({', '.join(sorted(accents))}) "
                     f"x {len(variants)} variants")  # fmt: skip
    if flite:
        parts.append(f"flite {', '.join(flite)}")
    if other:
        parts.append(f"{len(other)} speakers")
    return "; ".join(parts)


def describe(ds: KwsDataset) -> str:
    """Files, sizes, classes and the voices (or speakers) of each split."""
    kind = ("SYNTHETIC speech (espeak-ng, flite)" if ds.synthetic
            else "recorded speech (WAV folder)")  # fmt: skip
    who = "voices" if ds.synthetic else "speakers"
    lines = [f"keyword-spotting set from {kind}, {len(ds.class_names)} classes, "
             f"features {ds.sample_shape} {ds.dtype}, in {ds.seconds:.1f} s"
             + (f" ({ds.syntheses} syntheses)" if ds.synthetic else "")]  # fmt: skip
    for path, count, names in ((ds.train_path, ds.train_count, ds.train_voices),
                               (ds.test_path, ds.test_count, ds.test_voices)):  # fmt: skip
        lines.append(f"  {path}: {count} samples, {human_bytes(path.stat().st_size)}; "
                     f"{len(names)} {who}: {summarize_voices(names)}")  # fmt: skip
    if ds.enroll_path is not None:
        lines.append(f"  {ds.enroll_path}: {ds.enroll_count} enrollment samples, "
                     f"{human_bytes(ds.enroll_path.stat().st_size)}; the test {who}' own clips, "
                     "none of them in the test file")  # fmt: skip
    lines.append(f"  classes: {', '.join(ds.class_names)}")
    lines.append(f"  no test {who[:-1]} occurs in training"
                 + ("; the accuracy it gives is on synthetic speech" if ds.synthetic else ""))
    return "\n".join(lines)
