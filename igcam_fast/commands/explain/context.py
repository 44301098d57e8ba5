"""The run context: everything one run of ``explain`` decided before its first batch, in one object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from igcam_fast import results as rio

from .discovery import DataSet, discover
from .model_setup import build_engine, check_layer, load_spec, probe
from .options import ExplainError
from .settings import fingerprint_of, state_hash
from .targets import TargetPlan, plan_targets, read_class_list
from .world import World


@dataclass
class RunContext:
    """settings: what changes a map (hashed into ``fingerprint``); info: what does not (paths, world)."""

    args: object
    world: World
    out: Path
    data: DataSet
    spec: object  # igcam_fast.models.ModelSpec, model on world.device
    size: int
    engine: object  # igcam_fast.core.engine.CamEngine
    class_names: list[str] | None
    targets: TargetPlan
    settings: dict
    fingerprint: str
    info: dict

    @property
    def shard_size(self) -> int:
        return self.args.shard_size

    @property
    def n_shards(self) -> int:
        return -(-len(self.data) // self.shard_size)

    def shard_range(self, k: int) -> tuple[int, int]:
        lo = k * self.shard_size
        return lo, min(len(self.data), lo + self.shard_size)

    def stamp(self, k: int) -> rio.ShardStamp:
        return rio.ShardStamp(self.fingerprint, self.data.contents_hash(*self.shard_range(k)))

    def expectation(self, k: int) -> rio.ShardExpectation:
        lo, hi = self.shard_range(k)
        return rio.ShardExpectation(k, lo, self.data.ids[lo:hi], self.stamp(k))

    def header(self) -> dict:
        """What config.json and manifest.json record about the run."""
        return dict(fingerprint=self.fingerprint, settings=self.settings, info=self.info,
                    class_names=self.class_names)


def build_context(args, world: World) -> RunContext:
    """Load the model, list the data set, plan the targets, hash the settings (every rank alike)."""
    out = Path(args.out)
    spec = load_spec(args)
    size = args.input_size or spec.input_size
    data = discover(args.data, args.format, args.split, exclude=[out])
    if len(data) == 0:
        raise ExplainError(f"--data {args.data}: no images found ({data.kind} layout)")
    class_names = read_class_list(args.classes, spec.class_names, data)
    class_index = {n: k for k, n in enumerate(class_names)} if class_names else None
    plan = plan_targets(args.targets, data, class_index)
    num_classes, shapes = probe(spec.model, size)
    check_layer(spec.layer, shapes, dict(spec.model.named_modules()))
    _check_known_labels(plan, data, num_classes)
    engine = build_engine(spec, args)
    settings = dict(
        model=args.model, num_classes=num_classes, state_sha256=state_hash(spec.model), layer=engine.layer_name,
        input_size=size, mean=list(map(float, spec.mean)), std=list(map(float, spec.std)),
        method=engine.method, rule=engine.rule, steps=engine.steps, subtract_baseline=engine.subtract_baseline,
        baseline=args.baseline, dtype=args.dtype, resolution=args.resolution, map_dtype=args.map_dtype,
        normalize=bool(args.normalize), targets=plan.describe(args.targets), label_file_sha256=plan.label_file_sha256,
        class_names_sha256=(fingerprint_of(class_names) if class_names else None),
        decode="draft" if args.fast_decode else "full", data_kind=data.kind, data_split=data.split,
        data_count=len(data), data_ids_sha256=data.fingerprint(), shard_size=args.shard_size)
    if engine.config.tol is not None:  # only then: the settings (and fingerprints) of fixed-rule runs stay as they were
        settings.update(rule="patterson", steps=None, tol=engine.config.tol, max_steps=engine.config.max_steps)
    info = dict(data=str(Path(args.data).resolve()), weights=args.weights, targets_arg=args.targets,
                world_size=world.size, device=str(world.device), max_pixels=args.max_pixels)
    spec.model.to(world.device)
    return RunContext(args, world, out, data, spec, size, engine, class_names, plan, settings,
                      fingerprint_of(settings), info)


def _check_known_labels(plan: TargetPlan, data: DataSet, num_classes: int) -> None:
    """Labels known up front must name classes of the model (VOC ones are checked per image)."""
    for i, labels in enumerate(plan.labels_of or ()):
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise ExplainError(f"image {data.ids[i]}: target class {bad[0]} is out of range for a model with "
                               f"{num_classes} outputs")
