"""The command line: ``python -m mann train ...`` and ``python -m mann evaluate ...``.

Train a model (every option has a default except --arch and --out; see --help):

    python -m mann train --arch ntm --task copy --min-length 1 --max-length 20 \\
        --steps 3000 --out checkpoints/ntm-copy
    python -m mann train --out checkpoints/ntm-copy --resume --steps 4000   # continue, longer
    python -m mann train --init checkpoints/sdnc-copy --max-length 40 --out runs/sdnc-long
                                                                    # fine-tune from weights

With --resume, options not given on the command line are taken from the saved run. Ctrl-C
stops at the end of the current step, saves, prints how to resume, and exits with status 130.

Several processes, on one machine or several, by torchrun (docs/distributed.md); --batch-size
is per process, and --device auto takes a GPU where there is one:

    torchrun --nproc-per-node 2 -m mann --threads 1 train --arch dnc --out runs/dnc-ddp

Evaluate a checkpoint on the task stored in it, at lengths beyond its training range:

    python -m mann evaluate checkpoints/ntm-copy --lengths 10,20,40,80 --sequences 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
import time
from typing import Any

import torch

from mann import checkpoint
from mann.controller import CONTROLLERS
from mann.devices import DEVICES, resolve_device
from mann.distributed import World, distributed_training, launcher
from mann.model import ARCHITECTURES, MEMORY_OPTIONS, ModelConfig, option_owner_label
from mann.tasks import TASKS, make_task
from mann.tasks.registry import parse_options
from mann.train import (
    CURRICULA,
    LR_DECAYS,
    MODEL_FLAGS,
    OPTIMIZERS,
    SWITCH_FLAGS,
    TRAIN_FLAGS,
    Progress,
    TrainConfig,
    best_path,
    train,
)

MODEL_OPTIONS = (*MODEL_FLAGS, *SWITCH_FLAGS)
TRAIN_OPTIONS = (*TRAIN_FLAGS, "keep_best", "validation_size")
INTERRUPTED = 130  # the shell's status for a process ended by Ctrl-C


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        return args.run(args)
    except ValueError as error:  # includes CheckpointError
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mann", description="Train and evaluate memory-augmented networks."
    )
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch threads (default: torch's choice; give parallel runs one each)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    # Every default is None, so that "not given" can be told apart (for --resume).
    trainer = commands.add_parser(
        "train",
        help="train a model on a task",
        description="Train a model on a task, saving checkpoints to --out.",
    )
    trainer.add_argument("--arch", choices=ARCHITECTURES, help="memory architecture")
    trainer.add_argument("--task", choices=sorted(TASKS), help="task (default copy)")
    model = trainer.add_argument_group("model (defaults: mann.ModelConfig)")
    model.add_argument("--controller", choices=sorted(CONTROLLERS))
    for name in MODEL_FLAGS[1:-1]:
        model.add_argument(_flag(name), type=int, metavar="N")
    model.add_argument("--clip-value", type=float, metavar="X", help="activation clip")
    for name, (_, _, what) in MEMORY_OPTIONS.items():
        model.add_argument(_flag(name), action="store_const", const=True,
                           help=f"{option_owner_label(name)} option: {what}")
    task = trainer.add_argument_group("task")
    task.add_argument("--min-length", type=int, metavar="N", help="shortest training length")
    task.add_argument("--max-length", type=int, metavar="N", help="longest training length")
    task.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any task option, e.g. bits=6 (VALUE is read as JSON if it can be); repeatable",
    )
    training = trainer.add_argument_group("training (defaults: mann.train.TrainConfig)")
    training.add_argument("--steps", type=int, metavar="N", help="total optimizer steps")
    training.add_argument("--batch-size", type=int, metavar="N")
    training.add_argument("--lr", type=float, metavar="X", help="learning rate")
    training.add_argument("--optimizer", choices=OPTIMIZERS)
    training.add_argument("--momentum", type=float, metavar="X", help="RMSprop momentum, Adam β1")
    training.add_argument("--clip", type=_clip, metavar="X", help="gradient-norm clip, or 'none'")
    training.add_argument(
        "--lr-decay",
        choices=LR_DECAYS,
        help="cosine: anneal the learning rate to 1%% of --lr over the run",
    )
    training.add_argument("--seed", type=int, metavar="N")
    training.add_argument("--curriculum", choices=CURRICULA)
    training.add_argument("--curriculum-start", type=int, metavar="N")
    training.add_argument("--curriculum-increment", type=int, metavar="N")
    training.add_argument("--curriculum-threshold", type=float, metavar="X")
    training.add_argument("--curriculum-window", type=int, metavar="N")
    training.add_argument("--checkpoint-every", type=int, metavar="N")
    training.add_argument("--log-every", type=int, metavar="N")
    training.add_argument(
        "--keep-best",
        action="store_const",
        const=True,
        help="validate every --checkpoint-every steps; keep the best weights at OUT-best",
    )
    training.add_argument(
        "--validation-size", type=int, metavar="N", help="sequences scored for --keep-best"
    )
    trainer.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="checkpoint path without suffix, e.g. checkpoints/ntm-copy",
    )
    trainer.add_argument("--resume", action="store_true", help="continue the run saved at --out")
    trainer.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start from this checkpoint's weights (fine-tuning); its model and task are the "
        "defaults, and --memory-size may change for DNC, SAM and SDNC",
    )
    trainer.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device_option(trainer, "train (under torchrun each process takes GPU LOCAL_RANK)")
    trainer.set_defaults(run=run_train)

    evaluator = commands.add_parser(
        "evaluate",
        help="bit errors per sequence by length",
        description="Evaluate a checkpoint on its task at several lengths; prints a table.",
    )
    evaluator.add_argument("checkpoint", metavar="CHECKPOINT")
    evaluator.add_argument(
        "--lengths",
        type=_lengths,
        default=[10, 20, 40, 80],
        metavar="L1,L2,...",
        help="comma-separated lengths (default 10,20,40,80)",
    )
    evaluator.add_argument("--sequences", type=int, default=1000, metavar="N")
    evaluator.add_argument("--seed", type=int, default=0, metavar="N")
    evaluator.add_argument("--batch-size", type=int, default=100, metavar="N")
    evaluator.add_argument("--task", choices=sorted(TASKS), help="override the stored task")
    evaluator.add_argument(
        "--task-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a stored task option; repeatable",
    )
    _add_device_option(evaluator, "run the model")
    evaluator.set_defaults(run=run_evaluate)

    patterns = commands.add_parser(
        "patterns",
        help="memory-use metrics of several checkpoints (writes, reuse, locality, gates)",
        description="Run checkpoints over many episodes of one task and print how they use "
        "memory: one row per model and length (mann.analysis; docs/analysis.md defines "
        "every metric).",
    )
    patterns.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT")
    patterns.add_argument(
        "--task", choices=sorted(TASKS), help="task (default: the first checkpoint's)"
    )
    patterns.add_argument(
        "--task-option", action="append", default=[], metavar="KEY=VALUE",
        help="a task option, e.g. bits=8; repeatable",
    )  # fmt: skip
    patterns.add_argument(
        "--lengths", type=_lengths, metavar="L1,L2,...",
        help="comma-separated lengths (default: the longest the first checkpoint trained on)",
    )  # fmt: skip
    patterns.add_argument(
        "--rounds", type=int, metavar="N", help="rounds per episode, for multi_copy (e.g. 6)"
    )
    patterns.add_argument("--sequences", type=int, default=100, metavar="N")
    patterns.add_argument("--seed", type=int, default=0, metavar="N")
    patterns.add_argument("--csv", metavar="PATH", help="also write the full table (means and "
                          "standard deviations of every metric and gate) to this CSV file")
    patterns.set_defaults(run=run_patterns)

    resizer = commands.add_parser(
        "resize", help="give a DNC, SAM or SDNC checkpoint another number of memory slots",
        description="Save a DNC, SAM or SDNC checkpoint with another memory size N (none of "
        "their parameters depends on N): train short sequences in a small memory, then give "
        "the model the room longer ones need.",
    )  # fmt: skip
    resizer.add_argument("checkpoint", metavar="CHECKPOINT")
    resizer.add_argument("--memory-size", type=int, required=True, metavar="N")
    resizer.add_argument("--out", required=True, metavar="PATH", help="the new checkpoint")
    resizer.set_defaults(run=run_resize)
    return parser


def run_resize(args: argparse.Namespace) -> int:
    target = checkpoint.resize(args.checkpoint, args.memory_size, args.out)
    print(f"saved {target} (memory_size {args.memory_size})")
    return 0


# --------------------------------------------------------------------------- train


def run_train(args: argparse.Namespace) -> int:
    """Train as the arguments say; under torchrun, as one of its processes (rank 0 alone
    prints and shows the progress bar)."""
    device = _device_from_option(args.device)
    with distributed_training(device) as device:
        if World.current().size == 1:
            return _train_here(args, device)
        from torch.distributed.elastic.multiprocessing.errors import record

        # record: a rank's exception reaches torchrun's summary of the failure.
        code = record(_train_as_rank)(args, device)
    # The rank's work is saved and its process group ended. Its native teardown at the
    # interpreter's exit aborted 1 run in about 24 ("terminate called without an active
    # exception", python bench/distributed_exit.py), failing a finished run; so leave now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class RunEnded(BaseException):
    """torchrun ended this process (SIGTERM): another process of the run failed or was
    stopped. A BaseException, like KeyboardInterrupt, so that nothing on the way catches it."""


def _train_as_rank(args: argparse.Namespace, device: torch.device) -> int:
    """``_train_here`` as one of several processes. When the run fails, every process that is
    left says so in one line that names the last checkpoint (whole: ``mann.train`` finishes a
    save before it lets SIGTERM act) and the command that resumes it."""
    world = World.current()

    def end_run(signum, frame):
        raise RunEnded

    previous = signal.signal(signal.SIGTERM, end_run)
    try:
        return _train_here(args, device)
    except ValueError as error:  # a config the same on every rank, or this rank's own
        if world.rank == 0:
            raise
        print(f"error (rank {world.rank}): {error}", file=sys.stderr)
        return 2
    except (Exception, RunEnded) as error:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # torchrun's next SIGTERM: say it first
        if isinstance(error, RunEnded):
            reason = ("torchrun ended it, as another process of the run failed or was stopped "
                      "(torchrun's summary names it)")  # fmt: skip
        else:
            first_line = (str(error).strip().splitlines() or [""])[0]
            reason = f"{type(error).__name__}: {first_line[:300]}"
        print(f"error (rank {world.rank} of {world.size}): the run ended: {reason}. "
              f"{_last_checkpoint(args.out, world)}", file=sys.stderr)  # fmt: skip
        if isinstance(error, RunEnded):
            return 128 + signal.SIGTERM  # the shell's status for a process ended by SIGTERM
        raise  # torchrun's record keeps the traceback
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _last_checkpoint(out: str, world: World) -> str:
    """What a failed run leaves at ``out``, and how to go on. Rank 0 writes the checkpoints,
    so only it knows that no save of its is under way: the others name no step."""
    resume = _resume_command(out, world.size)
    if world.rank != 0:
        return f"Rank 0's checkpoints at {out} are whole; continue with: {resume}"
    try:
        step = checkpoint.read_training_metadata(out)["training"]["step"]
    except checkpoint.CheckpointError:
        return f"No checkpoint had been written to {out}."
    return f"The last checkpoint, {out} at step {step}, is whole; continue with: {resume}"


def _train_here(args: argparse.Namespace, device: torch.device) -> int:
    world = World.current()
    speaks = world.rank == 0  # under torchrun, rank 0 alone prints
    model_config, train_config = configs_from_args(args)
    start = 0
    if args.resume:
        start = checkpoint.read_training_metadata(args.out)["training"]["step"]
    if device.type == "cpu":
        # Training scores batches without gradients too (curriculum, --keep-best).
        prepare_kernels(model_config, ("evaluate", "train"), announce=speaks and not args.quiet)
    progress_bar = None
    if speaks and not args.quiet:
        from tqdm import tqdm

        progress_bar = tqdm(
            total=train_config.steps,
            initial=min(start, train_config.steps),
            unit="step",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def on_progress(progress: Progress) -> None:
        if progress_bar is None:
            return
        progress_bar.update(progress.step - progress_bar.n)
        progress_bar.set_postfix(
            loss=f"{progress.loss:.3f}",
            bit_errors=f"{progress.bit_errors:.2f}",
            lengths=f"{progress.min_length}-{progress.max_length}",
            skipped=progress.skipped_steps,
            refresh=False,
        )

    try:
        result = train(
            model_config, train_config, on_progress=on_progress, resume=args.resume,
            device=device,
        )  # fmt: skip
    finally:
        if progress_bar is not None:
            progress_bar.close()
    if not speaks:
        return INTERRUPTED if result.stopped else 0
    metrics = result.metrics
    summary = (
        f"step {result.step}, {result.sequences} sequences, {result.seconds:.1f} s; "
        f"loss {_number(metrics['loss'])}, bit errors/sequence {_number(metrics['bit_errors'])}"
    )
    if result.skipped_steps:
        summary += f"; {result.skipped_steps} steps skipped (non-finite loss or gradient)"
    print(f"saved {result.checkpoint} ({summary})")
    if metrics.get("best"):
        best = metrics["best"]
        print(
            f"best validated weights: {best_path(args.out)} (step {best['step']}, "
            f"{best['bit_errors']:.3f} bit errors/sequence)"
        )
    if result.stopped:
        resume = _resume_command(args.out, world.size)
        print(f"stopped before step {train_config.steps}; continue with: {resume}")
        return INTERRUPTED
    return 0


def _resume_command(out: str, world_size: int) -> str:
    return shlex.join([*launcher(world_size), "train", "--out", out, "--resume"])


def prepare_kernels(config: ModelConfig, modes: tuple[str, ...], announce: bool) -> None:
    """Compile the model's fused kernels (or load them from numba's disk cache) before the
    work starts, saying so: on a fresh machine that takes up to about 40 s, which would
    otherwise look like a hang at step 0."""
    from mann.catalog import warm_kernels

    if announce:
        print(f"preparing the {config.arch} kernels (compiled once per machine, then cached)...",
              end=" ", file=sys.stderr, flush=True)  # fmt: skip
    started = time.perf_counter()
    warm_kernels([config], modes)
    if announce:
        print(f"{time.perf_counter() - started:.1f} s", file=sys.stderr)


def configs_from_args(args: argparse.Namespace) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs the arguments ask for.

    Starting afresh, options not given take the ModelConfig / TrainConfig defaults; with
    --resume they take the values the saved run used.
    """
    if args.resume:
        saved = checkpoint.read_training_metadata(args.out)["training"]
        model_values = dict(saved["model_config"])
        train_values = dict(saved["train_config"])
    elif args.init is not None:
        # Fine-tuning: the checkpoint's model and task unless the command says otherwise.
        metadata = checkpoint.read_metadata(args.init)
        model_values = dict(metadata["config"])
        train_values = {"task": metadata["task"], "task_options": dict(metadata["task_options"])}
        if args.task is not None and args.task != train_values["task"]:
            train_values["task_options"] = {}
    else:
        if args.arch is None:
            raise ValueError("--arch is required (one of " + ", ".join(ARCHITECTURES) + ")")
        model_values = {}
        train_values = {}
    if args.arch is not None:
        model_values["arch"] = args.arch
    if args.task is not None:
        if args.resume and args.task != train_values.get("task"):
            train_values["task_options"] = {}
        train_values["task"] = args.task
    for name in MODEL_OPTIONS:
        if getattr(args, name) is not None:
            model_values[name] = getattr(args, name)
    for name in TRAIN_OPTIONS:
        value = getattr(args, name)
        if value is not None:
            # --clip none means no clipping; other "none"s (curriculum, lr-decay) are names.
            train_values[name] = None if name == "clip" and value == "none" else value
    train_values["out"] = args.out
    if args.init is not None and not args.resume:
        train_values["init"] = args.init

    task_name = train_values.get("task", TrainConfig.task)
    options = dict(train_values.get("task_options", {}))
    options.update(parse_options(args.task_option))
    options.update(length_options(task_name, options, args.min_length, args.max_length))
    train_values["task_options"] = options
    task = make_task(task_name, **options)
    model_values["input_size"] = task.input_size
    model_values["output_size"] = task.output_size
    return ModelConfig.from_dict(model_values), TrainConfig.from_dict(train_values)


