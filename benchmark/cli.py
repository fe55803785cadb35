"""`seqedit` command line. Every error about a name, key, value or file is one line, exit 2."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from benchmark.config import ConfigError, compose
from benchmark.registry import DATASETS, EDITORS, MODELS, UnknownNameError
from benchmark.signals import handling_signals

USAGE = """seqedit list
seqedit run [experiment=NAME|FILE.yaml] editor=NAME data=NAME|FILE.yaml model=NAME [key=value ...]
                                      (--config FILE.yaml is experiment=FILE.yaml; data=, editor=,
                                      model= take a YAML of that group's keys, with its name:)
seqedit data stats data=NAME [data.path=DIR] [key=value ...]
seqedit init model=NAME data=NAME init.epochs=N [key=value ...]   train (or load) the initial model
seqedit train-editor editor=sera|ke_style|mend_style model=NAME data=NAME [key=value ...]   training phase
seqedit sweep sweeps/FILE.yaml [--count N] [--test] [key=value ...]   offline W&B sweep, trials run here;
                                      --test: the best trial per editor run again on D_edit/D_test
seqedit config [key=value ...]        print the resolved config
seqedit help [GROUP ...] [editor=NAME data=NAME model=NAME]   every key: type, default, help
                                      (GROUP: editor data model loop init logger trainer run)
seqedit leaderboard RUNS_DIR [out=DIR] [columns=M,M,...]   leaderboard.md, leaderboard.html and plots of
                                      every run below RUNS_DIR, those metrics only if columns= is given
                                      (a sweep folder: the best trial per editor)
seqedit demo [quick=true] [parts=qa,fc,zsre] [editors=a,b] the default job: initial models, every editor, leaderboard"""



def _expected() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, reported in one line (exit 2). Imported here, not at the
    top, so that `seqedit --help` needs neither torch nor Lightning."""
    from benchmark.types import DataError

    return ConfigError, UnknownNameError, DataError, ValueError, FileNotFoundError, FileExistsError


def _list() -> None:
    from benchmark.config import _register_all

    _register_all()
    for title, registry in (("editors", EDITORS), ("datasets", DATASETS), ("models", MODELS)):
        print(f"{title}:")
        for entry in registry:
            print(f"  {entry.name:<14} {entry.description}")


def _run(overrides: list[str]) -> None:
    from benchmark.metrics import report
    from benchmark.run import run

    results = run(compose(overrides))
    print("\n".join([f"run folder: {results['run_dir']}", *report(results["metrics"])]))


def _data_stats(overrides: list[str]) -> None:
    from benchmark.build import build_data
    from benchmark.config import instantiate

    run_cfg = instantiate(compose(overrides))
    print(json.dumps(build_data(run_cfg).stats(), indent=2))


def _init(overrides: list[str]) -> None:
    from benchmark.build import build_data
    from benchmark.config import instantiate
    from benchmark.init import prepare_initial_model, report
    from benchmark.models import build_model

    run_cfg = instantiate(compose(overrides))
    datamodule, adapter = build_data(run_cfg), build_model(run_cfg.model)
    weights = prepare_initial_model(adapter, datamodule, run_cfg.model, run_cfg.init, run_cfg.loop.progress)
    print(json.dumps({"weights": str(weights) if weights else None, "accuracy": report(adapter, datamodule)}))


def _train_editor(overrides: list[str]) -> None:
    from benchmark.config import instantiate
    from benchmark.editor_training import train_editor

    run_cfg = instantiate(compose(overrides))
    print(json.dumps(train_editor(run_cfg, run_cfg.loop.progress)))


def _sweep(args: list[str]) -> None:
    from benchmark.sweep import run_sweep, sweep_leaderboard

    files = [a for a in args if a.endswith((".yaml", ".yml"))]
    if len(files) != 1:
        raise ValueError("seqedit sweep needs one sweep file, e.g. sweeps/tpatcher.yaml")
    count, rest, out, test = "1", [], "runs/sweeps", False
    it = iter(a for a in args if a != files[0])
    for arg in it:
        if arg == "--test":
            test = True
        elif arg == "--count":
            count = next(it, "")
        elif arg.startswith("--count="):
            count = arg.split("=", 1)[1]
        elif arg.startswith(("out=", "output_dir=")):  # where the sweep's folder goes, as a run's output_dir
            out = arg.split("=", 1)[1]
        elif arg.startswith("run_id="):
            raise ValueError("seqedit sweep names each trial itself (trial-NNN); run_id= cannot be given")
        else:
            rest.append(arg)
    if not count.isdigit():
        raise ValueError(f"--count needs a whole number, got {count!r}")
    folder = run_sweep(files[0], int(count), rest, out) if int(count) > 0 or not test else \
        Path(out) / Path(files[0]).stem
    if test:
        from benchmark.sweep import test_best

        test_best(folder)
    print(sweep_leaderboard(folder))


def _config(overrides: list[str]) -> None:
    from benchmark.config import instantiate, to_yaml

    cfg = compose(overrides)
    instantiate(cfg)  # validate
    print(to_yaml(cfg), end="")


def _help(args: list[str]) -> None:
    """Each config key of the chosen groups with its type, default and help text, from the
    dataclasses themselves (`benchmark.reference`, which the docs' config reference is made by)."""
    from benchmark.config import instantiate
    from benchmark.reference import HELP_GROUPS, rows

    groups = [a for a in args if "=" not in a]
    unknown = [g for g in groups if g not in HELP_GROUPS]
    if unknown:
        raise ValueError(f"seqedit help: unknown group {unknown[0]!r}; choose from {', '.join(HELP_GROUPS)}")
    chosen = instantiate(compose([a for a in args if "=" in a]))
    for group in groups or list(HELP_GROUPS):
        node = chosen if group == "run" else getattr(chosen, group)
        title = f"{group} ({node.name})" if group in ("editor", "data", "model") else group
        print(f"{title}:")
        for key, kind, default, text in rows(group, node):
            print(f"  {key}: {kind} = {default}" + (f"  # {text}" if text else ""))
        print()


def _leaderboard(args: list[str]) -> None:
    from benchmark.leaderboard import build

    if not args:
        raise ValueError("seqedit leaderboard needs RUNS_DIR")
    from pathlib import Path

    if (Path(args[0]) / "trials.jsonl").exists():  # a sweep folder: the best trial per editor
        from benchmark.sweep import sweep_leaderboard

        print(sweep_leaderboard(args[0]))
        return
    options = {"out": None, "columns": None}
    for arg in args[1:]:
        key, _, value = arg.partition("=")
        if key not in options or not value:
            raise ValueError(f"seqedit leaderboard: {arg!r} is not out=DIR or columns=NAME,NAME,...")
        options[key] = value
    columns = options["columns"].split(",") if options["columns"] else None
    md, pngs = build(args[0], options["out"], columns)
    print(md)
    for png in pngs:
        print(png)


def _demo(args: list[str]) -> None:
    from benchmark.demo import demo

    demo(args)


class Stopped(BaseException):
    """SIGINT or SIGTERM outside the stream (which stops itself after the example in progress):
    a BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _stop_on_signals():
    """Every phase answers SIGINT and SIGTERM: set-up, initial fit, training phases, the final
    evaluation, the leaderboard, a sweep (the stream installs its own graceful handler inside)."""
    def handler(signum, _frame):
        raise Stopped(signum)

    with handling_signals(handler):
        yield


def _stopping() -> tuple[type[BaseException], ...]:
    """What a signal arrives as: ours, Python's KeyboardInterrupt, or Lightning's SIGTERMException
    (a SystemExit with status 0 that a scheduler would take for success), once Lightning is loaded."""
    stops: list[type[BaseException]] = [Stopped, KeyboardInterrupt]
    if "lightning.pytorch" in sys.modules:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        stops.append(SIGTERMException)
    return tuple(stops)


def _stopped_line(command: str, err: BaseException) -> tuple[str, int]:
    signum = getattr(err, "signum", signal.SIGINT if isinstance(err, KeyboardInterrupt) else signal.SIGTERM)
    again = "the same command with resume=true" if command == "run" else "the same command"
    return (f"seqedit: stopped by {signal.Signals(signum).name} during `seqedit {command}`; what was finished is "
            "kept (cached initial models, trained editors, statistics and downloads; a run's records and saved "
            f"state); {again} continues from there", 128 + signum)


def entry() -> None:
    """The `seqedit` command: `main`, then the exit. A signal that lands after the command has
    finished (its files written) ends the process with the command's own status: the exit
    functions run under a handler that says so, and the interpreter's own teardown, where Python
    has put the default actions back and torch's C++ state takes a while to free (a SIGINT there
    was a kill, status -2, after a complete run), is skipped."""
    import atexit
    import os

    code = main()

    def finished(_signum, _frame):
        os._exit(code)

    signal.signal(signal.SIGINT, finished)
    signal.signal(signal.SIGTERM, finished)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        atexit._run_exitfuncs()  # what the interpreter's exit would run (W&B, logging), here with our handler
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `seqedit ... | head`: the reader has gone, which is no error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="seqedit", usage=USAGE)
    parser.add_argument("command", nargs="+")
    if not argv or argv[0] in ("-h", "--help") or any(a in ("-h", "--help") for a in argv[1:]):
        print(USAGE)
        if argv and argv[0] not in ("-h", "--help"):
            print("\nEvery key, its type, default and help: seqedit help [GROUP] [editor=NAME data=NAME model=NAME]")
        return 0
    command, rest = argv[0], _config_flag(argv[1:])
    if command != "sweep":  # W&B agents pass `--key=value`; it means `key=value`
        rest = [a[2:] if a.startswith("--") and "=" in a else a for a in rest]
    if command == "data" and rest[:1] == ["stats"]:
        command, rest = "data stats", rest[1:]
    commands = {"list": lambda _: _list(), "run": _run, "data stats": _data_stats, "config": _config,
                "leaderboard": _leaderboard, "demo": _demo, "init": _init,
                "train-editor": _train_editor, "sweep": _sweep, "help": _help}
    if command not in commands:
        print(f"seqedit: unknown command {command!r}; choose one of: {', '.join(commands)}", file=sys.stderr)
        return 2
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    import logging

    # Lightning's per-Trainer banners (GPU available, tips) would repeat for every run of a demo.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    # its "Received SIGTERM" would stand beside the one line a stop prints
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    try:
        with _stop_on_signals():
            commands[command](rest)
    except _stopping() as err:
        line, code = _stopped_line(command, err)
        print(line, file=sys.stderr)
        return code
    except _expected() as err:
        print(f"seqedit: {_one_line(err)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise  # to `main`: not a disk's error
    except OSError as err:  # a read-only or full disk, a missing folder: name the path
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"seqedit: {where}{err.strerror or _one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        from benchmark.loop import RunInterrupted

        if isinstance(err, RunInterrupted):
            print(f"seqedit: {err}", file=sys.stderr)
            return err.exit_code
        raise
    return 0


def _config_flag(args: list[str]) -> list[str]:
    """`--config FILE` / `--config=FILE` is `experiment=FILE` (a YAML from anywhere)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--config" and i + 1 < len(args):
            out.append(f"experiment={args[i + 1]}")
            i += 2
            continue
        out.append(f"experiment={args[i][9:]}" if args[i].startswith("--config=") else args[i])
        i += 1
    return out


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


if __name__ == "__main__":
    entry()
