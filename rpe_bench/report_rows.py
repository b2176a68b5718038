"""The comparison's rows as types: compare.py builds one VariantRow per variant (a group of runs that differ in
seed alone) and a Comparison of them; the tables, plots and the W&B report read these, never recompute them.

Inside the code a quantity has one name; comparison.csv and the W&B table keep the names the published reports
use (those of results.json, the reference notebook's), mapped from these in one place: `VariantRow.record`."""
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

# Code name -> the column's name in comparison.csv and the W&B table, where they differ.
COLUMN_NAMES = {"encoding": "pos_variant", "f": "f_sparse", "options": "pos_options", "encoding_label": "pos_label",
                "label": "variant"}


@dataclass(frozen=True)
class VariantRow:
    """One variant's numbers; None where a number cannot be computed. Accuracies are fractions, differences are
    the variant's minus rope's, `val` is the test split (as in the notebook)."""
    dataset: str
    dataset_display_name: str
    encoding: str
    f: Optional[float]  # cayley_sparse's sparsity, None for every other encoding
    coordinates: str
    options: Optional[str]  # the encoding's options but f, "name=value, ..."; None where the runs have none
    encoding_label: str  # the encoding, with its options where runs of it differ in them
    label: str  # encoding_label, f and, where the report holds several, the coordinates
    seeds: int
    final_val_acc_mean: float
    final_val_acc_std: Optional[float]
    final_val_acc_ci95_low: Optional[float]
    final_val_acc_ci95_high: Optional[float]
    best_val_acc_mean: float
    best_val_acc_std: Optional[float]
    # Wall time in the sweep, beside whatever else ran: in the record, not a cost measure.
    avg_epoch_time_sec_mean: float
    avg_epoch_time_sec_std: Optional[float]
    inference_time_ms_per_batch_mean: Optional[float]
    num_parameters: int
    # Measured cost (cost.json); None where this variant was not measured.
    train_step_ms: Optional[float]
    train_step_vs_rope: Optional[float]
    inference_ms: Optional[float]
    inference_vs_rope: Optional[float]
    # The test against rope: paired t where seeds pair, else Welch's t (rpe_bench.statistics).
    test: Optional[str]
    test_runs: Optional[str]
    final_val_acc_diff_per_seed: Optional[Dict[int, float]]
    final_val_acc_diff: Optional[float]
    final_val_acc_diff_ci95_low: Optional[float]
    final_val_acc_diff_ci95_high: Optional[float]
    p_value: Optional[float]
    p_value_holm: Optional[float]
    # TOST against the declared margin, and its p after Holm over the report's equivalence tests.
    tost_p_value: Optional[float]
    tost_p_value_holm: Optional[float]
    holm_level: Optional[float]  # the alpha of this comparison's Holm step
    # Detectable at the Holm step's alpha (what the verdict could find), and at an unadjusted 0.05.
    final_val_acc_diff_min_detectable: Optional[float]
    final_val_acc_diff_min_detectable_unadjusted: Optional[float]
    test_df: Optional[float]
    final_val_acc_diff_unpaired: Optional[float]
    final_val_acc_diff_unpaired_ci95_low: Optional[float]
    final_val_acc_diff_unpaired_ci95_high: Optional[float]
    final_val_acc_diff_unpaired_min_detectable: Optional[float]
    final_val_acc_diff_ci_width_vs_unpaired: Optional[float]
    verdict: str
    # The plan (paired rows only): the per-seed differences' SD and its one-sided 80% upper bound, and the paired
    # seeds needed at Holm's first-step alpha to detect the planned effect, or to show equivalence, at 80% power.
    paired_sd: Optional[float]
    paired_sd_upper: Optional[float]
    seeds_to_detect: Optional[int]
    seeds_to_detect_upper: Optional[int]
    seeds_for_equivalence: Optional[int]
    seeds_for_equivalence_upper: Optional[int]
    # Image size -> (mean, std) of val acc over the runs that evaluated it.
    extrapolation: Dict[str, Tuple[Optional[float], Optional[float]]] = field(default_factory=dict)

    @property
    def is_reference(self) -> bool:
        return self.verdict == "reference"

    def record(self) -> Dict[str, Any]:
        """The row under comparison.csv's column names, in its column order."""
        record = {COLUMN_NAMES.get(item.name, item.name): getattr(self, item.name)
                  for item in dataclasses.fields(self) if item.name != "extrapolation"}
        for size, (mean, std) in self.extrapolation.items():
            record[f"extrapolation_{size}_val_acc_mean"], record[f"extrapolation_{size}_val_acc_std"] = mean, std
        return record


@dataclass(frozen=True)
class ArmRow:
    """One variant with one setting changed against itself with the reference setting: other coordinates
    against `flat` (the reference notebook's, where present), another start against `init=rope`; or one variant
    against the reference encoding at one extrapolation size (the arm). The same seeds, so paired; differences
    are this arm minus that."""
    dataset_display_name: str
    label: str  # the encoding with its f and the options both arms share
    arm: str  # the setting of this arm ("grid", "spectral")
    versus: str
    test: Optional[str]
    final_val_acc_diff_per_seed: Optional[Dict[int, float]]
    final_val_acc_diff: Optional[float]
    final_val_acc_diff_ci95_low: Optional[float]
    final_val_acc_diff_ci95_high: Optional[float]
    p_value: Optional[float]
    p_value_holm: Optional[float]  # over the rows of its section (coordinates, starts, sizes), a family of its own
    verdict: str


@dataclass(frozen=True)
class Comparison:
    """Every variant's row, in report order, and what the report shows about them as a whole."""
    rows: List[VariantRow]
    extrapolation_sizes: List[str]
    # Decided once for every table and label: the coordinates are named only where the rows differ in them.
    shows_coordinates: bool
    coordinate_rows: List[ArmRow] = field(default_factory=list)
    margin: float = 0.005  # the declared equivalence margin (rpe_bench.compare.Decision), a fraction
    planned_effect: float = 0.003
    start_rows: List[ArmRow] = field(default_factory=list)
    reference: str = "rope"  # the encoding the differences are taken from
    # Each variant's val acc at each extrapolation size against the reference's at that size (arm = the size).
    extrapolation_rows: List[ArmRow] = field(default_factory=list)

    @property
    def datasets(self) -> List[str]:
        return sorted({row.dataset_display_name for row in self.rows})
