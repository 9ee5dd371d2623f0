"""The report's fixed text: what the numbers are, how the claims are decided, what each data set is.

Kept apart from the code that computes tables so that either can be read (and changed) alone.
"""
from __future__ import annotations

from redr.experiments.report.claims import LEVEL

TITLE = "# redr: reproduction of *Weight Redistribution Algorithms for Sparse Neural Networks*\n"

DEVIATIONS = ("Every place where redr reads the paper one way among several, or departs from it (the init of the dense "
              "baselines, the collapse guard, the dampening, the data used, ...), is listed with its reason, code and test "
              "in [docs/deviations.md](../../docs/deviations.md).")

SCALE_NOTES = ("Seconds, bytes and accuracies are what each run measured on the machine named below, one seed; a "
               "shared machine's load changes the seconds (see the commands' notes).")

NUMBERS = ("Numbers are test accuracy in percent, mean ± std over seeds (sample std; 0 with one seed), of the run's "
           "last epoch (\"final\") or its best epoch (\"best\").")

CLAIMS_METHOD = (
    "Each claim is a set of comparisons over seeds (\"A beats B\"; for the induced-loss claim, the mean induced loss; "
    "for \"the gap grows\" and \"within 2 points\", a linear combination of means). Each comparison is tested with "
    f"Welch's t-test (unequal variances, Welch-Satterthwaite degrees of freedom), two-sided, at the {LEVEL:.0%} "
    f"level: *for* when p < {LEVEL:g} and the difference has the claimed sign, *against* when p < {LEVEL:g} and it "
    "has the other sign, *unresolved* otherwise (also when a side has fewer than two seeds). A claim is "
    "**supported** when every comparison is for, **contradicted** when any is against, **not resolved** otherwise: "
    "at this number of seeds the differences cannot be told from seed noise (more seeds might resolve them). "
    "**not tested**: a run the claim needs is missing (missing runs never count as support). The comparisons "
    "column counts the outcomes; the evidence gives the raw means ± std, the difference and p. No correction for "
    "multiple comparisons: over many comparisons one may come out against by chance, so a contradicted claim "
    "names the comparisons against it.")

HIGGS_DATA = (" These are the 46,240 genuine UCI HIGGS rows available offline here (split 5:1 in file order), not "
              "the paper's 500,000 training + 100,000 validation rows of the 11M-row file: expect lower and noisier "
              "accuracies than the paper's.")
FASHION_DATA = (" Fashion-MNIST stands in for KMNIST (not obtainable offline here): same format, size and class "
                "balance, with the paper's KMNIST setup (784-256-256-10, batch 512, lr 5e-4, affine augmentation). "
                "The paper's KMNIST numbers are not expected to carry over one to one.")
DATA_NOTES = {"higgs": HIGGS_DATA, "fashion-mnist": FASHION_DATA}
INIT_NAMES = {"paper": "the paper's (weights +-1/k, biases +-1/sqrt(k), k the active fan-in)",
              "kaiming": "PyTorch's nn.Linear rule (weights and biases +-1/sqrt(k))"}

WOODTAYLOR_GRID = ("Redr-Woodtaylor runs here with dampening lambda = {lam:g} (block {block}): the winner of the paper's "
                   "own lambda ablation (section 4.3.3), not the value its main grid used (the paper does not state that "
                   "one, and names the missing tuning as the likely cause of Woodtaylor's weak main-grid results): "
                   "Woodtaylor is tuned here, in the paper's main grid it was not.\n")

QUICK_KEEPS = (". Architectures, batch sizes, learning rates, the schedule's shape (alpha0 = 0.5, cosine decay to 0 "
               "at 3/4 of the epochs), every algorithm, density and baseline are the paper's. Fewer epochs mean less "
               "converged nets: differences between algorithms can be smaller than the seed noise.")

ACCURACY_TABLE = ("{which} test accuracy (%), mean ± std (seeds); dense nets have one size each (the "
                  "parameter-equivalent one matched to d=0.1), repeated in every column:\n")
ACCURACY_CAPTION = ("{ds}: test accuracy per epoch, one column per density; dashed: dense baselines. Bottom row: the "
                    "last third of training, the accuracy axis fitted to the dynamic algorithms (static sparse and "
                    "dense nets may lie outside it)")

INDUCED = ("Training loss on a fixed subset of the training data measured right before and right after each "
           "redistribution; the table gives the mean increase (after - before) over all redistributions and "
           "seeds (negative: the step lowered the loss).\n")
INDUCED_CAPTION = ("{ds}: size of the change of the training loss at each redistribution, mean over seeds, log "
                   "scale; filled markers: the loss went up, open markers: it went down")

REDISTRIBUTION_COUNTS = ("Redistribution steps per run: {counts}. The schedule stops at 3/4 of the epochs, so a "
                         "setting with 0 made none: its runs are static sparse training.\n")

LAYER_DENSITY = ("The global algorithms move weights between layers; layer-local ones keep every layer at the "
                 "target density. Mean over seeds of nnz / (in x out) after each epoch.\n")

TIMING = ("Ours: median seconds of a training epoch (from the second epoch on: the first one compiles kernels), "
          "plus the mean seconds of one redistribution step (from the second on, where there is one). Ratios are "
          "to the dense neuron-equivalent net on the same machine, so that machines compare; the paper timed a GPU "
          "on 500,000 rows per epoch, we time {shape}.\n")

MEMORY = ("Each configuration ran in a fresh process for a short run ({shape}) that includes a redistribution. "
          "Peak: on CUDA the caching allocator's peak of allocated bytes, on the CPU the process's peak resident set "
          "size (interpreter, libraries and data included). *Above baseline* subtracts a process that only loaded "
          "the data and ran the kernels once; the ratio (ours and the paper's) is to the dense neuron-equivalent "
          "net. MB = 10^6 bytes.\n")


def heading(text: str, level: int = 2) -> str:
    return f"\n{'#' * level} {text}\n"


def figure(path: str, caption: str) -> str:
    return f"![{caption}]({path})\n\n*{caption}*\n"
