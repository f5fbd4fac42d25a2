"""The `mcutrain` command. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from . import __version__
from .boards import BOARDS, DEFAULT_BOARD, EMULATED_BOARDS, get_board
from .collect import Collector, stream_command
from .design.arch import FAMILIES
from .design.profiles import PROFILES
from .device import Device, open_device
from .emulator import Emulator, default_flash_path, mpremote_command
from .errors import DeviceError, EmulatorError
from .ports import DEVICE_ENV, resolve_device
from .progress import ProgressBar, human_bytes
from .transfer import TransferError, TransferResult


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _board_options(
    parser: argparse.ArgumentParser, boards: Sequence[str], default: str | None = DEFAULT_BOARD
) -> None:
    parser.add_argument(
        "--board", choices=boards, default=default, help=f"default: {DEFAULT_BOARD}"
    )
    parser.add_argument(
        "--flash",
        type=Path,
        help="host file backing the board's flash (default: ~/.cache/mcutrain/BOARD-flash.img)",
    )
    parser.add_argument("--heap", type=int, help="MicroPython heap in bytes (default: the board's)")
    parser.add_argument(
        "--flash-size", type=_size, metavar="BYTES",
        help="size of a new flash image (e.g. 8M; default 2M): a dataset larger than the "
        "default needs one; an existing image keeps its size (erase it at a new size with "
        "`mcutrain emulate --format-flash --flash-size N`)",
    )  # fmt: skip


def _device_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        metavar="PORT",
        help=f"a board's serial port: a path (/dev/ttyACM0), auto (the first USB serial port), "
        f"a0/u0/c0 (/dev/ttyACM0, /dev/ttyUSB0, COM0), id:SERIAL; default: ${DEVICE_ENV}, "
        "else boot the --board emulator",
    )
    # None until _open(): an explicit --board wins over $MCUTRAIN_DEVICE.
    _board_options(parser, tuple(BOARDS), default=None)


def _flash_for(args: argparse.Namespace) -> Path | None:
    if not get_board(args.board).emulated:
        return None
    return args.flash or default_flash_path(args.board)


def _resolve_device(args: argparse.Namespace) -> None:
    """--device as a port (mpremote's names, $MCUTRAIN_DEVICE when neither --device nor --board
    is given; checked, with a one-line error) and --board's default."""
    args.device = resolve_device(args.device, board_given=args.board is not None)
    args.board = args.board or DEFAULT_BOARD


def _size(text: str) -> int:
    """Bytes from `8388608`, `8M`, `512K` (binary units)."""
    from .emulator import check_flash_size

    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
        return check_flash_size(n)
    except (ValueError, IndexError) as e:
        raise argparse.ArgumentTypeError(str(e) if "flash size" in str(e) else f"not a size: {text!r}") from None


def _open(args: argparse.Namespace):  # -> ContextManager[Device]
    _resolve_device(args)
    flash_size = args.flash_size if get_board(args.board).emulated and args.device is None else None
    if args.flash_size is not None and flash_size is None:
        raise ValueError(f"--flash-size is for emulated boards, not {args.device or args.board}")
    return open_device(args.device, args.board, flash=_flash_for(args), heap=args.heap, flash_size=flash_size)


def _where(device: Device) -> str:
    return device.port if device.board == "serial" and device.port else device.board


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.replace("x", ",").split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a shape like 28,28,1: {text!r}") from None


def _report_transfer(what: str, dest: str, size: int, result: TransferResult | None) -> None:
    if result is None:
        print(f"{what}: {human_bytes(size)} written to {dest} (on the host: the unix port reads it)")
        return
    resumed = f", resumed at {human_bytes(result.resumed_from)}" if result.resumed_from else ""
    print(
        f"{what}: {human_bytes(size)} to {dest} in {result.seconds:.2f} s "
        f"({human_bytes(result.bytes_per_s)}/s{resumed}); {result.algo} verified on the board"
    )


# -- commands ---------------------------------------------------------------------------------


def _blank_flash_image(path: Path, size: int | None = None) -> None:
    """Overwrite a flash image with zeros (its size kept, unless `size` is given): the board
    formats it at boot. A board never formats an image that is not blank by itself
    (boards/README.md)."""
    import fcntl

    from .emulator import FLASH_SIZE

    size = size or (path.stat().st_size if path.exists() else FLASH_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"flash image {path} is in use by a running emulator") from None
        f.truncate(0)
        f.truncate(size)
    print(f"erased flash image {path} ({size} bytes): the board formats it at boot")


