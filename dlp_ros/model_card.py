"""The model card of a bundle: what the runtime needs to know about the exported graphs.

A bundle directory holds ``encoder.onnx``, ``background.onnx``, ``dynamics.onnx``,
``decoder.onnx`` and ``model_card.yaml`` (written by ``python -m dlp_training export``)::

    schema_version: 1
    image: {size: S, channels: rgb, range: [0, 1], resize: squash|crop|pad}
    particles: {K: ..., F: ..., Fb: ...}
    dynamics: {history: H, action_dim: A, action_names: [...], dt: seconds}
    tracking: {method: ..., on_threshold: 0.5, claim_radius: ...}
    files:
      encoder.onnx: {inputs: [{name, shape: [B, 3, S, S], dtype: float32}, ...], outputs: [...]}
      ...
    opset: 17
    training: {...}     # where the data came from (free form)
    metrics: {...}      # checkpoint metrics (free form)
    validation: {recon_mse: ..., ...}  # mean per-pixel MSE of decode(encode(x)), [0, 1] units
    code_version: ...
    created: ...

:func:`load_model_card` refuses what this runtime does not understand: an unknown schema
version, a missing or ill-typed field, a missing graph file, a graph whose inputs and outputs
are not the ones the card (and the sizes in it) say. Every error is a
:class:`~dlp_ros.errors.ModelCardError` naming the file and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dlp_ros.compositing import MODES as COMPOSITING_MODES
from dlp_ros.config_schema import checked, from_mapping
from dlp_ros.errors import ConfigError, ModelCardError
from dlp_ros.input_view import DEFAULT_RESIZE, RESIZE_MODES
from dlp_ros.plain_values import plain

SCHEMA_VERSION = 1
CARD_FILE = 'model_card.yaml'
ENCODER, BACKGROUND, DYNAMICS, DECODER = (
    'encoder.onnx',
    'background.onnx',
    'dynamics.onnx',
    'decoder.onnx',
)
GRAPH_FILES = (ENCODER, BACKGROUND, DYNAMICS, DECODER)
BATCH = 'B'  # name of the dynamic batch axis
PARTICLE_FIELDS = ('mu', 'logvar', 'scale', 'depth', 'transparency', 'features', 'bg_features')
ORT_DTYPES = {'tensor(float)': 'float32', 'tensor(int64)': 'int64', 'tensor(bool)': 'bool'}

Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (``'B'`` = the dynamic batch axis), dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: str = 'float32'


@dataclass(frozen=True)
class GraphSpec:
    """Inputs and outputs of one ONNX graph, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)


@dataclass(frozen=True)
class ImageSpec:
    """Model input: S x S RGB in [0, 1], made from the camera frame by ``resize`` (squash, crop
    or pad: :mod:`dlp_ros.input_view`); a card without it was made by squash."""

    size: int = checked(ge=1)
    channels: str = checked('rgb', choices=('rgb',), say="'rgb' (what this runtime feeds)")
    range: tuple[float, float] = checked(
        (0.0, 1.0), choices=((0.0, 1.0),), say='[0, 1] (what this runtime feeds)'
    )
    resize: str = checked(  # dlp_ros.input_view
        DEFAULT_RESIZE, choices=RESIZE_MODES, say=f'one of {", ".join(RESIZE_MODES)}'
    )


@dataclass(frozen=True)
class ParticleSpec:
    """K foreground particles with F appearance features, Fb background features."""

    K: int = checked(ge=1)
    F: int = checked(ge=1)
    Fb: int = checked(ge=1)


@dataclass(frozen=True)
class DynamicsSpec:
    """History H frames per step, A action entries per frame (their names), dt seconds/step."""

    history: int = checked(ge=1)
    action_dim: int = checked(ge=0)
    action_names: tuple[str, ...]
    dt: float = checked(gt=0, finite=True)

    @property
    def H(self) -> int:  # noqa: N802
        return self.history

    @property
    def A(self) -> int:  # noqa: N802
        return self.action_dim