def length_options(
    task_name: str, options: dict[str, Any], min_length: int | None, max_length: int | None
) -> dict[str, Any]:
    """The task options that --min-length / --max-length set (whatever the task calls them:
    ``with_lengths`` knows; e.g. min_items / max_items for associative recall)."""
    if min_length is None and max_length is None:
        return {}
    task = make_task(task_name, **options)
    low = task.min_length if min_length is None else min_length
    high = task.max_length if max_length is None else max_length
    changed = dataclasses.asdict(task.with_lengths(low, high))
    before = dataclasses.asdict(task)
    return {key: value for key, value in changed.items() if before[key] != value}


# --------------------------------------------------------------------------- evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    from mann.evaluate import generalisation, markdown_table

    device = _device_from_option(args.device)
    model = checkpoint.load(args.checkpoint, device=device)
    metadata = checkpoint.read_metadata(args.checkpoint)
    if device.type == "cpu":
        prepare_kernels(model.config, ("evaluate",), announce=True)
    task = task_for_checkpoint(args.checkpoint, metadata, args.task, args.task_option)
    task_name = task.name
    frame = generalisation(
        model,
        task,
        args.lengths,
        sequences=args.sequences,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    trained = metadata.get("task_options") or {}
    print(
        f"{checkpoint.weights_path(args.checkpoint)}: {model.config.arch} on {task_name}"
        f" (trained on lengths {_trained_range(task_name, trained)}), seed {args.seed}\n"
    )
    print(markdown_table(frame))
    return 0


def run_patterns(args: argparse.Namespace) -> int:
    from mann.analysis import markdown_table
    from mann.inputs import training_lengths
    from mann.patterns import PLACEMENT, patterns_frame

    models, first_metadata = {}, None
    for path in args.checkpoints:
        name = str(checkpoint.weights_path(path).with_suffix("").name)
        while name in models:  # the same file name from two directories
            name += "'"
        models[name] = checkpoint.load(path)
        if first_metadata is None:
            first_metadata = checkpoint.read_metadata(path)
    task = task_for_checkpoint(args.checkpoints[0], first_metadata, args.task, args.task_option)
    task_name = task.name
    lengths = args.lengths or [training_lengths(task)[1]]
    for model in models.values():
        prepare_kernels(model.config, ("record",), announce=False)
    started = time.perf_counter()
    frame = patterns_frame(
        models, task, lengths, sequences=args.sequences, seed=args.seed, rounds=args.rounds
    )
    rounds = f", {args.rounds} rounds" if args.rounds else ""
    print(
        f"{task_name}: {args.sequences} episodes per model and length{rounds}, seed "
        f"{args.seed} ({time.perf_counter() - started:.1f} s)\n"
    )
    print(markdown_table(frame))
    means = [column for column in frame.columns if ":" in column and not column.endswith("_std")]
    gates = [column for column in means if not column.startswith(PLACEMENT)]
    if gates:
        print("\ngate activity (mean over steps of each phase):\n")
        print(markdown_table(frame, columns=gates))
    placement = [column for column in means if column.startswith(PLACEMENT)]
    if placement:
        print("\npriority sort: write slot against priority, and the reads (means over the "
              "episodes; docs/analysis.md):\n")
        print(markdown_table(frame, columns=placement))
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"\nwrote {args.csv}")
    return 0