def cmd_emulate(args: argparse.Namespace) -> int:
    flash = _flash_for(args)
    if args.format_flash and flash is not None:  # emulate takes emulated boards only
        _blank_flash_image(flash, args.flash_size)
    emulator = Emulator(args.board, flash=flash, heap=args.heap, hold_uart=False, flash_size=args.flash_size)
    with emulator:
        board = emulator.board
        print(f"{board.name} ({board.description}) is running.")
        print(f"  UART (serial device): {emulator.device}")
        print(f"  flash image:          {emulator.flash}")
        print("Use it with mpremote, for example:")
        print(f"  mpremote connect {emulator.device} run examples/hello.py")
        print("Press Ctrl-C to stop the emulator.", flush=True)
        try:
            status = emulator.wait()
        except KeyboardInterrupt:
            print(f"\nstopping {board.name}", flush=True)
            return 0
    print(f"mcutrain: QEMU exited by itself (status {status}):\n{emulator.output}", file=sys.stderr)
    return 1


def cmd_run(args: argparse.Namespace) -> int:
    if not args.script.is_file():
        raise FileNotFoundError(f"no script {args.script}")
    collector = Collector(args.collect, json_out=args.json)
    try:
        with _open(args) as device, device.session():
            command = device.script_command(args.script, args.mount, args.script_args)
            status = stream_command(command, collector, args.timeout)
    finally:
        collector.close()
    if status != 0:
        # The device's traceback has been printed already, as it happened.
        print(f"mcutrain: {args.script} failed on {args.device or args.board}", file=sys.stderr)
        return 1
    if args.collect is not None:
        print(f"mcutrain: {len(collector.records)} records in {args.collect}/results.jsonl "
              "and results.csv", file=sys.stderr)  # fmt: skip
    return 0


def cmd_boards(args: argparse.Namespace) -> int:
    for board in BOARDS.values():
        try:
            path = board.firmware_path()
            status = str(path) if path.is_file() else f"not built ({path})"
        except FileNotFoundError as e:
            status = str(e)
        print(f"{board.name:10} {board.description}\n{'':10} firmware: {status}")
    return 0


def _source_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"label_column": args.label_column, "shape": args.shape, "layout": args.layout,
            "header": args.header, "teacher": args.teacher}  # fmt: skip


def cmd_push_dataset(args: argparse.Namespace) -> int:
    import tempfile

    from .formats.checks import describe
    from .push import convert_dataset, dataset_name, send_dataset

    if args.stream:
        return _stream_dataset(args)
    dest = args.dest or dataset_name(args.src)
    with tempfile.TemporaryDirectory(prefix="mcutrain-push-") as tmp:
        path = args.save or Path(tmp) / dataset_name(args.src)
        # Checked and converted before a board is booted or touched; the summary comes first.
        checked, header = convert_dataset(args.src, path, dtype=args.dtype,
                                          **_source_options(args))  # fmt: skip
        print(describe(checked, header, path.stat().st_size), flush=True)
        if args.check:
            print(f"checked: not sent (without --check it goes to {dest})")
            return 0
        with _open(args) as device:
            bar = ProgressBar(f"push {Path(dest).name}")
            try:
                pushed = send_dataset(device, path, dest, force=args.force, progress=bar,
                                      header=header)  # fmt: skip
            finally:
                bar.close()
    if pushed.unchanged:
        print(f"{pushed.dest} is already on the board with the same content: nothing sent")
        return 0
    _report_transfer("pushed", pushed.dest, pushed.size, pushed.transfer)
    return 0


def _stream_dataset(args: argparse.Namespace) -> int:
    from .formats.checks import describe
    from .push import check_mounted, convert_dataset, dataset_name, stream_dir

    path = args.save or stream_dir() / dataset_name(args.src)
    path.parent.mkdir(parents=True, exist_ok=True)
    checked, h = convert_dataset(args.src, path, dtype=args.dtype, **_source_options(args))
    print(describe(checked, h, path.stat().st_size))
    print(f"saved at {path}")
    if args.check:
        return 0
    print(f"on the board, while {path.parent} is mounted: open('/remote/{path.name}', 'rb')")
    print(f"  or: from mcutrain.dataset import Dataset; Dataset('/remote/{path.name}')")
    print(f"run a script with it: mcutrain run SCRIPT --mount {path.parent}")
    with _open(args) as device:
        if device.port is None:
            print(f"the {device.board} board reads host files: open({str(path)!r}, 'rb')")
            return 0
        if sys.stdin.isatty():
            print("serving it now: a REPL on the board with the folder at /remote "
                  "(Ctrl-X leaves)", flush=True)  # fmt: skip
            import subprocess

            with device.uart() as port:
                return subprocess.call(mpremote_command(port, "mount", str(path.parent)))
        size = check_mounted(device, path)
        print(f"checked: the board sees /remote/{path.name} ({human_bytes(size)}) "
              "through mpremote mount")  # fmt: skip
    return 0