@dataclass(frozen=True)
class TrackingSpec:
    """Slot assignment of the tracker (:func:`dlp_ros.tracking.assign_slots`)."""

    method: str
    on_threshold: float = checked(finite=True)
    claim_radius: float = checked(gt=0, finite=True)


@dataclass(frozen=True)
class ValidationSpec:
    """``recon_mse``: mean per-pixel MSE of decode(encode(x)) on validation frames ([0, 1]
    units; None when the export had no data set), the reference of the OOD score; ``details``:
    the rest of the section (data set, split, frames, percentiles)."""

    recon_mse: float | None = checked(finite=True)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PredictionSpec:
    """How predicted frames are drawn (``dlp_ros.compositing``): 'decoded' redraws them from the
    particles alone; 'residual', 'gated', 'warped' and 'warped_gated' keep the observed frame
    where nothing moves. Cards written before this field existed mean 'decoded'."""

    compositing: str = checked('decoded', choices=COMPOSITING_MODES)


@dataclass(frozen=True)
class ModelCard:
    """A parsed ``model_card.yaml``; ``directory`` is where it was read from (None if built)."""

    image: ImageSpec
    particles: ParticleSpec
    dynamics: DynamicsSpec
    tracking: TrackingSpec
    files: dict[str, GraphSpec]
    opset: int = checked(ge=1)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    validation: ValidationSpec = field(default_factory=lambda: ValidationSpec(None))
    prediction: PredictionSpec = field(default_factory=PredictionSpec)
    code_version: str = ''
    created: str = ''
    schema_version: int = SCHEMA_VERSION
    directory: Path | None = field(default=None, compare=False)

    def path(self, name: str) -> Path:
        """Path of a bundle file (e.g. ``encoder.onnx``)."""
        if self.directory is None:
            raise ModelCardError(f'this model card was not read from a bundle; no {name}')
        return self.directory / name

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready mapping, the inverse of :func:`parse_model_card`."""
        d = self.dynamics
        return {
            'schema_version': self.schema_version,
            'image': {
                'size': self.image.size,
                'channels': self.image.channels,
                'range': [float(v) for v in self.image.range],
                'resize': self.image.resize,
            },
            'particles': {'K': self.particles.K, 'F': self.particles.F, 'Fb': self.particles.Fb},
            'dynamics': {
                'history': d.history,
                'action_dim': d.action_dim,
                'action_names': list(d.action_names),
                'dt': d.dt,
            },
            'tracking': {
                'method': self.tracking.method,
                'on_threshold': self.tracking.on_threshold,
                'claim_radius': self.tracking.claim_radius,
            },
            'files': {
                name: {
                    'inputs': [_tensor_dict(t) for t in g.inputs],
                    'outputs': [_tensor_dict(t) for t in g.outputs],
                }
                for name, g in self.files.items()
            },
            'opset': self.opset,
            'training': plain(self.training),
            'metrics': plain(self.metrics),
            'validation': {
                'recon_mse': self.validation.recon_mse,
                **plain(self.validation.details),
            },
            'code_version': self.code_version,
            'prediction': {'compositing': self.prediction.compositing},
            'created': self.created,
        }


def _fmt(shape: Iterable[Dim]) -> str:
    """[B, 3, 64, 64] (no quotes)."""
    return '[' + ', '.join(str(d) for d in shape) + ']'


def _tensor_dict(t: TensorSpec) -> dict[str, Any]:
    return {'name': t.name, 'shape': list(t.shape), 'dtype': t.dtype}


# ----------------------------------------------------------------------------- expected graphs


def expected_graphs(
    image_size: int, k: int, f: int, fb: int, history: int, action_dim: int
) -> dict[str, GraphSpec]:
    """The inputs and outputs every bundle's graphs have, given the sizes.

    encoder: image (B, 3, S, S), anchors (B, K, 2) -> mu (B, 2K, 2), logvar, scale (B, 2K, 2),
    depth, transparency (B, 2K, 1), features (B, 2K, F); background: image, mu (B, K, 2),
    transparency (B, K, 1) -> bg_features (B, Fb); dynamics: the particle fields (B, H, K, ...)
    (bg_features (B, H, Fb)) [+ actions (B, H, A)] -> next_<field> (B, K, ...); decoder: mu,
    scale, depth, transparency, features (B, K, ...), bg_features (B, Fb) -> image (B, 3, S, S).
    """
    b, s = BATCH, image_size
    per = {'mu': 2, 'logvar': 2, 'scale': 2, 'depth': 1, 'transparency': 1, 'features': f}

    def t(name: str, *shape: Dim) -> TensorSpec:
        return TensorSpec(name, (b, *shape))

    image = t('image', 3, s, s)
    encoder = GraphSpec(
        (image, t('anchors', k, 2)), tuple(t(n, 2 * k, per[n]) for n in per)
    )  # fmt: skip
    background = GraphSpec(
        (image, t('mu', k, 2), t('transparency', k, 1)), (t('bg_features', fb),)
    )
    dyn_in = [t(n, history, k, per[n]) for n in per] + [t('bg_features', history, fb)]
    if action_dim:
        dyn_in.append(t('actions', history, action_dim))
    dyn_out = [t(f'next_{n}', k, per[n]) for n in per] + [t('next_bg_features', fb)]
    dynamics = GraphSpec(tuple(dyn_in), tuple(dyn_out))
    dec_in = [t(n, k, per[n]) for n in ('mu', 'scale', 'depth', 'transparency', 'features')]
    decoder = GraphSpec((*dec_in, t('bg_features', fb)), (image,))
    return {ENCODER: encoder, BACKGROUND: background, DYNAMICS: dynamics, DECODER: decoder}


# ----------------------------------------------------------------------------- parsing


def _fail(file: Path | str, where: str, what: str) -> ModelCardError:
    return ModelCardError(f'{file}: {where}: {what}')


def _schema_version(file: Path | str, data: Mapping) -> Any:
    """The card's schema version, if this runtime reads it."""
    if 'schema_version' not in data:
        raise _fail(file, 'schema_version', f'missing; this dlp_ros reads schema {SCHEMA_VERSION}')
    version = data['schema_version']
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise _fail(
            file,
            'schema_version',
            f'unknown schema version {version!r}; this dlp_ros reads schema {SCHEMA_VERSION} '
            '(re-export the bundle with a matching dlp_ros, or upgrade the runtime)',
        )
    return version