def task_for_checkpoint(path, metadata: dict, task_name: str | None, pairs: list[str]):
    """The task a command runs a checkpoint on: the one stored in it (its options too) unless
    ``--task`` names another (then that task's defaults), with ``--task-option`` on top."""
    name = task_name or metadata.get("task")
    if name is None:
        raise ValueError(f"checkpoint {checkpoint.weights_path(path)} stores no task; pass --task")
    stored = task_name is None or task_name == metadata.get("task")
    options = dict(metadata.get("task_options") or {}) if stored else {}
    options.update(parse_options(pairs))
    return make_task(name, **options)


def _trained_range(task_name: str, options: dict) -> str:
    try:
        task = make_task(task_name, **options)
    except (TypeError, ValueError):
        return "?"
    return f"{task.min_length}-{task.max_length}"


# --------------------------------------------------------------------------- parsing


def _add_device_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--device",
        default="cpu",
        metavar="{" + ",".join(DEVICES) + "}",
        help=f"where to {what}: cpu (the default; the fused kernels), cuda or cuda:N (the "
        "torch reference), or auto (a GPU where torch sees one, else the CPU)",
    )


def _device_from_option(name: str) -> torch.device:
    try:
        return resolve_device(name)
    except ValueError as error:
        raise ValueError(f"--device {name}: {error}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _clip(text: str) -> float | str:
    if text.lower() == "none":
        return "none"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 or 'none', got {text!r}") from None


def _lengths(text: str) -> list[int]:
    try:
        lengths = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers such as 10,20,40, got {text!r}"
        ) from None
    if not lengths or min(lengths) < 1:
        raise argparse.ArgumentTypeError(f"must be integers >= 1, got {text!r}")
    return lengths


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    sys.exit(main())
