"""The typed run config, TOML presets, ``--set a.b=value`` overrides and fingerprints.

Defaults live in exactly one place: these dataclass fields, or the component config dataclasses for component
options. Presets (``benchkit/configs/*.toml``) override only what they need; the CLI never restates defaults.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

from benchkit.core.errors import ConfigError, suggest
from benchkit.core.identity import UNLESS_DEFAULT, identity_fields
from benchkit.core.options import build_dataclass, field_types, parse_text, toml_loads
from benchkit.core.precision import Precision, check_precision
from benchkit.core.sizes import apply_sizes

Device = Literal["auto", "cpu", "cuda", "mps"]


@dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    """A registry name plus the options passed to ``create``."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Which dataset, where it lives and how many images to use."""

    name: str = "shapes"
    root: str | None = None
    image_size: int = 32
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"data.image_size must be >= 8, got {self.image_size}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """One training stage: AdamW, warm-up then cosine/constant, clipping, EMA, checkpoints."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 50
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    checkpoint_every: int = 250
    log_every: int = 10
    # random horizontal flips: a tokenizer sees mirrored images; a generator draws each image's tokens from the
    # cache of the image or of its mirror (a second cache, encoded once), half the time each
    hflip: bool = False
    # TensorBoard events (losses, lr, images/s, a grid at each checkpoint) in <run dir>/tensorboard; a way of
    # watching, not part of the run's identity, so the fingerprint leaves it out (see ``fingerprint``)
    tensorboard: bool = field(default=False, metadata={"identity": False})
    # speed switches (benchkit.core.precision, benchkit.training.trainer): autocast precision, torch.compile,
    # recomputing the transformer blocks' activations in the backward pass instead of storing them
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = field(default=False, metadata={"identity": False})
    grad_checkpoint: bool = field(default=False, metadata={"identity": False})
    # tokenizer stage only: weight of LPIPS(images, reconstruction) in the loss (benchkit.metrics.perceptual), 0 = off;
    # a non-zero weight needs the lpips package and torchvision's AlexNet weights on disk (see eval.lpips_weights)
    lpips_weight: float = field(default=0.0, metadata=UNLESS_DEFAULT)
    # generator training only. Equal compute (benchkit.training.compute.apply_budget): a total of training FLOPs or of
    # images seen that sets ``steps`` per generator (0: off, ``steps`` drives); the derived ``steps`` is in the
    # identity.
    budget_flops: float = field(default=0.0, metadata={"identity": False})
    budget_images: int = field(default=0, metadata={"identity": False})
    # convergence (benchkit.training.convergence): FID/KID of ``convergence_samples`` samples at this many points, each
    # at twice the previous one's steps and the last at ``steps``; watching only, the weights are the same without
    convergence_points: int = field(default=0, metadata={"identity": False})
    convergence_samples: int = field(default=200, metadata={"identity": False})
    # training seeds (benchkit.results.seeds): ``seeds`` complete trainings per model, at seed, seed + 1, ...; each
    # an ordinary run, ``seed_index`` saying which. With ``tokenizer_per_seed`` every seed retrains the tokenizer
    # too (it is part of the compared method), else all seeds share the first seed's tokenizer. Generators only.
    seeds: int = field(default=1, metadata={"identity": False})
    seed_index: int = field(default=0, metadata={"identity": False})
    tokenizer_per_seed: bool = field(default=True, metadata={"identity": False})

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")
        if not self.lpips_weight >= 0:
            raise ValueError(f"lpips_weight must be >= 0 (0 = off), got {self.lpips_weight}")
        if self.budget_flops < 0 or self.budget_images < 0:
            raise ValueError("budget_flops and budget_images must be >= 0 (0: off)")
        if self.budget_flops and self.budget_images:
            raise ValueError("set one training budget, budget_flops or budget_images, not both")
        if self.seeds < 1 or self.seed_index < 0:
            raise ValueError(f"seeds must be >= 1 and seed_index >= 0, got {self.seeds} and {self.seed_index}")
        if self.convergence_points < 0 or self.convergence_samples < 5:
            raise ValueError(
                f"convergence_points must be >= 0 and convergence_samples >= 5, got "
                f"{self.convergence_points} and {self.convergence_samples}"
            )

    def identity(self) -> dict[str, Any]:
        """The fields that decide the trained weights, for fingerprints: the fields marked ``identity: False`` (the
        speed switches compile and grad_checkpoint, TensorBoard logging) are left out, and so is the default precision,
        so runs trained before these switches existed keep their fingerprints. Checkpointing gives the same weights up
        to float noise; compiled
        kernels also draw their random numbers (label drop, masks) from other streams, so a compiled run is a
        different draw of the same training, not a bit-identical one."""
        out = {f.name: getattr(self, f.name) for f in identity_fields(self, self)}
        if out["precision"] == "fp32":
            del out["precision"]
        return out