# The card's top-level keys; all but ``created`` are required.
TOP_KEYS = ('schema_version', 'image', 'particles', 'dynamics', 'tracking', 'files', 'opset',
            'training', 'metrics', 'validation', 'code_version', 'prediction',
            'created')  # fmt: skip
OPTIONAL_KEYS = ('prediction', 'created')  # a card without them: the defaults


def _card_mapping(file: Path | str, data: Mapping) -> dict[str, Any]:
    """The card's mapping in :class:`ModelCard`'s shape: required sections present, the
    validation section split into ``recon_mse`` and ``details``, ``created`` as text."""
    unknown = sorted(set(data) - set(TOP_KEYS), key=str)
    if unknown:
        raise _fail(file, str(unknown[0]), f'unknown field (known: {sorted(TOP_KEYS)})')
    for key in (k for k in TOP_KEYS if k not in OPTIONAL_KEYS):
        if key not in data:
            raise _fail(file, key, 'missing (a value is required)')
    out = dict(data)
    va = data['validation']
    if isinstance(va, Mapping):
        out['validation'] = {'details': {k: v for k, v in va.items() if k != 'recon_mse'}}
        if 'recon_mse' in va:
            out['validation']['recon_mse'] = va['recon_mse']
    if 'created' in data:
        out['created'] = str(data['created'])
    return out


