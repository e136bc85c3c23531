"""Model card validation: every refusal is a ModelCardError naming the file and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dlp_ros.errors import ModelCardError
from dlp_ros.model_card import CARD_FILE, load_model_card, parse_model_card
from dlp_ros.runtime import DlpRuntime


@pytest.fixture
def bundle(bundles: dict[int, Any], tmp_path: Path) -> Path:
    """A private copy of the 64 px bundle, free to break."""
    return Path(shutil.copytree(bundles[64].path, tmp_path / 'bundle'))


def _edit(bundle: Path, change: Callable[[dict[str, Any]], None]) -> None:
    card = bundle / CARD_FILE
    data = yaml.safe_load(card.read_text())
    change(data)
    card.write_text(yaml.safe_dump(data, sort_keys=False))


def _refused(bundle: Path, *fragments: str) -> str:
    """Both load_model_card and DlpRuntime.load refuse, naming every fragment."""
    for load in (load_model_card, lambda p: DlpRuntime.load(p, providers='cpu', threads=1)):
        with pytest.raises(ModelCardError) as info:
            load(bundle)
        for fragment in fragments:
            assert fragment in str(info.value), (fragment, str(info.value))
    return str(info.value)


def test_a_good_bundle_loads(bundle: Path) -> None:
    card = load_model_card(bundle)
    assert card.directory == bundle and card.path('encoder.onnx').is_file()
    assert load_model_card(bundle / CARD_FILE) == card  # the file itself works too


@pytest.mark.parametrize('mode', ['squash', 'crop', 'pad'])
def test_resize_modes_load_and_a_card_without_one_is_squash(bundle: Path, mode: str) -> None:
    _edit(bundle, lambda d: d['image'].update(resize=mode))
    assert load_model_card(bundle).image.resize == mode
    _edit(bundle, lambda d: d['image'].pop('resize'))  # an older card
    assert load_model_card(bundle).image.resize == 'squash'


def test_unknown_schema_version(bundle: Path) -> None:
    _edit(bundle, lambda d: d.update(schema_version=2))
    message = _refused(
        bundle, str(bundle / CARD_FILE), 'schema_version', 'unknown schema version 2'
    )
    assert 'reads schema 1' in message


def test_missing_card_and_missing_graph(bundle: Path, tmp_path: Path) -> None:
    _refused(tmp_path / 'nowhere', 'nowhere', CARD_FILE)
    (bundle / 'decoder.onnx').unlink()
    _refused(bundle, str(bundle / 'decoder.onnx'), 'files.decoder.onnx', 'missing')


@pytest.mark.parametrize(
    ('change', 'field'),
    [
        (lambda d: d['particles'].pop('K'), 'particles.K'),
        (lambda d: d['particles'].update(F='four'), 'particles.F'),
        (lambda d: d['dynamics'].update(dt=-1), 'dynamics.dt'),
        (lambda d: d['dynamics'].update(action_names=['only_one']), 'dynamics.action_names'),
        (lambda d: d['image'].update(channels='bgr'), 'image.channels'),
        (lambda d: d['image'].update(resize='stretch'), 'image.resize'),
        (lambda d: d.pop('tracking'), 'tracking'),
        (lambda d: d.update(surprise=1), 'surprise'),
        (lambda d: d['validation'].update(recon_mse='low'), 'validation.recon_mse'),
        (lambda d: d['files']['dynamics.onnx']['inputs'][0].update(name='pos'),
         'files.dynamics.onnx.inputs'),
    ],
)  # fmt: skip
def test_missing_or_ill_typed_fields(bundle: Path, change: Callable, field: str) -> None:
    _edit(bundle, change)
    _refused(bundle, str(bundle / CARD_FILE), field)


def test_card_sizes_that_contradict_the_graph_specs(bundle: Path) -> None:
    _edit(bundle, lambda d: d['particles'].update(K=5))  # files still say K = 4
    _refused(bundle, CARD_FILE, 'files.encoder.onnx.inputs[1].shape (anchors)', '[B, 5, 2]')


def test_graph_shape_mismatch_names_the_graph_file_and_tensor(
    bundle: Path, bundles: dict[int, Any]
) -> None:
    """A 128 px encoder in a 64 px bundle: the card is consistent, the graph is not."""
    shutil.copy(bundles[128].path / 'encoder.onnx', bundle / 'encoder.onnx')
    _refused(bundle, str(bundle / 'encoder.onnx'), 'inputs.image.shape', '[B, 3, 64, 64]')


def test_corrupt_graph_and_yaml(bundle: Path) -> None:
    (bundle / 'dynamics.onnx').write_bytes(b'not a graph')
    _refused(bundle, str(bundle / 'dynamics.onnx'), 'cannot be loaded')
    (bundle / CARD_FILE).write_text('image: [unclosed')
    _refused(bundle, str(bundle / CARD_FILE), 'not valid YAML')


def test_parse_rejects_a_non_mapping() -> None:
    with pytest.raises(ModelCardError, match='x.yaml: .top level.: must be a mapping'):
        parse_model_card([1, 2], 'x.yaml')
