"""The run record: what a pruning run did, as one typed object shared by the pipeline (which fills it),
the checkpoint (which stores it as ``reprune_report.json``), the CLI and the report (which read it).

The file names of a run folder are defined here too, so no other module spells them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from reprune.adapters import LayerShape
from reprune.config import PruneConfig

RECORD_FILE = "reprune_report.json"  # the record, beside the checkpoint's weights
EVAL_FILE = "reprune_eval.json"  # ``reprune eval`` results of a checkpoint
DENSE_EVAL_FILE = "dense_eval.json"  # the dense baseline's evaluation in a folder of runs
REMOTE_FILE = "modeling_reprune.py"  # the loader of per-layer sizes, copied into such checkpoints


@dataclass
class LayerRecord:
    """What happened to one module: sizes, kept units, output errors and time. A mixture-of-experts FFN
    has one record per expert (``expert``: its index; None for every other module)."""

    block: int
    kind: str
    units_before: int
    units_after: int
    kept_units: list[int]
    error_none: float | None  # relative output error of plain pruning on the calibration rows (None: data-free)
    error: float | None  # relative output error after the chosen reconstruction
    seconds_stats: float
    seconds_solve: float
    expert: int | None = None
    # the same two errors on the held-out rows, which no fit saw (None: no held-out rows)
    heldout_error_none: float | None = None
    heldout_error: float | None = None
    # a recovery's level-2 output error relative to the dense model's, before and after it, on the rows it
    # fitted and on the held-out rows (None: no recovery, or no held-out rows)
    recovery_error_before: float | None = None
    recovery_error_after: float | None = None
    heldout_recovery_error_before: float | None = None
    heldout_recovery_error_after: float | None = None


@dataclass
class ParameterCounts:
    """Parameters before and after: all of them, and those of the prunable projections."""

    total_before: int
    total_after: int
    prunable_before: int
    prunable_after: int

    @property
    def ratio_prunable(self) -> float:
        return 1 - self.prunable_after / self.prunable_before

    @property
    def ratio_total(self) -> float:
        return 1 - self.total_after / self.total_before


@dataclass
class CalibrationInfo:
    num_samples: int
    seq_len: int
    seed: int
    used: bool  # False for data-free methods, which run no calibration
    source: str | None = None  # 'wiki-embedded', a file, 'self-generated', ... (None: token ids were given)
    recovery_samples: int = 0  # the recovery's own rows (0: none, or it fitted on the calibration rows)
    heldout_samples: int = 0  # rows no fit saw, on which errors were measured too


@dataclass
class Timings:
    total_seconds: float
    capture_seconds: float
    stats_seconds: float
    solve_seconds: float


@dataclass
class RunRecord:
    """Everything a pruning run reports; ``to_json``/``read`` are the only (de)serialisation."""

    config: PruneConfig
    model_type: str
    architecture: str
    parameters: ParameterCounts
    layers: list[LayerRecord]
    shapes: list[LayerShape]
    calibration: CalibrationInfo
    timings: Timings
    versions: dict[str, str]
    input_model: str | None = None
    base_model: str | None = None  # the input's Hugging Face Hub id, where known (the bundled models)
    plain_transformers: bool | None = None  # set when saved: loads with plain from_pretrained
    saved_architecture: str | None = None  # set when saved: the class config.json names (a stock rewrite's)
    intercepts: dict[str, bool] = field(default_factory=dict)  # per pruned kind: may reconstruction add a bias
    # per pruned block: the dense input-output cosine that ``influence`` allocation shared the budget by
    block_similarities: dict[int, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["parameters"] |= {"ratio_prunable": self.parameters.ratio_prunable,
                               "ratio_total": self.parameters.ratio_total}
        return data

    def write(self, folder: Path) -> Path:
        path = folder / RECORD_FILE
        path.write_text(json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        counts = {k: v for k, v in data["parameters"].items() if not k.startswith("ratio_")}
        return cls(
            config=_build(PruneConfig, {"multiple_of": 1, **data["config"]}),  # older runs rounded no width
            model_type=data["model_type"],
            architecture=data["architecture"],
            parameters=ParameterCounts(**counts),
            layers=[_build(LayerRecord, layer) for layer in data["layers"]],
            shapes=[_build(LayerShape, shape) for shape in data["shapes"]],
            calibration=_build(CalibrationInfo, data["calibration"]),
            timings=_build(Timings, data["timings"]),
            versions=dict(data.get("versions", {})),
            input_model=data.get("input_model"),
            base_model=data.get("base_model"),
            plain_transformers=data.get("plain_transformers"),
            saved_architecture=data.get("saved_architecture"),
            intercepts=dict(data.get("intercepts", {})),
            block_similarities={int(block): float(value)
                                for block, value in data.get("block_similarities", {}).items()},
        )

    @classmethod
    def read(cls, folder: str | Path) -> RunRecord:
        """The record of a checkpoint folder; an unreadable one is an error naming the file and the fix."""
        path = Path(folder) / RECORD_FILE
        try:
            return cls.from_json(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} not found: {folder} is not a checkpoint written by reprune") from None
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a valid reprune record ({type(err).__name__}: {err}); "
                             "it may be truncated: prune the model again to rewrite it") from None


def _build(cls: type, data: dict[str, Any]) -> Any:
    """A dataclass from a JSON object, ignoring keys it does not know (records written by other versions)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})