def parse_model_card(data: Any, file: Path | str = CARD_FILE) -> ModelCard:
    """Validate a card's mapping (as read from YAML) and build the :class:`ModelCard`.

    Checks the schema version, every field's presence, type and range
    (:func:`dlp_ros.config_schema.from_mapping` on :class:`ModelCard`), the supported
    preprocessing, and that ``files`` lists the four graphs with exactly the inputs and outputs
    the sizes imply (:func:`expected_graphs`). Does not touch the graph files
    (:func:`check_graph_files` does).
    """
    if not isinstance(data, Mapping):
        raise _fail(file, '(top level)', f'must be a mapping, got {type(data).__name__}')
    version = _schema_version(file, data)
    try:
        card = from_mapping(ModelCard, _card_mapping(file, data))
    except ConfigError as exc:
        raise ModelCardError(f'{file}: {exc}') from None
    d = card.dynamics
    if d.action_names and len(d.action_names) != d.action_dim:
        raise _fail(file, 'dynamics.action_names', f'has {len(d.action_names)} names but '
                    f'action_dim is {d.action_dim}')  # fmt: skip
    _check_files(file, card.files)
    p = card.particles
    want = expected_graphs(card.image.size, p.K, p.F, p.Fb, d.history, d.action_dim)
    _check_expected(file, card.files, want)
    object.__setattr__(card, 'schema_version', version)
    return card


def _check_files(file: Path | str, files: dict[str, GraphSpec]) -> None:
    """The four graphs, each tensor's shape made of ints >= 1 and the batch axis."""
    for name in GRAPH_FILES:
        if name not in files:
            raise _fail(file, f'files.{name}', 'missing (a mapping is required)')
    extra = sorted(set(files) - set(GRAPH_FILES))
    if extra:
        raise _fail(file, f'files.{extra[0]}', f'unknown graph (known: {list(GRAPH_FILES)})')
    for name, g in files.items():
        for io in ('inputs', 'outputs'):
            for i, t in enumerate(getattr(g, io)):
                if not all((isinstance(d, int) and d >= 1) or d == BATCH for d in t.shape):
                    raise _fail(file, f'files.{name}.{io}[{i}].shape', f"entries must be ints "
                                f">= 1 or '{BATCH}', got {list(t.shape)!r}")  # fmt: skip


def _check_expected(
    file: Path | str, files: dict[str, GraphSpec], want: dict[str, GraphSpec]
) -> None:
    """The card's graph specs must be exactly those its sizes imply."""
    for name, w in want.items():
        g = files[name]
        for io in ('inputs', 'outputs'):
            got_names = [t.name for t in getattr(g, io)]
            want_names = [t.name for t in getattr(w, io)]
            if got_names != want_names:
                raise _fail(file, f'files.{name}.{io}', f'names are {got_names}, expected '
                            f'{want_names} (from particles and dynamics)')  # fmt: skip
            for i, (a, b) in enumerate(zip(getattr(g, io), getattr(w, io), strict=True)):
                if a.shape != b.shape:
                    raise _fail(file, f'files.{name}.{io}[{i}].shape ({a.name})',
                                f'is {_fmt(a.shape)}, expected {_fmt(b.shape)} from image.size, '
                                'particles and dynamics')  # fmt: skip
                if a.dtype != b.dtype:
                    raise _fail(file, f'files.{name}.{io}[{i}].dtype ({a.name})',
                                f'is {a.dtype!r}, expected {b.dtype!r}')  # fmt: skip


# ----------------------------------------------------------------------------- graph files


