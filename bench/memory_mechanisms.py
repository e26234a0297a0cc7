"""How three shipped models use their memory, measured: the numbers docs/models.md quotes.

    python bench/memory_mechanisms.py          # about a minute, one thread

1. ntm-ngrams (an NTM with a learned initial memory) against the same weights started from
   the constant memory: where the strongest read lands by five-bit context
   (``mann.analysis.context_reads``, 100 sequences) and the cost above the Bayes-optimal
   predictor (1,000 sequences).
2. dnc-priority-sort: its read modes and allocation gate on the output steps, and how often
   its write lands on the slot read at the step before (a selection sort), over 20 sequences;
   ntm-pretrained-priority-sort's write on the slot read at the same step.
3. What if's "NTM: forget the learned initial memory" on ntm-ngrams, on the sidebar's inputs
   (200 bits, seeds 0-3): bit errors as recorded and with it.
4. ntm-priority-sort against ntm-pretrained-priority-sort and dnc-priority-sort: is an item's
   write slot fixed by its priority (the NTM paper's finding), and do the reads walk the slots
   or jump to each answer (``mann.analysis.placement_frame``, 50 sequences)? And
   ntm-priority-sort's bit errors per answer by
   how many items share the answered item's slot and whether its read lands there (200
   sequences): what keeps it above the DNC.
5. What if's priority-sort presets on the sidebar's inputs (20 vectors, seeds 0-5): bit errors
   as recorded and with each, and for the selection sorts' how far the answers match the
   targets one place on (erase) or the first target (keep); for "forget the learned initial
   memory" the slots the NTM wrote its 20 vectors to, before and after.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mann  # noqa: E402
from mann import analysis  # noqa: E402
from mann.evaluate import generalisation  # noqa: E402
from mann.inputs import record, sample_input  # noqa: E402
from mann.tasks import make_task  # noqa: E402
from mann.whatif import presets, whatif  # noqa: E402

CHECKPOINTS = ROOT / "checkpoints"
# The shipped priority sorters: placing by priority, and two selection sorts.
SORTERS = ("ntm-priority-sort", "ntm-pretrained-priority-sort", "dnc-priority-sort")


def from_constant_memory(model: mann.MemoryAugmentedNetwork) -> mann.MemoryAugmentedNetwork:
    """The same weights with ``learned_memory`` off: the run starts from the constant memory."""
    config = mann.ModelConfig.from_dict({**model.config.to_dict(), "learned_memory": False})
    constant = mann.build_model(config)
    constant.load_state_dict({name: value for name, value in model.state_dict().items()
                              if name != "access.initial_memory"})  # fmt: skip
    return constant.eval()


def ngram_slots() -> None:
    task = make_task("ngrams")
    learned = mann.load(CHECKPOINTS / "ntm-ngrams").eval()
    batch = task.sample(100, torch.Generator().manual_seed(11))
    print("1. N-grams: reads by five-bit context, 100 sequences; cost over 1,000\n")
    print("| model | reads of a context in its commonest slot | sequences with as many read "
          "slots as contexts | read slots minus contexts (min, max) | cost above optimal |")
    print("|---|---:|---:|---|---:|")
    for name, model in (("ntm-ngrams", learned),
                        ("its weights from the constant memory", from_constant_memory(learned))):
        found = [analysis.context_reads(trace) for trace in mann.record_traces(model, batch)]
        shares = [share for reads in found for share in reads.one_slot_shares]
        extra = [reads.read_slots - reads.contexts for reads in found]
        row = generalisation(model, task, [200], sequences=1000, seed=0).iloc[0]
        above = row["cost_bits"] / row["optimal_cost_bits"] - 1
        print(f"| {name} | {100 * statistics.mean(shares):.2f}% | "
              f"{sum(e == 0 for e in extra)} of {len(extra)} | {min(extra)}, {max(extra)} | "
              f"{100 * above:.1f}% |")


def selection_sort() -> None:
    model = mann.load(CHECKPOINTS / "dnc-priority-sort").eval()
    batch = make_task("priority_sort").sample(20, torch.Generator().manual_seed(1))
    modes, gates, rewrites = [], [], []
    for trace in mann.record_traces(model, batch):
        output = np.flatnonzero(trace.mask > 0)
        modes.append(trace.read_modes[output].mean(axis=0))  # (heads, 3)
        gates.append(trace.allocation_gate[output].mean())
        written = trace.write_weights[output[1:], 0].argmax(-1)
        read_before = trace.read_weights[output[1:] - 1, 0].argmax(-1)
        rewrites.append(np.mean(written == read_before))
    mean_modes = np.mean(modes, axis=0)
    print("\n2. dnc-priority-sort on its output steps, 20 sequences\n")
    print("| read head | backward | content | forward |")
    print("|---|---:|---:|---:|")
    for head, (back, content, forward) in enumerate(mean_modes):
        print(f"| {head} | {back:.2f} | {content:.2f} | {forward:.2f} |")
    print(f"\nallocation gate {np.mean(gates):.3f}; write on the slot read 0 read at the step "
          f"before: {100 * np.mean(rewrites):.1f}% of output steps")
    # The NTM reads M_{t-1} and then writes, so it crosses off within the step.
    ntm = mann.load(CHECKPOINTS / "ntm-pretrained-priority-sort").eval()
    same_step = []
    for trace in mann.record_traces(ntm, batch):
        output = np.flatnonzero(trace.mask > 0)
        written = trace.write_weights[output, 0].argmax(-1)
        same_step.append(np.mean(written == trace.read_weights[output, 0].argmax(-1)))
    print(f"ntm-pretrained-priority-sort: write on the slot read 0 reads at the same step: "
          f"{100 * np.mean(same_step):.1f}% of output steps")


def forget_preset() -> None:
    model = mann.load(CHECKPOINTS / "ntm-ngrams").eval()
    task = make_task("ngrams")
    print("\n3. What if: 'NTM: forget the learned initial memory' on ntm-ngrams, 200 bits\n")
    print("| seed | bit errors as recorded | with it | first changed answer |")
    print("|---:|---:|---:|---:|")
    for seed in range(4):
        batch = sample_input(task, 200, seed)
        (forget,) = [p for p in presets(record(model, batch)) if "forget" in p.name]
        result = whatif(model, batch, forget.interventions)
        print(f"| {seed} | {result.original.metadata['bit_errors']:g} | "
              f"{result.intervened.metadata['bit_errors']:g} | {result.first_changed_bit} |")


def priority_placement() -> None:
    batch = make_task("priority_sort").sample(50, torch.Generator().manual_seed(1))
    traces = {name: mann.record_traces(mann.load(CHECKPOINTS / name).eval(), batch)
              for name in SORTERS}  # fmt: skip
    frame = analysis.placement_frame(traces)
    print("\n4. Priority sort: where each item is written and how the answers are read, "
          "50 sequences of 20 items\n")
    print("| model | priority fit r | slots written for 20 items | consecutive reads at most one "
          "slot apart | answers read from their item's slot |")
    print("|---|---:|---:|---:|---:|")
    for row in frame.itertuples():
        print(f"| {row.model} | {row.priority_fit:+.2f} | {row.slots_written:.1f} | "
              f"{100 * row.read_steps:.1f}% | {100 * row.read_hits:.1f}% |")

    answers = []  # (items in the answered item's slot, read on that slot, bit errors)
    batch = make_task("priority_sort").sample(200, torch.Generator().manual_seed(3))
    for trace in mann.record_traces(mann.load(CHECKPOINTS / "ntm-priority-sort").eval(), batch):
        _, slots = analysis.write_slots(trace)
        _, answered = analysis.sorted_inputs(trace)
        scored = trace.mask > 0
        errors = ((trace.outputs[scored] > 0.5) != (trace.targets[scored] > 0.5)).sum(axis=1)
        head = analysis.priority_placement(trace).read_head  # the answering read head
        reads = trace.read_weights[scored, head].argmax(axis=1)
        for j, item in enumerate(answered):
            answers.append((int((slots == slots[item]).sum()), bool(reads[j] == slots[item]),
                            int(errors[j])))  # fmt: skip
    print("\nntm-priority-sort, 200 sequences: bit errors per answer (of 8)\n")
    print("| items in the answered item's slot | answering read on that slot | answers | share | "
          "bit errors per answer |")
    print("|---:|---|---:|---:|---:|")
    for sharing in (1, 2, 3):
        for hit in (True, False):
            chosen = [e for n, h, e in answers if min(n, 3) == sharing and h == hit]
            label = f"{sharing}{'+' if sharing == 3 else ''}"
            print(f"| {label} | {'yes' if hit else 'no'} | {len(chosen)} | "
                  f"{100 * len(chosen) / len(answers):.1f}% | {statistics.mean(chosen):.2f} |")
    print(f"| all | | {len(answers)} | 100% | {statistics.mean(e for *_, e in answers):.2f} |")


def sort_presets() -> None:
    task = make_task("priority_sort")
    print("\n5. What if on priority sort, the sidebar's inputs of 20 vectors\n")
    print("| model | preset | seed | bit errors as recorded | with it | answers within 2 bits of "
          "the next target (erase) or the first (keep); slots written (forget) |")
    print("|---|---|---:|---:|---:|---:|")
    for name in SORTERS:
        model = mann.load(CHECKPOINTS / name).eval()
        for seed in range(6):  # the Learn lesson "Sorting" runs seed 5
            batch = sample_input(task, 20, seed)
            targets = batch.targets[0].numpy() > 0.5
            for preset in presets(record(model, batch)):
                result = whatif(model, batch, preset.interventions)
                answers = result.intervened.outputs[21:] > 0.5
                if "erase" in preset.name:  # one place early: answer j is target j + 1
                    close = ((answers[:-1] != targets[22:]).sum(axis=1) <= 2).sum()
                    matched = f"{close} of {len(answers) - 1}"
                elif "keep" in preset.name:  # the first answer again and again
                    close = ((answers != targets[21]).sum(axis=1) <= 2).sum()
                    matched = f"{close} of {len(answers)}"
                elif "forget" in preset.name:  # the placement by priority, before and after
                    before, after = (analysis.priority_placement(trace).slots_written
                                     for trace in (result.original, result.intervened))
                    matched = f"slots written {before} → {after}"
                else:
                    matched = ""
                print(f"| {name} | {preset.name} | {seed} | "
                      f"{result.original.metadata['bit_errors']:g} | "
                      f"{result.intervened.metadata['bit_errors']:g} | {matched} |")


def main() -> int:
    torch.set_num_threads(1)
    ngram_slots()
    selection_sort()
    forget_preset()
    priority_placement()
    sort_presets()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