CfgSchedule = Literal["constant", "linear"]
CFG_SCHEDULES: tuple[str, ...] = get_args(CfgSchedule)
"""The classifier-free guidance schedules (their formulas: ``benchkit.nn.schedules.cfg_at``)."""
TuneMetric = Literal["kid", "fid"]
TUNE_METRICS: tuple[str, ...] = get_args(TuneMetric)  # what eval.tune scores candidates by (benchkit.evaluation.tuning)


@dataclass(frozen=True, kw_only=True)
class SampleSettings:
    """One sampling setting, with the same argument names everywhere; every sampling value is checked here.

    ``steps`` None: the generator's own default; ``diffusion_steps`` None: the Diffusion Loss head's
    ``sampling_steps`` (other heads ignore it); ``temperature`` 0: greedy for the cross-entropy head, no per-step
    noise for the Diffusion Loss head.
    """

    steps: int | None = None
    cfg: float = 1.0
    cfg_schedule: CfgSchedule = "constant"
    temperature: float = 1.0
    diffusion_steps: int | None = None
    # autocast while generating (benchkit.core.precision); in fingerprints and labels only when not fp32
    precision: Precision = field(default="fp32", metadata=UNLESS_DEFAULT)

    def __post_init__(self) -> None:
        for name in ("steps", "diffusion_steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{name} must be an integer or None, got {value!r}")
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if not self.cfg >= 0:
            raise ConfigError(f"cfg must be >= 0, got {self.cfg} (1 = no guidance)")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ConfigError(
                f"unknown cfg_schedule {self.cfg_schedule!r}; valid: {', '.join(CFG_SCHEDULES)}"
                + suggest(str(self.cfg_schedule), CFG_SCHEDULES)
            )
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")
        check_precision(self.precision, "sample precision")

    def label(self) -> str:
        """Short text for logs and plot legends."""
        return ", ".join(
            f"{f.name}={getattr(self, f.name)}"
            for f in identity_fields(self, SampleSettings)
            if getattr(self, f.name) is not None
        )

    def settings(self) -> SampleSettings:
        """Only the sampling setting (drops the fields a subclass adds)."""
        return SampleSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(SampleSettings)})

    def replace(self, **changes: Any) -> SampleSettings:
        """The setting with ``changes`` (sweep entries), checked; unknown keys list the valid ones."""
        valid = [f.name for f in dataclasses.fields(SampleSettings)]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown sampling setting {unknown[0]!r}; valid: {', '.join(valid)}" + suggest(unknown[0], valid)
            )
        return dataclasses.replace(self.settings(), **changes)


@dataclass(frozen=True, kw_only=True)
class SampleConfig(SampleSettings):
    """The ``[sample]`` table: the base sampling setting of ``benchkit sample`` and evaluation, and batch sizes."""

    batch_size: int = 250  # samples per generate call
    grid_per_class: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grid_per_class < 1:
            raise ValueError(f"grid_per_class must be >= 1, got {self.grid_per_class}")


