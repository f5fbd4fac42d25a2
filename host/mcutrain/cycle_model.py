"""Estimated Cortex-M4 cycles on qemu-m4f: the TCG plugin of tools/cycle-model/.

    model = CycleModel(firmware)                 # the qemu-m4f firmware.elf
    with open_target("qemu-m4f", qemu_args=model.qemu_args()) as target:
        out = run_on(target, script)             # prints perf_counter() differences
    cycles = model.cycles_for([instructions, ...])

The plugin writes one line per perf_counter() call: the instructions and estimated cycles of
the region since the previous call, the same region `t1 - t0` measures. cycles_for() finds
each measured instruction count among them (in order), so its cycles are those of exactly
that region; a count no region matches raises (the regions would not be the same).

Profile mode, `CycleModel(firmware, profile=N)`: the plugin also counts per translated block
and, at exit, writes each block's share of region N (1 = the first region, 0 = the last);
`profile()` reads it back and `by_function()` sums it per function of the firmware's symbol
table (bench/profile_step.py prints the table).
"""

from __future__ import annotations

import bisect
import shutil
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .boards import repo_root

PLUGIN = "build/cycle-model/libm4cycles.so"

# Board functions and labels the plugin marks (see tools/cycle-model/plugin.c).
READ = "mcutrain_board_perf_counter"
READ_END = "mcutrain_board_perf_counter_end"
SAMPLE = "edge_loops"  # boards/qemu/m4f/board.c: the timer sampling loop
# The RISC-V boards' instret read (boards/qemu/rv32/board.c): profiles there count
# instructions exactly; their cycles are the M4 table's, which means nothing on RISC-V.
SAMPLE_RISCV = "board_instructions"


def elf_symbols(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (address, size) of the function symbols of a 32-bit little-endian ELF."""
    return {name: (address, size) for name, address, size in elf_functions(path)}


def elf_functions(path: Path) -> Iterator[tuple[str, int, int]]:
    """(name, address, size) of each function symbol of a 32-bit little-endian ELF (static
    functions of the same name in several files each appear)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        raise ValueError(f"{path}: not a 32-bit little-endian ELF file")
    shoff, = struct.unpack_from("<I", data, 0x20)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x2E)
    sections = [struct.unpack_from("<IIIIIIIIII", data, shoff + i * shentsize) for i in range(shnum)]
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 2:  # SHT_SYMTAB
            continue
        strtab = sections[link]
        for pos in range(offset, offset + size, entsize):
            name_off, value, sym_size, info, _other, _shndx = struct.unpack_from("<IIIBBH", data, pos)
            if info & 0xF != 2:  # STT_FUNC
                continue
            start = strtab[4] + name_off
            name = data[start : data.index(b"\0", start)].decode()
            yield name, value & ~1, sym_size


def plugin_path() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError("cannot find the mcutrain checkout for the cycle-model plugin")
    path = root / PLUGIN
    if not path.is_file():
        raise FileNotFoundError(f"no cycle-model plugin at {path} (build it with `make cycle-model`)")
    return path


