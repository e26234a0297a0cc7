"""Evaluate every shipped checkpoint against its bar; print the README's tables.

Each model is scored by ``mann.evaluate.generalisation`` (what ``python -m mann evaluate`` runs)
over 1,000 sequences per length, outputs thresholded at 0.5 on scored steps. The bars are the
training issues': copy (trained on lengths 1-20) at most 0.1 bit errors per sequence at length
20 and at most 1 at length 40 (dnc-copy also at most 1 at 80: four times its longest training
length); repeat copy and associative recall at most 0.5 within their
training range; multi-copy (10 slots) at most 0.5 per episode of 6 rounds of length 5 (30
items), with 12 and 24 rounds reported beside it.

    python bench/shipped_models.py              # all shipped models (about a minute)
    python bench/shipped_models.py ntm-copy     # some of them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import mann  # noqa: E402
from mann import checkpoint  # noqa: E402
from mann.catalog import memory_options  # noqa: E402
from mann.evaluate import generalisation, markdown_table  # noqa: E402
from mann.tasks import make_task  # noqa: E402

# name: evaluations, each (task options changed for it, lengths to evaluate, {length: largest
# allowed bit errors per sequence}); an evaluation without bars is reported only.
COPY = [({}, (10, 20, 40, 80, 120), {20: 0.1, 40: 1.0})]
# The NTM paper's picture: trained on 1-20, copying at 4x that length (issue 20).
GENERALISING_COPY = [({}, (10, 20, 40, 80, 120), {20: 0.1, 40: 1.0, 80: 1.0})]
CONTROLLER_NAMES = {"lstm": "LSTM", "gru": "GRU", "feedforward": "feed-forward"}
MULTI_COPY = [
    ({"min_rounds": 6, "max_rounds": 6}, (5,), {5: 0.5}),
    ({"min_rounds": 12, "max_rounds": 12}, (5,), {}),
    ({"min_rounds": 24, "max_rounds": 24}, (5,), {}),
]
SHIPPED = {
    "ntm-copy": GENERALISING_COPY,
    "dnc-copy": GENERALISING_COPY,
    "ntm-repeat-copy": [({}, (1, 5, 10), {1: 0.5, 5: 0.5, 10: 0.5})],
    "dnc-repeat-copy": [({}, (1, 5, 10), {1: 0.5, 5: 0.5, 10: 0.5})],
    "ntm-associative-recall": [({}, (2, 4, 6), {2: 0.5, 4: 0.5, 6: 0.5})],
    "dnc-associative-recall": [({}, (2, 4, 6), {2: 0.5, 4: 0.5, 6: 0.5})],
    # Issue 19: the DNC with masked content lookup (Csordás & Schmidhuber 2019), same bars.
    "dnc-masked-associative-recall": [({}, (2, 4, 6), {2: 0.5, 4: 0.5, 6: 0.5})],
    "sdnc-copy": COPY,
    "sam-copy": COPY,
    "lstm-copy": [({}, (10, 20, 40, 80, 120), {})],  # the baseline: reported, no bar
    "ntm-multi-copy": MULTI_COPY,
    "dnc-multi-copy": MULTI_COPY,
    "dnc-ngrams": [({}, (200,), {})],
    "ntm-ngrams": [({}, (200,), {})],
    "lstm-ngrams": [({}, (200,), {})],  # the baseline: reported, no bar
    "lstm-priority-sort": [({}, (20,), {})],  # the baseline: reported, no bar
    # Issue 20: at most a quarter of lstm-priority-sort's 42.87 (same budget, 8,000 steps).
    "dnc-priority-sort": [({}, (20,), {20: 42.87 / 4})],
    # The same bar; shipped unmet, to show the NTM paper's placement by priority (docs/models.md).
    "ntm-priority-sort": [({}, (20,), {20: 42.87 / 4})],
    # Trained 5,000 steps on associative recall, then 30,000 on priority sort: at most a quarter
    # of the 34.901 of the LSTM's recipe run for those 35,000 steps (docs/models.md).
    "ntm-pretrained-priority-sort": [({}, (20,), {20: 34.901 / 4})],
}
# Dynamic N-grams (issue 20): cost per sequence at most this fraction above the Bayes-optimal
# predictor's on the same sequences.
ABOVE_OPTIMAL_BARS = {"dnc-ngrams": 0.05, "ntm-ngrams": 0.05}


def describe(name: str, metadata: dict) -> str:
    config = metadata["config"]
    size = (ROOT / "checkpoints" / f"{name}.safetensors").stat().st_size / 1024
    if config["arch"] == "lstm":  # the memory-less baseline: its controller is all it has
        layers = config["num_layers"]
        parts = [f"LSTM, {layers} layer{'s' if layers > 1 else ''} of {config['hidden_size']} "
                 "units, no memory"]  # fmt: skip
    else:
        parts = [
            f"{config['arch'].upper()} {config['memory_size']}×{config['word_size']}",
            f"{CONTROLLER_NAMES.get(config['controller'], config['controller'])} "
            f"{config['hidden_size']}",
            f"{config['read_heads']} read head{'s' if config['read_heads'] > 1 else ''}",
        ]
    if config["arch"] in ("sam", "sdnc"):
        parts.append(f"K={config['sparse_reads']}")
    if config["arch"] == "sdnc":
        parts.append(f"K_L={config['temporal_reads']}")
    parts += memory_options(config)
    if metadata.get("resized_from"):
        parts.append(f"trained with {metadata['resized_from']['memory_size']} slots "
                     f"(python -m mann resize)")  # fmt: skip
    parts.append(f"{size:.0f} KB")
    if metadata.get("selected"):
        parts.append(metadata["selected"])
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", help="checkpoints to evaluate (default: all shipped)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    names = args.names or [n for n in SHIPPED if (ROOT / "checkpoints" / f"{n}.json").exists()]
    failures = []
    for name in names:
        path = ROOT / "checkpoints" / name
        metadata = checkpoint.read_metadata(path)
        model = mann.load(path)
        print(f"**{name}** ({describe(name, metadata)})\n")
        for changes, lengths, bars in SHIPPED[name]:
            options = {**metadata["task_options"], **changes}
            task = make_task(metadata["task"], **options)
            frame = generalisation(model, task, lengths)
            if changes:
                print("with " + ", ".join(f"{key}={value}" for key, value in changes.items())
                      + ":\n")  # fmt: skip
            print(markdown_table(frame))
            verdicts = []
            for length, bar in bars.items():
                errors = float(frame.loc[frame["length"] == length, "mean_bit_errors"].iloc[0])
                met = errors <= bar
                verdicts.append(f"{errors:.3f} at {length} (bar {bar}: "
                                f"{'met' if met else 'NOT met'})")  # fmt: skip
                if not met:
                    failures.append(name)
            if name in ABOVE_OPTIMAL_BARS:
                row = frame.iloc[-1]
                above = row["cost_bits"] / row["optimal_cost_bits"] - 1.0
                met = above <= ABOVE_OPTIMAL_BARS[name]
                verdicts.append(f"cost {100 * above:.1f}% above optimal at "
                                f"{int(row['length'])} (bar {100 * ABOVE_OPTIMAL_BARS[name]:.0f}%: "
                                f"{'met' if met else 'NOT met'})")  # fmt: skip
                if not met:
                    failures.append(name)
            print(f"\nBar: {'; '.join(verdicts)}.\n" if verdicts else "\n(reported, no bar)\n",
                  flush=True)  # fmt: skip
    if failures:
        print(f"Below their bar: {', '.join(sorted(set(failures)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