EvalProtocol = Literal["benchkit", "adm"]  # which published numbers the quality columns match: docs/evaluation.md
FD_DINOV2_ARCHS = ("dinov2-vit-s-14", "dinov2-vit-b-14", "dinov2-vit-l-14")  # = benchkit.metrics.dinov2.DINOV2_ARCHS


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Quality and cost measurement; ``sweep`` lists extra sampling settings, one row each (not in run identity)."""

    features: str = "auto"
    inception_weights: str | None = None
    # torchvision's AlexNet checkpoint (alexnet-owt-7be5be79.pth) for the LPIPS tokenizer metric and loss; default:
    # torch's hub cache (benchkit.metrics.perceptual); never downloaded, the metric is left out without it
    lpips_weights: str | None = None
    num_samples: int = 1000
    num_reference: int = 5000
    prc: bool = True
    sweep: list[dict[str, Any]] = field(default_factory=list)
    cost_batch_size: int = 64
    cost_repeats: int = 3
    seed_spread: bool = True  # sample the base setting twice (seed, seed+1) and record the FID difference
    # per-row tuning (benchkit.evaluation.tuning): settings tried over the base on a validation split; the best becomes
    # the base
    tune: list[dict[str, Any]] = field(default_factory=list)
    tune_samples: int = 250
    # validation images the tuning's samples are scored against; None: as many as tune_samples
    tune_reference: int | None = None
    tune_metric: TuneMetric = "kid"  # KID is unbiased at small sample counts
    # an .npz with ``mu`` and ``sigma`` of the reference images' features (ADM reference batches, clean-fid custom
    # statistics, or ``benchkit.metrics.refstats``): FID is computed against it instead of held-out images
    reference_stats: str | None = None
    # "adm": guided-diffusion's evaluator (FID, sFID, IS, precision, recall) against the ADM .npz reference_batch
    protocol: EvalProtocol = "benchkit"
    reference_batch: str | None = None
    cmmd: bool = False  # extra columns: CMMD (CLIP ViT-L/14@336) and FD-DINOv2 (fd_dinov2: a DINOv2 arch name)
    fd_dinov2: str | None = None
    dinov2_weights: str | None = None  # release weights files; default: $BENCHKIT_WEIGHTS_DIR, torch.hub's cache
    clip_weights: str | None = None

    def __post_init__(self) -> None:
        for key, valid in (("protocol", get_args(EvalProtocol)), ("fd_dinov2", FD_DINOV2_ARCHS)):
            value = getattr(self, key)
            if value is not None and value not in valid:
                raise ConfigError(f"unknown eval.{key} {value!r}; valid: {', '.join(valid)}" + suggest(value, valid))
        adm = 'eval.protocol = "adm"'
        if self.protocol == "adm" and not self.reference_batch:
            raise ConfigError(f"{adm} needs eval.reference_batch, an ADM .npz (e.g. VIRTUAL_imagenet256_labeled.npz)")
        if self.protocol == "adm" and self.features == "auto":
            object.__setattr__(self, "features", "inception")  # "auto" under adm means ADM's network
        if self.protocol == "adm" and self.features != "inception":
            raise ConfigError(f'{adm} needs eval.features = "inception" (ADM\'s network), got {self.features!r}')
        if self.protocol == "adm" and self.reference_stats:
            raise ConfigError(f"{adm} reads its statistics from eval.reference_batch; unset eval.reference_stats")
        if self.reference_batch and self.protocol != "adm":
            raise ConfigError(f"eval.reference_batch is read by {adm} only; set eval.protocol too")
        if self.num_samples < 2 or self.num_reference < 2:
            raise ValueError("num_samples and num_reference must be >= 2")
        if self.tune_samples < 2:
            raise ValueError(f"tune_samples must be >= 2, got {self.tune_samples}")
        if self.tune_reference is not None and self.tune_reference < 2:
            raise ValueError(
                f"tune_reference must be >= 2 (or unset: as many as tune_samples), got {self.tune_reference}"
            )
        if self.tune_metric not in TUNE_METRICS:
            raise ValueError(f"unknown tune_metric {self.tune_metric!r}; valid: {', '.join(TUNE_METRICS)}")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything that defines one run: data, the three components, two training stages, sampling, eval."""

    name: str = "default"
    seed: int = 0
    device: Device = "auto"
    threads: int | None = None  # torch intra-op threads; None: benchkit.core.threads.resolve_threads decides
    out_dir: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: ComponentSpec = field(default_factory=lambda: ComponentSpec(name="vq"))
    tokenizer_train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=800, lr=2e-3))
    generator: ComponentSpec = field(default_factory=lambda: ComponentSpec(name="ar"))
    head: ComponentSpec = field(default_factory=lambda: ComponentSpec(name="ce"))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(ema_decay=0.99))
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 (or unset for the default), got {self.threads}")
        if self.train.lpips_weight:
            raise ValueError("train.lpips_weight applies to tokenizer training only; set tokenizer_train.lpips_weight")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict."""
        return dataclasses.asdict(self)


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a (nested) config dataclass from plain values, refusing unknown keys with the valid ones."""
    types_ = field_types(cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        tp = types_.get(key)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
            out[key] = from_dict(tp, value, f"{where}.{key}" if where else key)
        else:
            out[key] = value
    return build_dataclass(cls, out, where or "config")


def preset_names() -> list[str]:
    """Names of the TOML presets shipped inside the package."""
    return sorted(p.name[:-5] for p in resources.files("benchkit.configs").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """The raw dict of a shipped preset; unknown names list the valid ones."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid: {', '.join(names)}" + suggest(name, names))
    return toml_loads(resources.files("benchkit.configs").joinpath(f"{name}.toml").read_text())


def load_file(path: str | Path) -> dict[str, Any]:
    """The raw dict of a TOML or JSON config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    text = p.read_text()
    try:
        return json.loads(text) if p.suffix == ".json" else toml_loads(text)
    except ValueError as e:
        raise ConfigError(f"cannot parse config file {str(p)!r}: {e}") from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=value`` to a raw config dict in place, type-checked against RunConfig."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value (e.g. train.lr=3e-4)")
    path, text = assignment.split("=", 1)
    keys = path.strip().split(".")
    cls: Any = RunConfig
    node = raw
    for i, key in enumerate(keys):
        where = ".".join(keys[: i + 1])
        if cls is None:  # inside a free-form options dict: value checked later by the component config
            if i == len(keys) - 1:
                node[key] = parse_text(text, Any, where)
            else:
                node = node.setdefault(key, {})
            continue
        types_ = field_types(cls)
        if key not in types_:
            raise ConfigError(f"unknown config key {where!r}; valid: {', '.join(types_)}" + suggest(key, types_))
        tp = types_[key]
        last = i == len(keys) - 1
        if last:
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                raise ConfigError(f"{where!r} is a section; set one of its keys: {', '.join(field_types(tp))}")
            node[key] = parse_text(text, tp, where)
        else:
            if dataclasses.is_dataclass(tp):
                cls = tp
            elif tp == dict[str, Any]:
                cls = None
            else:
                raise ConfigError(f"{'.'.join(keys[: i + 1])!r} is a value, not a section")
            node = node.setdefault(key, {})


def resolve(
    preset: str | None = "tiny", config_file: str | Path | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Preset, then file, then ``--set`` overrides, into a checked RunConfig."""
    raw: dict[str, Any] = load_preset(preset) if preset else {}
    if config_file:
        _deep_update(raw, load_file(config_file))
    for o in overrides or []:
        apply_override(raw, o)
    apply_sizes(raw)  # a preset's per-name option tables ([generator.sizes] ...) for the chosen names
    return from_dict(RunConfig, raw, "")


def _deep_update(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "options":
            _deep_update(base[k], v)
        else:
            base[k] = v
