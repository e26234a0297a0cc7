"""The guided lessons of the Learn page: each a few steps of text, an equation where it helps,
and a live view of a shipped model preset for the step (``View``). Plain data: the page draws
them through the library's figures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class View:
    """What a lesson step shows, live.

    ``kind``: "scrub" (the Inspect figure at ``step``), "timeline", "explain" (``head`` at
    ``step``), "compare" (``models`` side by side at ``step``), "reuse" (allocation path and
    usage of ``models`` on one episode), "whatif" (the What-if preset whose name starts with
    ``preset``), "generalisation" (``models`` at ``lengths``). ``model`` is the view's model
    (or the first of ``models``); ``page`` is the full page that opens the same view.
    """

    kind: str
    model: str = ""
    models: tuple[str, ...] = ()
    length: int = 8
    seed: int = 1
    rounds: int | None = None
    step: int = 0
    head: str = ""
    preset: str = ""
    lengths: tuple[int, ...] = ()
    page: str = "inspect"
    memory_size: int | None = None  # run the model with this many slots (None: as shipped)

    def sized(self, name: str) -> int | None:
        """The memory size the view runs ``name`` with."""
        return self.memory_size or MEMORY_SIZES.get(name)

    @property
    def needed(self) -> tuple[str, ...]:
        """The checkpoints the view needs."""
        return tuple(name for name in dict.fromkeys((self.model, *self.models)) if name)


@dataclass(frozen=True)
class Step:
    title: str
    text: str
    view: View
    equation: str = ""  # LaTeX, drawn under the text
    look_at: str = ""  # which panel to look at, said above the view


@dataclass(frozen=True)
class Lesson:
    key: str
    title: str
    summary: str
    steps: tuple[Step, ...] = field(default_factory=tuple)


NTM_SLOTS = 64  # ntm-copy copies short sequences without error with 64 slots too

NTM = Lesson(
    "ntm", "How an NTM copies",
    "ntm-copy, a Neural Turing Machine with a feed-forward controller, stores a sequence by "
    "walking its ring of memory slots and reads it back by walking the same way.",
    (
        Step(
            "The copy task",
            "The model reads 8 random 8-bit vectors, one per step, then a delimiter (the "
            "9th step), and must then write the 8 vectors back in order. Its controller is "
            "feed-forward: it remembers nothing from one step to the next, so everything goes "
            "through memory.",
            View("scrub", "ntm-copy", step=0, memory_size=NTM_SLOTS),
            look_at="the strip at the bottom: input, target and the model's output over time",
        ),
        Step(
            "Writing: one slot per item",
            "The top row of the timeline is the write head's weighting over the slots at "
            "each step. It moves by one slot per input step, walking the ring backwards: slot "
            "0, then 63, 62, … Each item lands in a fresh slot. (These first steps run "
            "ntm-copy with 64 slots, so the walk fills the picture; it ships with 512.)",
            View("timeline", "ntm-copy", memory_size=NTM_SLOTS),
            look_at="the write head's diagonal in the top image",
        ),
        Step(
            "How one weighting is formed",
            "Every NTM head addresses memory in four stages: a content lookup (how similar each "
            "slot is to a key, sharpened by β), an interpolation with the head's previous "
            "weighting (gate g), a circular shift by the distribution s, and a sharpening by "
            "γ. Here the write head at step 3 leans on its previous place (g ≈ 0.3), shifts "
            "by −1 (s[−1] ≈ 0.9) and sharpens (γ ≈ 2).",
            View("explain", "ntm-copy", step=3, head="write 0", page="explain",
                 memory_size=NTM_SLOTS),
            equation=r"w_t = \frac{\tilde w_t^{\gamma}}{\sum_j \tilde w_t[j]^{\gamma}},\quad "
            r"\tilde w_t = s_t * \big(g_t\, w^c_t + (1-g_t)\, w_{t-1}\big),\quad "
            r"w^c_t = \mathrm{softmax}(\beta_t\, D(k_t, M_{t-1}))",
        ),
        Step(
            "Finding the start again",
            "At the delimiter the read head jumps back to the first item: a sharp content "
            "lookup (β about 12) finds slot 0, and the shift keeps it there.",
            View("explain", "ntm-copy", step=8, head="read 0", page="explain",
                 memory_size=NTM_SLOTS),
            look_at="stage 1, the content weighting, and stage 4, the weighting used",
        ),
        Step(
            "Reading back, slot by slot",
            "From then on the read head ignores content (g = 0) and shifts by −1 each step, "
            "along the path the write head took: 0, 63, 62, … The output at each step is "
            "what it reads.",
            View("scrub", "ntm-copy", step=11, memory_size=NTM_SLOTS),
            look_at="the read weighting row and the output strip",
        ),
        Step(
            "Why it copies longer sequences",
            "Trained on at most 20 items, ntm-copy copies 120 without an error, because the walk "
            "does not depend on the length. (With the 128 slots it was trained in it failed at "
            "80: what it reads during input is the mean of memory, a count that went out of the "
            "range it was trained on; 512 slots keep that count small.)",
            View("scrub", "ntm-copy", length=40, step=60),
        ),
    ),
)

DNC = Lesson(
    "dnc", "How a DNC allocates, links and frees memory",
    "dnc-copy and dnc-multi-copy: a Differentiable Neural Computer writes wherever allocation "
    "offers a free slot, remembers the order of its writes in a link matrix, reads by "
    "following it, and frees what it has read.",
    (
        Step(
            "Allocation: write where nothing is needed",
            "The DNC keeps a usage u ∈ [0,1] per slot. Allocation weights the least used "
            "slots; the allocation gate g^a mixes it with a content lookup, the write gate g^w "
            "scales the whole. dnc-copy writes its items to slots 0, 3, 6, 1, 10, …: wherever "
            "allocation points, not in a row.",
            View("explain", "dnc-copy", step=2, head="write 0", page="explain"),
            equation=r"a[\phi_j] = (1-u[\phi_j])\prod_{m<j}u[\phi_m],\qquad "
            r"w^w = g^w\,[\,g^a a + (1-g^a)\, c^w\,]",
        ),
        Step(
            "The temporal link matrix",
            "Because writes go anywhere, the DNC records their order: L[i, j] is how much slot "
            "i was written right after slot j. At the delimiter the link matrix holds the whole "
            "chain of the sequence.",
            View("scrub", "dnc-copy", step=8),
            equation=r"L_t[i,j] = (1 - w^w_t[i] - w^w_t[j])\,L_{t-1}[i,j] + w^w_t[i]\,p_{t-1}[j]",
            look_at="the link panel on the right",
        ),
        Step(
            "Reading in order: the forward weighting",
            "To answer, the read head first finds the first item by content, then follows the "
            "links forward, π[forward] near 1: the slot written after the one it read last.",
            View("explain", "dnc-copy", step=12, head="read 0", page="explain"),
            equation=r"f_t = L_t\, w^r_{t-1},\qquad w^r_t = \pi_t[0]\, b_t + \pi_t[1]\, c_t "
            r"+ \pi_t[2]\, f_t",
        ),
        Step(
            "Freeing memory",
            "dnc-multi-copy copies 6 rounds of 5 items with 10 slots: 30 items cannot all be "
            "kept. Its free gates release each slot as it is read back, usage falls, and "
            "allocation hands the slot out again in the next round: the write path jumps "
            "between the same 10 slots.",
            View("reuse", models=("ntm-multi-copy", "dnc-multi-copy"), length=5, rounds=6,
                 seed=0, page="patterns"),
            equation=r"\psi_t = \prod_r (1 - f^r_t\, w^r_{t-1}),\qquad "
            r"u_t = (u_{t-1} + w^w_{t-1} - u_{t-1}\circ w^w_{t-1})\circ\psi_t",
            look_at="the allocation path (NTM walking, DNC jumping) and the DNC's usage",
        ),
        Step(
            "What if it could not free?",
            "Hold every free gate at 0: read slots are never released, usage only grows, and "
            "once the 10 slots are used the later rounds fail.",
            View("whatif", "dnc-multi-copy", length=5, rounds=6, seed=0,
                 preset="DNC: never free", page="whatif"),
            look_at="the bit errors per step: the first rounds are right, the later ones not",
        ),
    ),
)

WHY = Lesson(
    "memory", "Why external memory: an LSTM against an NTM on longer sequences",
    "lstm-copy is an LSTM alone, trained on the same copies of 1 to 20 vectors as ntm-copy and "
    "dnc-copy. Within its training lengths it copies; past them it cannot.",
    (
        Step(
            "Short sequences: both copy",
            "On 10 vectors the LSTM and the NTM both copy without an error.",
            View("compare", models=("lstm-copy", "ntm-copy"), length=10, step=15,
                 page="compare"),
            look_at="each row's output strip and its bit errors in the title",
        ),
        Step(
            "Longer than trained: the LSTM fails",
            "On 40 vectors, twice its longest training sequence, the LSTM's output goes wrong "
            "from the 13th vector on; the NTM still copies.",
            View("compare", models=("lstm-copy", "ntm-copy"), length=40, step=70,
                 page="compare"),
        ),
        Step(
            "What the LSTM remembers",
            "The LSTM has no memory: its 'memory' rows here are its own state, h and c of 256 "
            "units. Everything it keeps of the sequence has to fit there, and it learned to "
            "use it only for the lengths it saw.",
            View("scrub", "lstm-copy", length=20, step=25),
        ),
        Step(
            "The NTM paper's picture",
            "Bit errors per sequence against length: the LSTM fails past 20, the NTM and the "
            "DNC copy 80 and more.",
            View("generalisation", models=("lstm-copy", "ntm-copy", "dnc-copy"),
                 lengths=(10, 20, 40, 80), page="generalisation"),
        ),
    ),
)

SPARSE = Lesson(
    "sparse", "Sparse memory: reading 4 slots out of many",
    "sam-copy, Sparse Access Memory: each read touches only the K = 4 slots a k-NN index finds "
    "nearest the key, so a step costs the same however large memory is.",
    (
        Step(
            "Four slots per read",
            "Here sam-copy runs with 4,096 slots. The markers show the slots each read head "
            "looked at: 4 of 4,096, found by the index (faiss) by content.",
            View("scrub", "sam-copy", length=12, step=16),
            look_at="the read markers over the memory and weightings",
        ),
        Step(
            "Writing to the least recently used slot",
            "SAM writes to the slots it just read (to update them) or to the least recently "
            "used slot, chosen by γ, found in O(√N) without scanning memory.",
            View("explain", "sam-copy", length=12, step=5, head="write 0", page="explain"),
            equation=r"w^w_t = \alpha_t\,\big(\gamma_t\, w^r_{t-1} + (1-\gamma_t)\,"
            r"\mathbb{1}_{U}\big)",
        ),
        Step(
            "Why it scales",
            "A training step of SAM takes about the same time with 1,024 slots as with 262,144 "
            "(`python bench/scaling.py`: 35 and 42 ms at batch 8), and its memory grows only "
            "by the memory matrix itself: reads and writes touch K rows, and the backward pass "
            "carries one gradient buffer.",
            View("timeline", "sam-copy", length=12),
        ),
    ),
)

LOOKUP = Lesson(
    "lookup", "Looking things up: an NTM that counts in a learned memory",
    "Dynamic N-grams: each sequence of 200 bits follows its own rule, a probability of a 1 after "
    "each of the 32 five-bit contexts. ntm-ngrams predicts each next bit within 0.1% of the "
    "best possible cost, because it finds each context's slot by content.",
    (
        Step(
            "Counting is the best one can do",
            "The rule is new in every sequence, so the best prediction counts: after a context "
            "seen N₁ times followed by 1 and N₀ times by 0, P(1) = (N₁ + ½)/(N₁ + N₀ + 1). Over "
            "1,000 sequences that costs 128.0 bits each; ntm-ngrams 128.1, the LSTM alone 151.5.",
            View("compare", models=("lstm-ngrams", "ntm-ngrams"), length=60, step=40, seed=10,
                 page="compare"),
            equation=r"P(x_{t+1}=1) = \frac{N_1 + \tfrac12}{N_1 + N_0 + 1}",
            look_at="each row's output strip against the input bits, and the bit errors",
        ),
        Step(
            "One slot per context",
            "In these 60 bits 25 different five-bit contexts occur, and the read head visits "
            "exactly 25 slots: whenever a context recurs, its key finds the same slot again "
            "(over 100 sequences, 99.85% of a context's reads land in one slot). That slot is "
            "where the model keeps what it has counted for the context.",
            View("timeline", "ntm-ngrams", length=60, seed=10),
            look_at="the read weighting: one sharp slot per step, each revisited when its "
            "context comes back",
        ),
        Step(
            "A memory that starts distinct",
            "At step 0 the memory already holds 128 learned rows, all different. The context's "
            "key is compared with every row (cosine similarity, sharpened by β), so even its "
            "first lookup lands on a slot of its own. From the usual constant start every row "
            "is alike, no key can tell them apart, and the same NTM got no closer than 5.4% "
            "above the optimum.",
            View("scrub", "ntm-ngrams", length=60, seed=10, step=1),
            equation=r"w^c_t[i] = \frac{\exp(\beta_t\, \cos(k_t, M_{t-1}[i]))}"
            r"{\sum_j \exp(\beta_t\, \cos(k_t, M_{t-1}[j]))}",
            look_at="the memory panel: rows that differ before anything is written",
        ),
        Step(
            "What if it forgot its learned rows?",
            "Start the same model from the constant memory: its keys no longer find the slots "
            "it learned, and its predictions go wrong from the first steps.",
            View("whatif", "ntm-ngrams", length=200, seed=0, preset="NTM: forget",
                 page="whatif"),
            look_at="the answer bits that flipped and the bit errors per step",
        ),
    ),
)

SORTING = Lesson(
    "sorting", "Sorting: where an NTM and a DNC put things",
    "Priority sort: twenty vectors arrive with priorities, and the sixteen of highest priority "
    "must come back in order. The NTM writes each vector where its priority points and walks "
    "the slots; the DNC writes in arrival order and searches; and an NTM that learned recall "
    "first sorts the DNC's way.",
    (
        Step(
            "Same task, two memories",
            "Twenty 8-bit vectors arrive, each with a priority in [-1, 1]; after the delimiter "
            "the model writes the 16 of highest priority, highest first (128 answer bits). "
            "Over 1,000 sequences dnc-priority-sort gets 2.7 of them wrong, ntm-priority-sort "
            "27.1, an LSTM without memory 42.9, all trained alike for 8,000 steps.",
            View("compare", models=("ntm-priority-sort", "dnc-priority-sort"), length=20,
                 seed=5, step=21, page="compare"),
            look_at="each row's output strip against the target, and the bit errors",
        ),
        Step(
            "The NTM writes where the priority points",
            "Follow the write row: each vector goes to a slot computed from its priority, the "
            "highest priorities at one end of a band of about a dozen slots. Over 50 sequences "
            "slot and priority correlate at r = -0.86. The NTM paper found its NTM doing the "
            "same. To answer, the read head walks the band one slot per step.",
            View("timeline", "ntm-priority-sort", length=20, seed=5),
            look_at="the write weighting's jumps up and down a band, then the read's walk",
        ),
        Step(
            "The DNC writes in arrival order and searches",
            "Allocation hands each vector the next free slot whatever its priority (r = -0.04; "
            "20 slots for 20 vectors). Each answer is a content lookup of the highest priority "
            "left, a jump straight to its slot; the write then overwrites the slot just read, "
            "so the next lookup finds the next priority.",
            View("timeline", "dnc-priority-sort", length=20, seed=5),
            look_at="the write's steady march through fresh slots, then the reads' jumps",
        ),
        Step(
            "Where the NTM loses its bits",
            "Twenty vectors in about eleven slots: vectors of close priority land in one slot "
            "and their bits mix. An answer whose vector has a slot to itself, read from that "
            "slot, comes out with 0.24 wrong bits of 8; one that shares its slot with one other "
            "vector, 1.87 (200 sequences). The NTM's addressing has no notion of a free slot; "
            "the DNC's allocation is exactly that.",
            View("scrub", "ntm-priority-sort", length=20, seed=5, step=20),
            look_at="the memory panel at the delimiter: fewer written rows than vectors",
        ),
        Step(
            "The same NTM can learn the DNC's way",
            "ntm-pretrained-priority-sort is an NTM of the same sizes, trained first on "
            "associative recall of single vectors (find a vector by content, answer the one "
            "after it), then on priority sort. It writes each vector to a fresh slot in arrival "
            "order, looks each answer up by content and overwrites the slot it has just read: "
            "the DNC's selection sort, with no allocation to hand it free slots. Over 1,000 "
            "sequences it gets 0.7 of the 128 bits wrong (the DNC 2.7).",
            View("timeline", "ntm-pretrained-priority-sort", length=20, seed=5),
            look_at="the write's march through fresh slots, then read 0's jumps, with the "
            "write on the same slot",
        ),
        Step(
            "What if the DNC could not cross off its answers?",
            "Close the DNC's write gate on the answer steps: the slot it has just read is no "
            "longer overwritten, so the next content lookup finds the same highest priority "
            "again. On this input every answer then repeats the first (within 2 bits), and "
            "the bit errors go from 1 to 65 (seeds 0-5: from 0-2 to 54-65).",
            View("whatif", "dnc-priority-sort", length=20, seed=5, preset="DNC: keep",
                 page="whatif"),
            look_at="the answers that flipped: all but the first",
        ),
    ),
)

LESSONS = (NTM, DNC, WHY, SPARSE, LOOKUP, SORTING)
# Memory sizes a lesson runs a shipped model with (a sparse memory is cheap to enlarge).
MEMORY_SIZES = {"sam-copy": 4096}