class CycleModel:
    """The plugin's arguments for one firmware, and the regions it reported."""

    def __init__(
        self, firmware: Path | str, plugin: Path | str | None = None, refill: int = 2,
        profile: int | None = None,
    ) -> None:
        symbols = elf_symbols(Path(firmware))
        sample = SAMPLE if SAMPLE in symbols else SAMPLE_RISCV
        try:
            self.marks = {
                "read": symbols[READ][0],
                "read_end": symbols[READ_END][0],
                "sample": symbols[sample][0],
                # its last instruction, a 16-bit `bx lr` (or `ret`)
                "sample_end": symbols[sample][0] + symbols[sample][1] - 2,
            }
        except KeyError as e:
            raise ValueError(f"{firmware}: no symbol {e} (not a qemu board firmware?)") from None
        self.plugin = Path(plugin) if plugin is not None else plugin_path()
        self.refill = refill
        self.profile_region = profile
        self._dir = Path(tempfile.mkdtemp(prefix="mcutrain-cycles-"))
        self.out = self._dir / "regions.txt"

    def qemu_args(self) -> list[str]:
        marks = ",".join(f"{k}={v:#x}" for k, v in self.marks.items())
        profile = "" if self.profile_region is None else f",profile={self.profile_region}"
        return ["-plugin", f"{self.plugin},out={self.out},{marks},refill={self.refill}{profile}"]

    def regions(self) -> list[tuple[int, int]]:
        """(instructions, cycles) of every region so far, in order."""
        if not self.out.exists():
            return []
        rows = []
        for line in self.out.read_text().splitlines():
            fields = line.split()
            if len(fields) == 2:
                rows.append((int(fields[0]), int(fields[1])))
        return rows

    def profile(self) -> Profile:
        """The profiled region, once QEMU has exited (the plugin writes it at exit)."""
        region = None
        blocks: dict[int, tuple[int, int]] = {}
        lines = self.out.read_text().splitlines() if self.out.exists() else []
        for line in lines:
            fields = line.split()
            if fields[0] == "profile":
                number, instructions, cycles = (int(f) for f in fields[1:4])
                region = Profile(number, instructions, cycles, blocks)
            elif fields[0] == "block":  # a block translated twice appears twice
                address, insns, cycles = int(fields[1], 16), int(fields[2]), int(fields[3])
                old = blocks.get(address, (0, 0))
                blocks[address] = (old[0] + insns, old[1] + cycles)
        if region is None:
            raise ValueError("the plugin wrote no profile (no region completed, or not profiling)")
        counted = tuple(map(sum, zip(*blocks.values()))) or (0, 0)
        if counted != (region.instructions, region.cycles):
            raise ValueError(f"the profile's blocks sum to {counted}, not the region's "
                             f"{(region.instructions, region.cycles)}")
        return region

    def close(self) -> None:
        """Remove the plugin's output file (read regions() first)."""
        shutil.rmtree(self._dir, ignore_errors=True)

    def cycles_for(self, instructions: Sequence[int], start: int = 0) -> list[int]:
        """The cycles of each measured region, given their perf_counter() instruction
        counts in the order they were measured; `start` skips regions already matched.
        A count may also span consecutive regions (t2 - t0 over a t1 read)."""
        regions = self.regions()
        found = []
        i = start
        for want in instructions:
            match = _find(regions, i, want)
            if match is None:
                raise ValueError(f"no cycle-model region has {want} instructions (after region {i})")
            first, last = match
            found.append(sum(c for _, c in regions[first : last + 1]))
            i = last + 1
        self.matched = i
        return found


def _find(regions: list[tuple[int, int]], start: int, want: int, span: int = 3) -> tuple[int, int] | None:
    for first in range(start, len(regions)):
        total = 0
        for last in range(first, min(first + span, len(regions))):
            total += regions[last][0]
            if total == want:
                return first, last
    return None


@dataclass
class Profile:
    """One perf_counter() region, per translated block: start address -> (instructions, cycles)."""

    region: int  # 1 = the first region the plugin wrote
    instructions: int
    cycles: int
    blocks: dict[int, tuple[int, int]]


def by_function(profile: Profile, firmware: Path | str) -> list[tuple[str, int, int]]:
    """(function, instructions, cycles) of a profile, most instructions first. A block belongs
    to the function symbol it starts in; blocks outside every symbol appear by address."""
    functions = sorted((address, size, name) for name, address, size in elf_functions(Path(firmware)))
    starts = [address for address, _, _ in functions]
    totals: dict[str, list[int]] = {}
    for address, (insns, cycles) in profile.blocks.items():
        i = bisect.bisect_right(starts, address) - 1
        name = f"{address:#x}"
        if i >= 0 and address < functions[i][0] + max(functions[i][1], 1):
            name = functions[i][2]
        row = totals.setdefault(name, [0, 0])
        row[0] += insns
        row[1] += cycles
    return sorted(((name, i, c) for name, (i, c) in totals.items()), key=lambda r: (-r[1], r[0]))
