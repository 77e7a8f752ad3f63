"""What a run asks for (:class:`PruneConfig`, plain strings and numbers, stored in every record) and
what it resolves to (:class:`Plan`: the registry entries, the statistics each module kind needs and the
flags that shape the pipeline). Names are looked up here, once; nothing downstream does it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from reprune.adapters import Depth2Module, ModuleKind
from reprune.allocation import AllocationMode, GqaMode, check_ratio
from reprune.criteria import CRITERIA, Criterion
from reprune.reconstruction import RECONSTRUCTIONS, Reconstruction
from reprune.recovery import RECOVERIES, Recovery
from reprune.stats import TWO_PATH_STATISTICS

Targets = Literal["both", "attention", "ffn"]
Intercept = bool | Literal["auto"]
INTERCEPTS: dict[str, Intercept] = {"auto": "auto", "on": True, "off": False}  # option names -> PruneConfig.intercept
ScoreOn = Literal["pruned", "dense"]
SCORE_ON: tuple[ScoreOn, ...] = ("pruned", "dense")
TARGET_KINDS: dict[str, tuple[ModuleKind, ...]] = {"both": ("attention", "ffn"), "attention": ("attention",),
                                                   "ffn": ("ffn",)}


@dataclass
class PruneConfig:
    """Every setting of a pruning run; stored verbatim in the record and the checkpoint."""

    ratio: float = 0.3
    criterion: str = "obs-flap"  # the best measured (benchmarks/README.md): heads by obs, neurons by flap
    attention_criterion: str | None = None  # overrides ``criterion`` for heads
    ffn_criterion: str | None = None  # overrides ``criterion`` for neurons
    reconstruction: str = "liar"  # the best measured repair (benchmarks/README.md); "bias" is FLAP's
    recovery: str = "none"
    allocation: AllocationMode = "ffn-first"  # the best measured split (benchmarks/README.md): neurons before heads
    targets: Targets = "both"
    gqa_mode: GqaMode = "query"
    # where criteria read their statistics: "pruned": each block on the path already pruned before it;
    # "dense": the dense model, all blocks scored once before any is pruned, as FLAP does
    score_on: ScoreOn = "pruned"
    multiple_of: int = 8  # kept widths in multiples of this many inner channels (1: exact counts), for fast matmuls
    keep_first: int = 0
    keep_last: int = 0
    alpha: float = 1e-2  # relative ridge of LIAR / dense-target
    # may a reconstruction give a bias-less level-2 layer a bias (its intercept)? "auto": only where the saved
    # architecture states that bias without remote code (see reprune.stock); a layer with a bias always fits it
    intercept: Intercept = "auto"
    recovery_alpha: float = 1e-4  # relative ridge of GOA's greedy recovery
    num_samples: int = 128
    seq_len: int = 128
    # samples of seq_len tokens a recovery fits on, drawn apart from the scoring rows (GOA §4.1's "additional
    # 1024 examples"); 0: recover on the scoring rows. Unused without a recovery.
    recovery_samples: int = 1024
    # samples no fit sees, on which every layer's error is measured too (overfitting shows as a gap); 0: none
    heldout_samples: int = 16
    batch_size: int = 8
    seed: int = 0
    device: str | None = None
    criterion_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"tau": 0.1} for head-similarity
    clip_keep: bool = False  # presets: shrink keep_first/keep_last so that a small model keeps a block to prune
    shortcuts: bool = True  # propagate pre-norm blocks from their residual tails (False: run blocks whole, to check)

    def criterion_for(self, kind: ModuleKind) -> str:
        override = self.attention_criterion if kind == "attention" else self.ffn_criterion
        return override or self.criterion

    def fitted(self, num_blocks: int) -> PruneConfig:
        """This config for a model of ``num_blocks`` blocks: with ``clip_keep``, keep_first/keep_last are
        reduced (keep_first first) until at least one block is pruned."""
        if not self.clip_keep:
            return self
        keep_last = min(self.keep_last, num_blocks - 1)
        keep_first = min(self.keep_first, num_blocks - 1 - keep_last)
        return replace(self, keep_first=keep_first, keep_last=keep_last)

    def resolve(self, num_blocks: int) -> Plan:
        """Check every setting against a model of ``num_blocks`` blocks and look every name up, once."""
        config = self.fitted(num_blocks)
        check_ratio(config.ratio)
        if config.keep_first < 0 or config.keep_last < 0 or config.keep_first + config.keep_last >= num_blocks:
            raise ValueError(f"keep_first={config.keep_first} and keep_last={config.keep_last} leave no block to "
                             f"prune out of {num_blocks}")
        if not any(type(config.intercept) is type(setting) and config.intercept == setting
                   for setting in INTERCEPTS.values()):  # by type too: 1 == True, but 1 is not a setting
            raise ValueError(f"intercept must be True, False or 'auto', not {config.intercept!r}")
        if config.score_on not in SCORE_ON:
            raise ValueError(f"score_on must be one of {', '.join(map(repr, SCORE_ON))}, not {config.score_on!r}")
        if config.targets not in TARGET_KINDS:
            raise ValueError(f"targets must be 'both', 'attention' or 'ffn', not {config.targets!r}")
        kinds = TARGET_KINDS[config.targets]
        criteria = {kind: CRITERIA.get(config.criterion_for(kind)).for_kind(kind) for kind in ("attention", "ffn")}
        for kind in kinds:
            if kind not in criteria[kind].kinds:
                option = "attention_criterion" if kind == "attention" else "ffn_criterion"
                raise ValueError(
                    f"criterion {criteria[kind].name!r} cannot score {kind} units (only "
                    f"{'/'.join(sorted(criteria[kind].kinds))}); set {option} to another criterion "
                    "(e.g. 'second-moment') or change targets"
                )
        intercepts = {} if config.intercept == "auto" else {kind: bool(config.intercept) for kind in kinds}
        return Plan(config, num_blocks, kinds, {kind: criteria[kind] for kind in kinds},
                    RECONSTRUCTIONS.get(config.reconstruction), RECOVERIES.get(config.recovery), intercepts)


@dataclass(frozen=True)
class Plan:
    """A checked config with its registry entries resolved, and everything derived from them."""

    config: PruneConfig  # fitted to the model (keep_first/keep_last clipped where asked)
    num_blocks: int
    kinds: tuple[ModuleKind, ...]  # the module kinds this run prunes
    criteria: dict[ModuleKind, Criterion]  # per pruned kind
    reconstruction: Reconstruction
    recovery: Recovery
    # per pruned kind: may reconstruction add a level-2 bias; empty until "auto" is resolved against the model
    intercepts: dict[ModuleKind, bool] = field(default_factory=dict)

    def fits_intercept(self, module: Depth2Module) -> bool:
        """Whether reconstruction fits a constant term for ``module``'s level 2: always where it has a bias,
        else as :attr:`intercepts` says."""
        if module.level2.bias() is not None:
            return True
        if module.kind not in self.intercepts:
            raise RuntimeError(f"{module.name}: intercept={self.config.intercept!r} was not resolved against the "
                               "model; resolve it with reprune.stock.resolve_intercepts(plan, model)")
        return self.intercepts[module.kind]

    @property
    def eligible(self) -> set[tuple[int, ModuleKind]]:
        """(block, kind) of every module this run may prune."""
        config = self.config
        return {(i, k) for i in range(config.keep_first, self.num_blocks - config.keep_last) for k in self.kinds}

    def needs(self, kind: ModuleKind) -> frozenset[str]:
        """Statistics the criterion and the reconstruction of a ``kind`` module read (a recovery gathers its own)."""
        return self.criteria[kind].needs | self.reconstruction.needs

    @property
    def comparable_scores(self) -> bool:
        """Whether every pruned kind's criterion scores compare across layers as they are (global allocation
        then ranks them unstandardised; one criterion that does not makes all be standardised per layer)."""
        return all(self.criteria[kind].comparable for kind in self.kinds)

    @property
    def scoring_two_path(self) -> bool:
        """Whether the criteria or the reconstruction read the dense model's activations on the scoring rows."""
        return any(self.needs(kind) & TWO_PATH_STATISTICS for kind in self.kinds)

    @property
    def data_free(self) -> bool:
        """True when nothing reads calibration statistics (e.g. magnitude or random with ``none``, and an
        allocation other than ``influence``): the result cannot depend on the calibration text, so none is run."""
        return (not self.recovery.needs and not any(self.needs(kind) for kind in self.kinds)
                and self.config.allocation != "influence")

    @property
    def criteria_read_data(self) -> bool:
        """Whether the criteria read calibration statistics (random and magnitude do not)."""
        return any(criterion.needs for criterion in self.criteria.values())

    @property
    def eager_attention(self) -> bool:
        """Attention probabilities are read, which only eager attention returns (with explicit masks)."""
        return any("head_divergence" in self.needs(kind) for kind in self.kinds)

    def always_processed(self, kind: ModuleKind) -> bool:
        """Modules processed even with no units allotted: a recovery that runs everywhere, or a criterion
        that may choose its own count from the options it was given (head-similarity's τ)."""
        return self.recovery.every_module or (self.criteria[kind].count is not None
                                              and bool(self.config.criterion_options))
