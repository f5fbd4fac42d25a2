"""Board profiles for design-time checks: the memory and clock of our emulated boards and of
common real ones, each real one's numbers from its public datasheet (cited), and which of
our calibrated instruction fits (costs_<board>.json) stands in for its core, and how well.

`heap` is the MicroPython GC heap a model's weights, optimizer state and plan must fit in:
for the emulated boards it is what host/mcutrain/boards.py gives QEMU; for the real ones it
is an assumption (RAM minus what the MicroPython port, its stacks and, where named, a radio
stack typically keep), stated per board, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..boards import get_board

KB = 1024
MB = 1024 * 1024


@dataclass(frozen=True)
class BoardProfile:
    name: str
    core: str
    isa: str            # instruction set and floating point
    clock_hz: int
    flash: int          # bytes of program flash (external where noted)
    ram: int            # bytes of on-chip SRAM
    heap: int           # assumed MicroPython heap, bytes (see the module docstring)
    cost_fits: str | None   # which calibrated fits (costs_<board>.json) apply, or None
    fit_quality: str    # "measured", "approximation", "extrapolation" or "none"
    citation: str
    notes: str = ""

    @property
    def emulated(self) -> bool:
        return self.name.startswith("qemu-")

    def seconds(self, cycles: float) -> float:
        return cycles / self.clock_hz


PROFILES: dict[str, BoardProfile] = {
    p.name: p
    for p in (
        BoardProfile(
            "qemu-m4f", "Cortex-M4F (QEMU mps2-an386)", "ARMv7E-M Thumb-2, DSP, FPv4-SP", 25_000_000,
            4 * MB, 4 * MB, get_board("qemu-m4f").default_heap or 256 * KB, "qemu-m4f", "measured",
            "Arm Application Note AN386 (Cortex-M4 on V2M-MPS2): 25 MHz FPGA clock; QEMU's mps2-an386 model",
            "instructions exact under -icount shift=0; cycles from the cycle model (docs/cycle-model.md)"),
        BoardProfile(
            "qemu-rv32", "RISC-V rv32 (QEMU virt)", "RV32IMAC, soft float", 0,
            0, 0, get_board("qemu-rv32").default_heap or 256 * KB, None, "none",
            "QEMU virt machine (no clock or memory of a real part)",
            "no committed fits yet: calibrate with --board qemu-rv32"),
        BoardProfile(
            "stm32f407", "Cortex-M4F", "ARMv7E-M Thumb-2, DSP, FPv4-SP", 168_000_000,
            1 * MB, 192 * KB, 100 * KB, "qemu-m4f", "approximation",
            "ST DS8626 (STM32F405xx/STM32F407xx datasheet), sec. 2.2 and Table 2: up to 1 MB flash, "
            "192 KB SRAM (112 + 16 KB SRAM, 64 KB CCM), 168 MHz",
            "heap assumed in the 128 KB of contiguous SRAM1+2; the 64 KB CCM is not in it; flash wait "
            "states at 168 MHz (ART accelerator) make cycles differ from the model's"),
        BoardProfile(
            "nrf52832", "Cortex-M4F", "ARMv7E-M Thumb-2, DSP, FPv4-SP", 64_000_000,
            512 * KB, 64 * KB, 48 * KB, "qemu-m4f", "approximation",
            "Nordic nRF52832 Product Specification v1.x, sec. 1 Key features: "
            "64 MHz Cortex-M4 with FPU, 512 KB flash, 64 KB RAM (the QFAA part)",
            "heap assumed 48 KB without a BLE SoftDevice: the rest of the 64 KB holds the port's "
            "static data and stack"),
        BoardProfile(
            "nrf52840", "Cortex-M4F", "ARMv7E-M Thumb-2, DSP, FPv4-SP", 64_000_000,
            1 * MB, 256 * KB, 192 * KB, "qemu-m4f", "approximation",
            "Nordic nRF52840 Product Specification v1.7 (4413_417), sec. 1 Key features: "
            "64 MHz Cortex-M4 with FPU, 1 MB flash, 256 KB RAM",
            "heap assumed 192 KB without a BLE SoftDevice (which takes RAM of its own)"),
        BoardProfile(
            "rp2040", "Cortex-M0+ (dual core)", "ARMv6-M Thumb, no DSP, no FPU", 133_000_000,
            2 * MB, 264 * KB, 192 * KB, "qemu-m4f", "extrapolation",
            "Raspberry Pi RP2040 Datasheet, sec. 1 (Introduction) and 2.6 (Memory): dual Cortex-M0+ "
            "at 133 MHz, 264 KB SRAM in six banks, external QSPI flash (2 MB on the Pico board)",
            "the M4F fits are an extrapolation: ARMv6-M has no FPU (float is software, through the "
            "boot ROM's routines), no DSP, no IT blocks or wide loads; expect many times the "
            "instructions. Calibrate on real hardware before trusting a number"),
        BoardProfile(
            "esp32c3", "RISC-V single core", "RV32IMC, no FPU", 160_000_000,
            4 * MB, 400 * KB, 160 * KB, None, "none",
            "Espressif ESP32-C3 Series Datasheet v1.x, sec. 1 (Overview) and 4.1.2 (Internal memory): "
            "RV32IMC up to 160 MHz, 400 KB SRAM (16 KB of it cache), 4 MB flash in the ESP32-C3FH4",
            "closest emulated target qemu-rv32 (soft float too) once calibrated; heap assumed 160 KB "
            "beside ESP-IDF and Wi-Fi"),
        BoardProfile(
            "stm32h743", "Cortex-M7", "ARMv7E-M Thumb-2, DSP, FPv5 (double precision)", 480_000_000,
            2 * MB, 1 * MB, 512 * KB, "qemu-m4f", "approximation",
            "ST DS12110 (STM32H742xI/G STM32H743xI/G datasheet), sec. 1 and 3: Cortex-M7 up to "
            "480 MHz, 2 MB flash, 1 MB RAM (192 KB TCM, 864 KB user SRAM)",
            "the M4F instruction counts carry over (same ISA); its dual-issue pipeline and caches make "
            "cycles lower than the M4 cycle model says; heap assumed in the 512 KB AXI SRAM"),
    )
}


def get_profile(name: str) -> BoardProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown board profile {name!r}; known: {', '.join(PROFILES)}") from None