def _label_column(text: str) -> int | str:
    try:
        return int(text)
    except ValueError:
        return text


def _dataset_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("reading the source")
    group.add_argument("--label-column", type=_label_column, metavar="NAME|INDEX",
                       help="CSV: the label column, by header name or index (0 first, -1 last; "
                            "default: a column named label, class, target, y or category, "
                            "else the last)")  # fmt: skip
    group.add_argument("--header", action=argparse.BooleanOptionalAction,
                       help="CSV: whether the first row names the columns (default: decided "
                            "from the data)")  # fmt: skip
    group.add_argument("--shape", type=_shape, metavar="SHAPE",
                       help="each sample's shape in the source, to reshape flat rows: e.g. "
                            "28,28,1 (H,W,C), or 1,28,28 (C,H,W) with --layout nchw")  # fmt: skip
    group.add_argument("--layout", choices=("nchw", "nhwc"),
                       help="nchw: channels-first samples (PyTorch's), converted to the board's "
                            "channels-last; nhwc: already channels-last (default: refuse "
                            "samples that look channels-first)")  # fmt: skip


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--graph", type=Path,
                        help="the model's graph as JSON (for .npz without __graph__, and a "
                             "PyTorch state dict)")  # fmt: skip
    parser.add_argument("--input-shape", type=_shape, metavar="SHAPE",
                        help="one sample's shape, e.g. 1,28,28 (npz: device layout, HWC; "
                             "PyTorch, TorchScript, ONNX: PyTorch's, CHW). Default: the ONNX "
                             "input's or the graph file's own")  # fmt: skip
    parser.add_argument("--layout", choices=("device", "torch"),
                        help="npz tensors' layout (default device)")  # fmt: skip
    parser.add_argument("--fold-bn", "--fold-batchnorm", dest="fold_bn",
                        action=argparse.BooleanOptionalAction, default=None,
                        help="fold batch norms into the conv/linear layers before them "
                             "(default: on for PyTorch/ONNX, off for npz)")  # fmt: skip
    parser.add_argument("--keep-batchnorm", dest="fold_bn", action="store_false",
                        help="export batch norms as BatchNorm2d layers (= --no-fold-bn)")


def _model_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return {"graph": args.graph, "input_shape": args.input_shape, "layout": args.layout,
            "fold_bn": args.fold_bn}  # fmt: skip


def _describe_model(spec: object) -> str:
    tensors = getattr(spec, "tensors", {})
    params = sum(int(getattr(t, "size", 0)) for t in tensors.values())
    shape = getattr(spec, "input_shape", None)
    return f"{len(tensors)} tensors, {params} parameters" + (f", input {shape}" if shape else "")


def cmd_export(args: argparse.Namespace) -> int:
    from .push import prepare_model

    if args.out_opt is not None and args.out is not None:
        raise ValueError("give the output once: OUT or -o OUT")
    args.out = args.out_opt or args.out or Path(args.src.name.split(".")[0] + ".mtm")
    if args.out.suffix != ".mtm":
        raise ValueError(f"{args.out}: export writes an .mtm file")
    spec = prepare_model(args.src, args.out, **_model_kwargs(args))  # type: ignore[arg-type]
    print(f"wrote {args.out}: {_describe_model(spec)}")
    return 0


