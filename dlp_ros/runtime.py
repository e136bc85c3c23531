"""The torch-free runtime: a model bundle's ONNX graphs behind a small numpy API.

```python
rt = DlpRuntime.load(bundle_dir, providers='auto', threads=0)
tracker = rt.tracker()                      # one per camera stream
frame = tracker.update(rt.preprocess(rgb))  # ParticleFrame, index = identity over time
preds = rt.predict(tracker.history, horizon=10, actions=None)  # list[ParticleFrame]
futures = rt.predict_batch(tracker.history, 10, actions)  # actions (B, 10, A) -> (B, 10, K, ...)
images = rt.render(preds)                   # (N, S, S, 3) uint8 RGB
```

:class:`Tracker` runs, per frame, exactly the loop of ``dlp_training.models.tracking`` (its module
docstring): the tracking encoder at the previous frame's means, the numpy slot assignment
(:mod:`dlp_ros.tracking`), then the background encoder; :meth:`DlpRuntime.predict_batch` slides
the dynamics graph over an H-frame window like ``dlp_training.models.dynamics.rollout``, for B
candidate command sequences at once (the graph's batch axis); :meth:`DlpRuntime.predict` is its
one-candidate case.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dlp_ros.compositing import Motion, compose, to_uint8
from dlp_ros.errors import ConfigError, ImageError, ModelCardError
from dlp_ros.image_codec import to_model_input
from dlp_ros.input_view import resize_frame
from dlp_ros.model_card import (
    BACKGROUND,
    DECODER,
    DYNAMICS,
    ENCODER,
    GRAPH_FILES,
    ModelCard,
    check_graph_io,
    load_model_card,
)
from dlp_ros.particles import FIELDS, ParticleFrame
from dlp_ros.providers import SessionConfig, select_providers
from dlp_ros.tracking import assign_slots, first_frame_slots, gather_slots

logger = logging.getLogger(__name__)
ENCODER_FIELDS = FIELDS[:-1]  # mu, logvar, scale, depth, transparency, features
DECODER_INPUTS = ('mu', 'scale', 'depth', 'transparency', 'features', 'bg_features')


class DlpRuntime:
    """The four graphs of a bundle in onnxruntime sessions (thread-compatible: one tracker per
    stream; the sessions themselves may be shared across threads)."""

    def __init__(
        self, card: ModelCard, sessions: dict[str, ort.InferenceSession], provider: str
    ) -> None:
        self.card = card
        self.sessions = sessions
        self.provider = provider
        self._warned_actions = False

    @classmethod
    def load(
        cls,
        bundle_dir: Path | str,
        providers: str = 'auto',
        threads: int = 0,
        session_config: SessionConfig | None = None,
    ) -> DlpRuntime:
        """Read and validate the bundle, open its graphs on the selected provider.

        Args:
            bundle_dir: directory with model_card.yaml and the four graphs.
            providers: 'auto' (TensorRT, then CUDA, else CPU) | 'cpu' | 'cuda' | 'tensorrt'.
            threads: intra-op threads per session (0: onnxruntime's default).
            session_config: all session options (its ``threads`` is replaced by ``threads``).

        Raises:
            ModelCardError: the bundle or its card is wrong (names the file and the field).
            ConfigError: an unknown or unusable ``providers`` choice.
        """
        card = load_model_card(bundle_dir, check_graphs=False)
        for name in GRAPH_FILES:
            if not card.path(name).is_file():
                raise ModelCardError(f'{card.path(name)}: missing; model_card.yaml files.{name} '
                                     'names it')  # fmt: skip
        if threads < 0:
            raise ConfigError(f'threads must be >= 0, got {threads}')
        provider_args, provider, why = select_providers(providers)
        config = session_config or SessionConfig()
        config = SessionConfig(**{**config.__dict__, 'threads': threads})
        sessions = {}
        for name in GRAPH_FILES:
            try:
                sessions[name] = ort.InferenceSession(
                    str(card.path(name)), config.session_options(), providers=provider_args
                )
            except Exception as exc:  # noqa: BLE001 - a corrupt graph: say which
                raise ModelCardError(f'{card.path(name)}: cannot be loaded: {exc}') from exc
            s = sessions[name]
            check_graph_io(card.path(name), card.files[name], s.get_inputs(), s.get_outputs())
        logger.info(
            'model %s (S=%d, K=%d, H=%d, A=%d) on %s (%s)',
            card.directory, card.image.size, card.particles.K, card.dynamics.history,
            card.dynamics.action_dim, provider, why,
        )  # fmt: skip
        return cls(card, sessions, provider)

    # ------------------------------------------------------------------------- preprocessing

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB of any size -> model input (1, 3, S, S) float32 in [0, 1].

        Raises:
            ImageError: not an (H, W, 3) uint8 array.
        """
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3:
            got = rgb.shape if isinstance(rgb, np.ndarray) else type(rgb).__name__
            raise ImageError(f'preprocess expects an (H, W, 3) uint8 RGB array, got {got}')
        if rgb.dtype != np.uint8:
            raise ImageError(f'preprocess expects uint8 RGB, got dtype {rgb.dtype}')
        if rgb.shape[0] == 0 or rgb.shape[1] == 0:
            raise ImageError(f'image has zero size ({rgb.shape[1]}x{rgb.shape[0]})')
        image = self.card.image  # resized in the card's mode, as the training data was
        return to_model_input(resize_frame(rgb, image.size, image.resize))[None]

    def tracker(self) -> Tracker:
        """A new per-stream tracker (no state yet)."""
        return Tracker(self)

    # ------------------------------------------------------------------------- graphs

    def encode_pair(self, x: np.ndarray, anchors: np.ndarray) -> dict[str, np.ndarray]:
        """Tracking encoder: x (B, 3, S, S), anchors (B, K, 2) -> fields (B, 2K, ...)."""
        out = self.sessions[ENCODER].run(None, {'image': x, 'anchors': anchors})
        return dict(zip(ENCODER_FIELDS, out, strict=True))

    def background(self, x: np.ndarray, mu: np.ndarray, transparency: np.ndarray) -> np.ndarray:
        """Background encoder: x (B, 3, S, S), mu (B, K, 2), transparency (B, K, 1) -> (B, Fb)."""
        feeds = {'image': x, 'mu': mu, 'transparency': transparency}
        return self.sessions[BACKGROUND].run(None, feeds)[0]

    def step(self, window: dict[str, np.ndarray], actions: np.ndarray | None) -> list[np.ndarray]:
        """One dynamics step: window fields (B, H, K, ...) [, actions (B, H, A)] -> next fields
        (B, K, ...) in ``FIELDS`` order."""
        feeds = dict(window)
        if self.card.dynamics.action_dim:
            feeds['actions'] = actions
        return self.sessions[DYNAMICS].run(None, feeds)

    def decode(self, frames: Sequence[ParticleFrame]) -> np.ndarray:
        """Particle frames -> decoded images (N, 3, S, S) float32 (about [0, 1]), one batch."""
        if not frames:
            return np.zeros((0, 3, self.card.image.size, self.card.image.size), np.float32)
        feeds = {n: np.stack([getattr(f, n) for f in frames]) for n in DECODER_INPUTS}
        return self.sessions[DECODER].run(None, feeds)[0]

    def render(self, frames: Sequence[ParticleFrame]) -> np.ndarray:
        """Particle frames -> decoded frames (N, S, S, 3) uint8 RGB."""
        image = self.decode(frames)  # (N, 3, S, S)
        out = np.clip(image, 0.0, 1.0) * 255.0
        return np.ascontiguousarray(np.round(out).astype(np.uint8).transpose(0, 2, 3, 1))

    def render_prediction(
        self,
        observed: np.ndarray,
        last: ParticleFrame,
        steps: Sequence[ParticleFrame],
        mode: str | None = None,
    ) -> np.ndarray:
        """Predicted frames (N, S, S, 3) uint8 RGB in the card's compositing form
        (``card.prediction.compositing``, or ``mode``; see :mod:`dlp_ros.compositing`).

        Args:
            observed: (1, 3, S, S) the model input of the last observed frame.
            last: that frame's particles.
            steps: the N predicted particle frames after it.
        """
        mode = mode or self.card.prediction.compositing
        if mode == 'decoded' or not steps:
            return self.render(steps)
        decoded = self.decode([last, *steps])  # (N + 1, 3, S, S)
        predicted_mu = np.stack([f.mu for f in steps])  # (N, K, 2)
        motion = Motion.from_particles(last.mu, predicted_mu, last.scale, last.transparency,
                                       self.card.image.size)  # fmt: skip
        return to_uint8(compose(mode, observed[0], decoded[1:], decoded[0], motion))

    def recon_mse(self, x: np.ndarray, frame: ParticleFrame) -> float:
        """Mean per-pixel squared error of decode(frame) against the input x (1, 3, S, S), in
        [0, 1] units: the OOD score, comparable with ``card.validation.recon_mse``."""
        return float(np.mean((np.clip(self.decode([frame]), 0, 1) - x) ** 2))

    # ------------------------------------------------------------------------- prediction

    def predict(
        self,
        history: Sequence[ParticleFrame],
        horizon: int,
        actions: np.ndarray | None = None,
    ) -> list[ParticleFrame]:
        """Roll the dynamics out ``horizon`` steps after the last frame of ``history``: the one
        candidate (B = 1) of :meth:`predict_batch`.

        Args:
            history: observed frames, oldest first; the last H are read, a shorter history is
                padded by repeating its first frame.
            horizon: steps to predict, >= 1.
            actions: (H + horizon - 1, A) float32 when the model takes actions
                (``card.dynamics.action_dim`` A > 0): ``actions[s]`` is the command at window
                frame s (the H history frames, then the predicted ones), so ``actions[H - 1 +
                n]`` produces predicted step n. None: zeros (logged once).

        Returns:
            ``horizon`` ParticleFrames (``reseeded`` all False).
        """
        h, a = self.card.dynamics.history, self.card.dynamics.action_dim
        self._check_rollout(history, horizon)
        steps = self._actions(actions, h + horizon - 1, a)  # (H + horizon - 1, A) or None
        future = None if steps is None else steps[None, h - 1 :]  # (1, horizon, A)
        past = None if steps is None else steps[: h - 1]  # (H - 1, A)
        fields = self.predict_batch(history, horizon, future, past)
        return [ParticleFrame(*(fields[name][0, n] for name in FIELDS)) for n in range(horizon)]

    def predict_batch(
        self,
        history: Sequence[ParticleFrame],
        horizon: int,
        actions: np.ndarray | None = None,
        past_actions: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Roll B candidate futures out ``horizon`` steps after the last frame of ``history``,
        one dynamics call per step for all of them.

        Args:
            history: observed frames, oldest first, shared by every candidate (read like
                :meth:`predict`'s).
            horizon: steps N to predict, >= 1.
            actions: (B, N, A) float32, candidate b's future commands: ``actions[b, n]`` is the
                command at window frame H - 1 + n (the last observed frame, then the predicted
                ones), which produces predicted step n + 1. For a model without actions
                (A = 0) a (B, N, 0) array gives B. None: one candidate (B = 1), zero commands
                for a model with actions (logged once).
            past_actions: (H - 1, A) the commands of the history frames before the last
                (oldest first), the same for every candidate; None: zeros. Ignored when A = 0.

        Returns:
            The seven particle fields of :data:`~dlp_ros.particles.FIELDS`, each (B, N, K, ...)
            (``bg_features`` (B, N, Fb)).

        Raises:
            ConfigError: actions of the wrong shape, or given to a model that takes none.
            ValueError: no history, or a horizon < 1.
        """
        h = self.card.dynamics.history
        self._check_rollout(history, horizon)
        future, past = self._batch_actions(actions, past_actions, horizon)
        b = 1 if future is None else future.shape[0]
        frames = list(history)[-h:]
        frames = [frames[0]] * (h - len(frames)) + frames  # pad with the first frame
        window = {
            n: np.ascontiguousarray(np.broadcast_to(np.stack([getattr(f, n) for f in frames]),
                                                    (b, h, *getattr(frames[0], n).shape)))
            for n in FIELDS
        }  # fmt: skip
        commands = None
        if future is not None and past is not None:
            commands = np.concatenate([np.broadcast_to(past, (b, *past.shape)), future], axis=1)
        out: list[list[np.ndarray]] = []
        for n in range(horizon):
            step_actions = None if commands is None else commands[:, n : n + h]  # (B, H, A)
            nxt = self.step(window, step_actions)  # (B, K, ...) each
            out.append(nxt)
            window = {
                name: np.concatenate([window[name][:, 1:], v[:, None]], axis=1)
                for name, v in zip(FIELDS, nxt, strict=True)
            }
        return {name: np.stack([o[i] for o in out], axis=1) for i, name in enumerate(FIELDS)}

    @staticmethod
    def _check_rollout(history: Sequence[ParticleFrame], horizon: int) -> None:
        if not history:
            raise ValueError('predict needs at least one observed ParticleFrame')
        if not isinstance(horizon, int | np.integer) or horizon < 1:
            raise ValueError(f'horizon must be an int >= 1, got {horizon!r}')

    def _batch_actions(
        self, actions: np.ndarray | None, past: np.ndarray | None, horizon: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Checked (B, N, A) future and (H - 1, A) past commands; (B, N, 0), None for a model
        without actions."""
        h, a = self.card.dynamics.history, self.card.dynamics.action_dim
        if actions is None:
            if a == 0:
                return None, None
            actions = self._actions(None, horizon, a)[None]  # (1, N, A) zeros, warned once
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 3 or actions.shape[1:] != (horizon, a) or actions.shape[0] < 1:
            if a == 0 and actions.size:
                raise ConfigError('actions given, but this model takes none '
                                  '(model_card.yaml dynamics.action_dim = 0)')  # fmt: skip
            raise ConfigError(f'actions must be (B, horizon, A) = (B, {horizon}, {a}) with B '
                              f'>= 1, got {actions.shape}')  # fmt: skip
        if a == 0:
            return actions, None
        past = np.zeros((h - 1, a), np.float32) if past is None else past
        past = np.asarray(past, dtype=np.float32)
        if past.shape != (h - 1, a):
            raise ConfigError(f'past_actions must be (H - 1, A) = ({h - 1}, {a}), got '
                              f'{past.shape}')  # fmt: skip
        return actions, past

    def _actions(self, actions: np.ndarray | None, length: int, a: int) -> np.ndarray | None:
        if a == 0:
            if actions is not None and np.asarray(actions).size:
                raise ConfigError('actions given, but this model takes none '
                                  '(model_card.yaml dynamics.action_dim = 0)')  # fmt: skip
            return None
        if actions is None:
            if not self._warned_actions:
                names = ', '.join(self.card.dynamics.action_names) or 'unnamed'
                logger.warning('the model takes %d actions per step (%s) but none were given: '
                               'predicting with zero actions', a, names)  # fmt: skip
                self._warned_actions = True
            return np.zeros((length, a), np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (length, a):
            raise ConfigError(f'actions must be (H + horizon - 1, A) = ({length}, {a}), got '
                              f'{actions.shape}')  # fmt: skip
        return actions


class Tracker:
    """Per-stream tracking state: the previous frame's means and the last H frames.

    :meth:`update` is the runtime loop of ``dlp_training.models.tracking`` (its module docstring),
    so a sequence of frames gives the same particles as ``track_sequence``.
    """

    def __init__(self, runtime: DlpRuntime) -> None:
        self.runtime = runtime
        card = runtime.card
        self.k = card.particles.K
        self.on_threshold = card.tracking.on_threshold
        self.claim_radius = card.tracking.claim_radius
        self._history: deque[ParticleFrame] = deque(maxlen=card.dynamics.history)
        self._prev_mu: np.ndarray | None = None  # (K, 2)
        self.frames_seen = 0

    @property
    def history(self) -> list[ParticleFrame]:
        """The last <= H frames, oldest first."""
        return list(self._history)

    def reset(self) -> None:
        """Forget everything: the next frame starts new identities (a new episode/stream)."""
        self._history.clear()
        self._prev_mu = None
        self.frames_seen = 0

    def update(self, x: np.ndarray) -> ParticleFrame:
        """Encode one preprocessed frame x (1, 3, S, S) (or (3, S, S)) into tracked particles."""
        rt, k, s = self.runtime, self.k, self.runtime.card.image.size
        x = np.asarray(x, dtype=np.float32)
        if x.shape == (3, s, s):
            x = x[None]
        if x.shape != (1, 3, s, s):
            raise ImageError(f'Tracker.update expects (1, 3, {s}, {s}) from preprocess, got '
                             f'{x.shape}')  # fmt: skip
        x = np.ascontiguousarray(x)
        first = self._prev_mu is None
        anchors = np.zeros((1, k, 2), np.float32) if first else self._prev_mu[None]
        both = {n: v[0] for n, v in rt.encode_pair(x, anchors).items()}  # (2K, ...)
        tracked = {n: v[:k] for n, v in both.items()}
        detected = {n: v[k:] for n, v in both.items()}
        if first:
            source = first_frame_slots(k)
        else:
            source = assign_slots(
                tracked['mu'], tracked['transparency'][:, 0], detected['mu'],
                detected['transparency'][:, 0], self.on_threshold, self.claim_radius,
            )  # fmt: skip
        fields = gather_slots(tracked, detected, source)  # (K, ...) each
        bg = rt.background(x, fields['mu'][None], fields['transparency'][None])[0]  # (Fb,)
        frame = ParticleFrame(**fields, bg_features=bg, reseeded=source >= 0)
        self._prev_mu = np.ascontiguousarray(fields['mu'], dtype=np.float32)
        self._history.append(frame)
        self.frames_seen += 1
        return frame


def summary(rt: DlpRuntime) -> dict[str, Any]:
    """A short description of a loaded runtime (for diagnostics)."""
    c = rt.card
    return {
        'bundle': str(c.directory),
        'provider': rt.provider,
        'image_size': c.image.size,
        'particles': c.particles.K,
        'history': c.dynamics.history,
        'action_dim': c.dynamics.action_dim,
        'dt': c.dynamics.dt,
    }