def check_graph_io(file: Path | str, spec: GraphSpec, inputs: list, outputs: list) -> None:
    """Compare a graph's actual inputs/outputs (onnxruntime ``NodeArg`` lists of a session,
    ``session.get_inputs()`` / ``get_outputs()``) with the card's spec.

    A dimension the card gives as an int must be that int in the graph (a symbolic graph
    dimension other than the batch cannot be checked and is accepted); the card's ``'B'``
    must be a symbolic (dynamic) dimension.
    """
    for io, spec_list, args in (
        ('inputs', spec.inputs, inputs),
        ('outputs', spec.outputs, outputs),
    ):
        names = [a.name for a in args]
        if names != [t.name for t in spec_list]:
            raise ModelCardError(f'{file}: {io}: graph has {names}, the model card says '
                                 f'{[t.name for t in spec_list]}')  # fmt: skip
        for t, a in zip(spec_list, args, strict=True):
            shape = list(a.shape)
            dtype = ORT_DTYPES.get(a.type, a.type)
            if dtype != t.dtype:
                raise ModelCardError(f'{file}: {io}.{t.name}.dtype: graph has {dtype}, the model '
                                     f'card says {t.dtype}')  # fmt: skip
            bad = len(shape) != len(t.shape) or any(
                (isinstance(c, int) and isinstance(g, int) and c != g)
                or (c == BATCH and isinstance(g, int))
                for c, g in zip(t.shape, shape, strict=False)
            )
            if bad:
                raise ModelCardError(f'{file}: {io}.{t.name}.shape: graph has {_fmt(shape)}, the '
                                     f'model card says {_fmt(t.shape)}')  # fmt: skip


def check_graph_files(card: ModelCard, sessions: Mapping[str, Any] | None = None) -> None:
    """Every graph file exists and has the inputs/outputs of the card.

    ``sessions``: onnxruntime sessions by file name to inspect; None opens CPU sessions.
    """
    if card.directory is None:
        raise ModelCardError('check_graph_files needs a card read from a bundle directory')
    for name in GRAPH_FILES:
        if not card.path(name).is_file():
            raise ModelCardError(f'{card.path(name)}: missing; model_card.yaml files.{name} '
                                 'names it')  # fmt: skip
    if sessions is None:
        import onnxruntime as ort  # noqa: PLC0415 - only when checking without a runtime

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sessions = {}
        for name in GRAPH_FILES:
            try:
                sessions[name] = ort.InferenceSession(
                    str(card.path(name)), opts, providers=['CPUExecutionProvider']
                )
            except Exception as exc:  # noqa: BLE001 - a corrupt graph: say which
                raise ModelCardError(f'{card.path(name)}: cannot be loaded: {exc}') from exc
    for name in GRAPH_FILES:
        s = sessions[name]
        check_graph_io(card.path(name), card.files[name], s.get_inputs(), s.get_outputs())


def card_file(path: Path | str) -> Path:
    """``path`` itself if it is a file, else ``path/model_card.yaml``."""
    path = Path(path)
    return path / CARD_FILE if path.is_dir() or not path.suffix else path


def load_model_card(path: Path | str, check_graphs: bool = True) -> ModelCard:
    """Read and validate a bundle's card (``path``: the bundle directory or the card file).

    With ``check_graphs`` the graph files must exist and match the card (opens CPU sessions).

    Raises:
        ModelCardError: naming the file and the field that is wrong.
    """
    file = card_file(path)
    if not file.is_file():
        what = 'no such directory' if not file.parent.is_dir() else f'no {CARD_FILE}'
        raise ModelCardError(f'{file}: missing ({what}); is {file.parent} a model bundle?')
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelCardError(f'{file}: not valid YAML: {exc}') from exc
    card = parse_model_card(data, file)
    object.__setattr__(card, 'directory', file.parent)
    if check_graphs:
        check_graph_files(card)
    return card


def write_model_card(card: ModelCard, path: Path | str) -> Path:
    """Write ``card`` as YAML to ``path`` (a bundle directory or a file); returns the file."""
    path = Path(path)
    file = path / CARD_FILE if path.is_dir() else path
    text = yaml.safe_dump(card.to_dict(), sort_keys=False, default_flow_style=None, width=99)
    file.write_text(text)
    return file