def cmd_push_model(args: argparse.Namespace) -> int:
    from .push import push_model

    with _open(args) as device:
        bar = ProgressBar(f"push {args.dest or Path(args.src).name.split('.')[0] + '.mtm'}")
        try:
            pushed = push_model(device, args.src, dest=args.dest, progress=bar,
                                **_model_kwargs(args))  # fmt: skip
        finally:
            bar.close()
    print(f"model: {_describe_model(pushed.header)}")
    _report_transfer("pushed", pushed.dest, pushed.size, pushed.transfer)
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .push import pull_model

    with _open(args) as device:
        out = pull_model(device, args.path, args.out, layout=args.layout or "device",
                         like=args.like)  # fmt: skip
    print(f"pulled {args.path} from {_where(device)} to {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import missing_plots, plot_results

    written = plot_results(args.dir, args.out)
    for path in written:
        print(path)
    for name in missing_plots(written):
        print(f"mcutrain: no data for {name}", file=sys.stderr)
    return 0 if written else 1


def cmd_quantize(args: argparse.Namespace) -> int:
    from .quantize import load_calibration, quantize_model

    x = load_calibration(args.calibration, args.samples)
    spec = quantize_model(args.src, x, dtype=args.dtype, out=args.out, samples=args.samples)
    print(f"wrote {args.out}: {args.dtype}, calibrated on {len(x)} samples, "
          f"{_describe_model(spec)}")  # fmt: skip
    return 0


def cmd_dequantize(args: argparse.Namespace) -> int:
    from .quantize import dequantize_model

    spec = dequantize_model(args.src, out=args.out)
    print(f"wrote {args.out}: float32, {_describe_model(spec)}")
    return 0


def _model_info(path: Path) -> int:
    from .formats import read_model
    from .formats.spec import layer_rows

    spec = read_model(path)
    print(f"{path}: {_describe_model(spec)}")
    for row in layer_rows(spec):
        dtype = ("-> " if row["type"] == "Convert" else "") + row["dtype"]
        extra = f" quant_range={list(row['quant_range'])}" if row["quant_range"] else ""
        print(f"  {row['name']:12} {row['type']:14} {dtype:10} {row['parameters']:7} "
              f"{json.dumps(row['config'])}{extra}")  # fmt: skip
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .device_info import device_info, format_info

    if args.model is not None:
        return _model_info(args.model)
    with _open(args) as device:
        info = device_info(device)
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


def cmd_kws_dataset(args: argparse.Namespace) -> int:
    from .kws import SynthError, make_kws_dataset
    from .kws.report import describe

    try:
        ds = make_kws_dataset(args.out_dir, samples_per_class=args.samples_per_class,
                              test_samples_per_class=args.test_samples_per_class,
                              seed=args.seed, dtype=args.dtype, from_wav=args.from_wav,
                              enroll_per_class=args.enroll_per_class)  # fmt: skip
    except SynthError as e:
        print(f"mcutrain: error: {e}", file=sys.stderr)
        return 1
    print(describe(ds))
    return 0


def _bytes(text: str) -> int:
    """Bytes from `65536`, `64K`, `1M` (binary units), for design limits."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        n = int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except (ValueError, IndexError):
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size in bytes like 65536 or 64K: {text!r}")
    return n


def _ms(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = 0.0
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive time in ms: {text!r}")
    return v


def _fault(text: str) -> tuple[int, int]:
    board, _, round_ = text.partition("@")
    try:
        return int(board), int(round_)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fault is BOARD@ROUND, e.g. 2@1, not {text!r}") from None


def cmd_design(args: argparse.Namespace) -> int:
    from .design.search import design_student, table, write_student

    if args.out.suffix != ".mtm":
        raise ValueError(f"{args.out}: design writes the student as an .mtm file")
    result = design_student(args.teacher, args.board, args.family, flash=args.flash, ram=args.ram,
                            max_infer_ms=args.max_infer_ms, max_step_ms=args.max_step_ms,
                            batch=args.batch, input_shape=args.input_shape)  # fmt: skip
    if not 1 <= args.pick <= len(result.ranked):
        raise ValueError(f"--pick {args.pick}: {len(result.ranked)} candidates fit")
    chosen = result.ranked[args.pick - 1]
    py = args.python or args.out.with_suffix(".py")
    write_student(chosen, args.out, py, result.teacher, seed=args.seed, board=args.board)
    written = f"wrote {args.out} (student {chosen.arch.name}, fresh weights, seed {args.seed}) and {py}"
    if args.json:
        doc = result.to_json(args.top)
        doc["chosen"] = chosen.row()
        doc["written"] = {"mtm": str(args.out), "python": str(py)}
        print(json.dumps(doc, indent=1))
        print(written, file=sys.stderr)
    else:
        print(table(result, args.top))
        print(written)
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from .fleet.launch import FleetError, FleetOptions, run_fleet
    from .fleet.summary import summary_table

    options = FleetOptions(
        boards=args.boards, rounds=args.rounds, board=args.board, devices=args.device or (),
        strategy=args.strategy, dtype=args.dtype, update=args.update, epochs=args.epochs,
        steps=args.steps, batch=args.batch, lr=args.lr, lr_decay=args.lr_decay, momentum=args.momentum,
        server_lr=args.server_lr, server_momentum=args.server_momentum,
        fraction_evaluate=0.0 if args.no_board_eval else 1.0, data=args.data,
        model=args.model, split=args.split, samples=args.samples, classes_per_board=args.classes_per_board,
        voices_per_board=args.voices_per_board, samples_per_class=args.samples_per_class,
        seed=args.seed, faults=args.kill, heap=args.heap,
    )  # fmt: skip
    try:
        result = run_fleet(args.out, options)
    except FleetError as e:
        print(f"mcutrain: error: {e}", file=sys.stderr)
        return 1
    print(summary_table(result))
    if args.compare:
        from .fleet.demo import compare, table

        if options.data != "kws":
            raise ValueError("--compare is for --data kws (one board alone and centralized, by voice)")
        summary = compare(result, options, args.out.resolve())
        print(table(args.out.resolve()))
        print(f"federated - centralized: {summary['federated_minus_centralized_points']:+.1f} points; "
              f"federated - one board: {summary['federated_minus_single_points']:+.1f} points")
    return 0


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcutrain", description="On-device training of small neural nets on microcontrollers."
    )
    parser.add_argument("--version", action="version", version=f"mcutrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    emulate = commands.add_parser(
        "emulate",
        help="boot an emulated board and keep it running for mpremote",
        description="Boot an emulated board, print its serial device, and run until Ctrl-C.",
    )
    _board_options(emulate, EMULATED_BOARDS)
    emulate.add_argument("--format-flash", action="store_true",
                         help="erase the flash image first (everything on it is lost); a board "
                              "never formats an image it cannot mount by itself")  # fmt: skip
    emulate.set_defaults(func=cmd_emulate)

    run = commands.add_parser(
        "run",
        help="run a device script on a board, with live progress from its metrics",
        description="Run a MicroPython script on a board (booting the emulator if needed). "
        "Lines the script writes with mcutrain.metrics (`@mt {...}`) show as live progress; "
        "other output passes through.",
    )
    run.add_argument("script", type=Path,
                     help="the script; arguments after `--` are its sys.argv[1:] "
                          "(mcutrain run train.py --board qemu-m4f -- --epochs 3)")  # fmt: skip
    _device_options(run)
    run.add_argument("--timeout", type=float, help="seconds before giving up (default: none)")
    run.add_argument("--collect", type=Path, metavar="DIR",
                     help="write the metrics to DIR/results.jsonl and DIR/results.csv")
    run.add_argument("--json", action="store_true",
                     help="print the metrics as JSON lines on stdout (other output to stderr)")
    run.add_argument("--mount", type=Path, metavar="DIR",
                     help="serve a host folder at /remote (the script's working directory)")
    run.set_defaults(func=cmd_run)

    boards = commands.add_parser("boards", help="list the boards and their firmware")
    boards.set_defaults(func=cmd_boards)

    push = commands.add_parser(
        "push-dataset",
        help="convert a dataset to .mtd and copy it to a board",
        description="Check and convert SRC (.npz with x, y and optional teacher_logits; a "
        "folder of WAV files with a subfolder per class; MNIST/Fashion-MNIST idx files; CSV; or "
        "an .mtd) to .mtd, print a summary (samples, shape, dtype, classes with counts), and "
        "copy it with a checked, resumable transfer. Data that looks wrong (a feature read as "
        "labels, channels-first images, uneven rows) is refused with the option that fixes it; "
        "a file already at DEST on the board is replaced only with --force.",
    )
    push.add_argument("src", type=Path)
    _dataset_source_options(push)
    _device_options(push)
    push.add_argument("--dtype", choices=("int8", "float16", "float32"),
                      help="sample type on the board (int8: one scale per dataset; "
                           "default: float32, or int8 for int8 sources)")  # fmt: skip
    push.add_argument("--dest", help="path on the board (default: NAME.mtd in its working dir)")
    push.add_argument("--save", type=Path, metavar="FILE", help="keep the converted .mtd here")
    push.add_argument("--stream", action="store_true",
                      help="serve the file with `mpremote mount` instead of copying it: "
                           "a REPL with it at /remote on a terminal, else a check that the "
                           "board sees it")  # fmt: skip
    push.add_argument("--teacher", type=Path, metavar="MODEL",
                      help="store MODEL's logits for every sample, for mt.distillation on the "
                           "board (.mtm, or a whole PyTorch module or TorchScript as .pt)")  # fmt: skip
    push.add_argument("--force", action="store_true",
                      help="replace another file already at --dest on the board (the same "
                           "file is not sent again)")  # fmt: skip
    push.add_argument("--check", "--dry-run", action="store_true",
                      help="only check and convert SRC and print the summary; send nothing")
    push.set_defaults(func=cmd_push_dataset)

    export = commands.add_parser(
        "export",
        help="write an .mtm model from PyTorch (a whole module, TorchScript or a state dict), "
             "ONNX or numpy (.npz)",
        description="SRC's kind is told by its content: a whole module saved with "
        "torch.save(model) (loading it unpickles the file, which runs code from it: only "
        "export files you trust; its classes must be importable), a TorchScript file "
        "(torch.jit.save; needs --input-shape), an ONNX file, a PyTorch state dict (needs "
        "--graph), an .npz or an .mtm. The layers (Sequential, residual blocks) are derived "
        "from the model; an operator or attribute the device lacks is refused by name and "
        "position.",
    )
    export.add_argument("src", type=Path, help="the model file")
    export.add_argument("out", type=Path, nargs="?", help="the .mtm to write (default NAME.mtm)")
    export.add_argument("-o", "--output", dest="out_opt", type=Path, metavar="OUT",
                        help="the .mtm to write (as OUT)")
    _model_options(export)
    export.set_defaults(func=cmd_export)

    push_model = commands.add_parser(
        "push-model", help="export a model (if needed) and copy the .mtm to a board"
    )
    push_model.add_argument("src", type=Path,
                            help="an .mtm or any model `export` takes (converted first)")
    _device_options(push_model)
    push_model.add_argument("--dest", help="path on the board (default: NAME.mtm)")
    _model_options(push_model)
    push_model.set_defaults(func=cmd_push_model)

    pull = commands.add_parser(
        "pull", help="copy a trained model back from a board as .mtm, .npz or a PyTorch .pt"
    )
    pull.add_argument("path", help="the .mtm on the board")
    pull.add_argument("out", type=Path, help="FILE.mtm, FILE.npz or FILE.pt")
    _device_options(pull)
    pull.add_argument("--layout", choices=("device", "torch"),
                      help="tensor layout in an .npz (default device)")  # fmt: skip
    pull.add_argument("--like", type=Path, metavar="SRC",
                      help="the model file it was exported from (module, TorchScript, ONNX): "
                           "the .pt gets that model's own names, batch norms folded at export "
                           "unfolded, so it loads with load_state_dict(strict=True)")
    pull.set_defaults(func=cmd_pull)

    plot = commands.add_parser(
        "plot", help="draw loss, accuracy and time-per-step PNGs from `run --collect DIR`"
    )
    plot.add_argument("dir", type=Path)
    plot.add_argument("--out", type=Path, metavar="DIR", help="where to write (default: DIR)")
    plot.set_defaults(func=cmd_plot)

    kws = commands.add_parser(
        "kws-dataset",
        help="make a SYNTHETIC keyword-spotting set (espeak-ng, flite) as kws_train/test.mtd",
        description="Synthesize yes, no, up, down, left, right, on, off, stop, go, other words "
        "(_unknown_) and noise (_silence_) with espeak-ng and flite voices, augment them, and "
        "write MFCCs (49x10x1) to OUT_DIR/kws_train.mtd and kws_test.mtd. The speech is "
        "SYNTHETIC; the test voices never occur in training. --from-wav uses recordings.",
    )
    kws.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    kws.add_argument("--samples-per-class", type=int, default=150, metavar="N",
                     help="training samples per class (default 150)")  # fmt: skip
    kws.add_argument("--test-samples-per-class", type=int, metavar="N",
                     help="test samples per class (default: a third of --samples-per-class)")
    kws.add_argument("--seed", type=int, default=0, help="the same seed gives the same files")
    kws.add_argument("--dtype", choices=("float32", "int8"), default="float32",
                     help="feature type in the files (int8: one scale, the training split's)")
    kws.add_argument("--from-wav", type=Path, metavar="DIR",
                     help="recorded 16 kHz WAVs instead, one subfolder per word "
                          "(e.g. Speech Commands); split by speaker")  # fmt: skip
    kws.add_argument("--enroll-per-class", type=int, default=0, metavar="N",
                     help="also write kws_enroll.mtd: N clips per class from each held-out voice "
                          "or speaker, for adapting a model to them (default 0: none)")  # fmt: skip
    kws.set_defaults(func=cmd_kws_dataset)

    info = commands.add_parser(
        "info", help="firmware version, board, free heap and the module's features"
    )
    info.add_argument("model", type=Path, nargs="?",
                      help="an .mtm file: list its layers with their dtypes instead")
    _device_options(info)
    info.add_argument("--json", action="store_true", help="as JSON")
    info.set_defaults(func=cmd_info)

    quantize = commands.add_parser(
        "quantize", help="quantize a float32 .mtm to int8 (or mixed) with calibration data"
    )
    quantize.add_argument("src", type=Path, help="the float32 .mtm")
    quantize.add_argument("--calibration", type=Path, required=True, metavar="DATA",
                          help="an .mtd dataset or an .npz with an array x (channels-last)")
    quantize.add_argument("--dtype", choices=("int8", "mixed"), default="int8")
    quantize.add_argument("--samples", type=int, default=256, metavar="N",
                          help="calibration samples to use (default 256)")
    quantize.add_argument("-o", "--out", type=Path, required=True, help="the .mtm to write")
    quantize.set_defaults(func=cmd_quantize)

    dequantize = commands.add_parser("dequantize", help="an int8/mixed .mtm back to float32")
    dequantize.add_argument("src", type=Path)
    dequantize.add_argument("-o", "--out", type=Path, required=True, help="the .mtm to write")
    dequantize.set_defaults(func=cmd_dequantize)

    design = commands.add_parser(
        "design", help="design a student for a teacher under a board's flash, RAM and time limits",
        description="Search a student family's widths, depths, kernel sizes and input "
        "resolutions for the teacher's input and classes, predict each candidate's flash, RAM and "
        "time on the board profile (docs/cost-model.md), keep those within every limit, rank them "
        "(most parameters, then most MACs, then lowest step time: docs/design.md), print the "
        "table and write the chosen student as an .mtm with fresh weights and as device Python.",
    )
    design.add_argument("--teacher", type=Path, required=True, metavar="MODEL",
                        help="the teacher: .mtm, or a whole PyTorch module / TorchScript (.pt, "
                             "loading it runs code from the file: only files you trust)")
    design.add_argument("--board", required=True, metavar="PROFILE",
                        help="a board profile: " + ", ".join(PROFILES))
    design.add_argument("--family", required=True, choices=FAMILIES)
    design.add_argument("--flash", type=_bytes, metavar="BYTES",
                        help="flash for parameters + the module's code (default: the part's "
                             "flash less the rest of the firmware)")  # fmt: skip
    design.add_argument("--ram", type=_bytes, metavar="BYTES",
                        help="RAM for a training step's plan and for inference (default: the "
                             "profile's assumed heap)")  # fmt: skip
    design.add_argument("--max-step-ms", type=_ms, metavar="MS", help="bound on one training step")
    design.add_argument("--max-infer-ms", type=_ms, metavar="MS", help="bound on one inference")
    design.add_argument("--batch", type=int, default=1, help="training batch the step is costed at (default 1)")
    design.add_argument("--input-shape", type=_shape, metavar="SHAPE",
                        help="the teacher's sample shape when its file does not say (.mtm: H,W,C; "
                             "PyTorch: C,H,W)")  # fmt: skip
    design.add_argument("-o", "--out", type=Path, default=Path("student.mtm"),
                        help="the student .mtm to write (default student.mtm)")
    design.add_argument("--python", type=Path, metavar="FILE",
                        help="the device script that builds it (default: OUT with .py)")
    design.add_argument("--pick", type=int, default=1, metavar="RANK", help="write this rank (default 1)")
    design.add_argument("--seed", type=int, default=0, help="seed of the fresh weights")
    design.add_argument("--top", type=int, default=10, metavar="N", help="rows to show (0: all; default 10)")
    design.add_argument("--json", action="store_true", help="the table as JSON on stdout")
    design.set_defaults(func=cmd_design)

    fleet = commands.add_parser(
        "fleet", help="federated training across boards with Flower (a local run on emulated boards)",
        description="Federated on-device training: start a local Flower SuperLink and one SuperNode per "
        "board; each round every board gets the global model over its serial link, trains it on its own "
        "share of the digits data, and sends the result back for the strategy to aggregate. Writes "
        "OUT/rounds.jsonl, rounds.csv, boards.jsonl, boards.csv (bytes per board and round), events.jsonl, "
        "summary.json, fleet_accuracy.png and fleet_loss.png; docs/fleet.md.",
    )
    fleet.add_argument("--boards", type=int, default=2, help="emulated boards (default 2)")
    fleet.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    fleet.add_argument("--board", default="qemu-m4f", choices=EMULATED_BOARDS, help="the emulated board")
    fleet.add_argument("--device", action="append", metavar="PORT",
                       help="a real board's serial port (repeat for each; replaces --boards)")
    fleet.add_argument("--strategy", default="fedavg", choices=("fedavg", "fedavgm", "fedadam"))
    fleet.add_argument("--dtype", default="float32", choices=("float32", "int8", "mixed"),
                       help="precision the boards train in (the global model stays float32)")
    fleet.add_argument("--update", default="full", metavar="POLICY",
                       help="update policy on the boards: full, topk:MIN[:MAX], last:K, bias, channels:RATIO")
    fleet.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    fleet.add_argument("--steps", type=int, default=0, help="local steps per round instead of epochs")
    fleet.add_argument("--batch", type=int, default=1, help="local batch size (default 1)")
    fleet.add_argument("--lr", type=float, default=0.01, help="the boards' learning rate (default 0.01)")
    fleet.add_argument("--lr-decay", type=float, default=1.0, help="the rate's factor per round (default 1)")
    fleet.add_argument("--momentum", type=float, default=0.9, help="float32 boards' momentum (default 0.9)")
    fleet.add_argument("--server-lr", type=float, default=0.01, help="FedAdam's server step (default 0.01)")
    fleet.add_argument("--server-momentum", type=float, default=0.9,
                       help="FedAvgM's server momentum (default 0.9)")
    fleet.add_argument("--no-board-eval", action="store_true",
                       help="skip the boards' evaluation each round (the host still evaluates centrally)")
    fleet.add_argument("--data", default="digits", choices=("digits", "kws"),
                       help="scikit-learn's digits, or SYNTHETIC keyword spotting split by voice (non-IID)")
    fleet.add_argument("--model",
                       help="mlp, cnn (digits), dscnn (kws), fresh weights, or a float32 .mtm "
                            "(default mlp; kws: dscnn)")  # fmt: skip
    fleet.add_argument("--split", default="iid", choices=("iid", "label"),
                       help="how the digits are dealt to boards: iid, or by label (non-IID)")
    fleet.add_argument("--voices-per-board", type=int, default=2, help="kws: training voices per board (default 2)")
    fleet.add_argument("--samples-per-class", type=int, default=40, help="kws: clips per class per board (default 40)")
    fleet.add_argument("--classes-per-board", type=int, default=3, help="classes per board with --split label")
    fleet.add_argument("--samples", type=int, help="training samples per board (default: an equal share)")
    fleet.add_argument("--seed", type=int, default=1)
    fleet.add_argument("--heap", type=_bytes, metavar="BYTES", help="the emulated boards' heap")
    fleet.add_argument("--kill", type=_fault, action="append", default=[], metavar="BOARD@ROUND",
                       help="kill that board's emulator while it trains in that round (fault demo)")
    fleet.add_argument("--compare", action="store_true",
                       help="kws: then train one board alone and all boards' clips pooled on one board "
                            "(the same local settings) and compare accuracy per round")  # fmt: skip
    fleet.add_argument("-o", "--out", type=Path, default=Path("results/fleet"),
                       help="where the run's records and plots go (default results/fleet)")
    fleet.set_defaults(func=cmd_fleet)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first `--` is the device script's own (`mcutrain run S -- ARGS`).
    script_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    parser = build_parser()
    args = parser.parse_args(argv[: len(argv) - len(script_args) - (1 if "--" in argv else 0)])
    if script_args and args.command != "run":
        parser.error(f"arguments after -- are for `mcutrain run`'s script, not {args.command}")
    args.script_args = script_args
    # Ctrl-C and `kill PID` stop an emulator cleanly, even when we were started with SIGINT
    # ignored (as background jobs of a script are).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return int(args.func(args))
    except (EmulatorError, FileNotFoundError, DeviceError, ValueError, TransferError) as e:
        print(f"mcutrain: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        extra = " (pip install 'mcutrain[torch]')" if e.name == "torch" else ""
        print(f"mcutrain: error: {e}{extra}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; say nothing more to it.
        sys.stdout = open(os.devnull, "w")
        return 1
