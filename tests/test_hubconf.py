"""hubconf.py: paddle.hub.load(<this repository>, ..., source="local") gives the shipped networks,
ready to use, as a github load of the repository would."""
import Utils

import json
import shutil

import numpy as np
import paddle
import pytest
from safetensors.numpy import load_file, save_file

import Checkpoint
from conftest import ROOT
from Files import UserError

MODEL = ROOT / "Model"


def hub(entry, **kwargs):
    return paddle.hub.load(str(ROOT), entry, source="local", **kwargs)


def weights(layer):
    return {name: value.numpy() for name, value in layer.state_dict().items()}


def test_paddle_hub_lists_the_generator_and_the_discriminator_and_nothing_else():
    assert sorted(paddle.hub.list(str(ROOT), source="local")) == ["discriminator", "generator"]
    assert paddle.hub.help(str(ROOT), "generator", source="local").startswith("The generator of the repository's")


def test_the_generator_is_the_shipped_one_ready_to_draw(on_cpu):
    G = hub("generator")
    assert not G.training  # BatchNorm uses its running statistics
    shipped = load_file(str(Checkpoint.generator_file(MODEL)))  # G_ema.safetensors where the model has it
    assert all(np.array_equal(value, shipped[name]) for name, value in weights(G).items())
    noise = paddle.to_tensor(Utils.random_noise(np.random.default_rng(0), 4))
    with paddle.no_grad():
        images = G(noise).numpy()
    assert images.shape == (4, 3, 96, 96) and -1 <= images.min() and images.max() <= 1
    assert np.array_equal(images, Checkpoint.load_generator(MODEL)(noise).numpy())


def test_the_generator_is_the_averaged_one_where_the_folder_has_it(on_cpu, tmp_path):
    shutil.copy(MODEL / "G.safetensors", tmp_path / "G.safetensors")
    averaged = {name: value * 0.5 for name, value in load_file(str(MODEL / "G.safetensors")).items()}
    save_file(averaged, str(tmp_path / "G_ema.safetensors"))
    assert all(np.array_equal(value, averaged[name]) for name, value in weights(hub("generator",
                                                                                    model_dir=tmp_path)).items())
    raw = weights(hub("generator", model_dir=tmp_path, raw_g=True))
    assert all(np.array_equal(value, averaged[name] * 2) for name, value in raw.items())


def test_the_discriminator_is_built_and_loaded_as_it_was_trained(on_cpu):
    D = hub("discriminator")
    assert not D.training  # no dropout, BatchNorm's running statistics
    shipped = load_file(str(MODEL / "D.safetensors"))
    assert set(weights(D)) == set(shipped)  # the shipped model has no BatchNorm on D's input
    assert all(np.array_equal(value, shipped[name]) for name, value in weights(D).items())
    with paddle.no_grad():
        assert D(paddle.zeros([2, 3, 96, 96])).shape == [2, 2]


def test_a_folder_without_weights_is_one_sentence_in_python_terms(on_cpu, tmp_path):
    with pytest.raises(UserError, match=r"G\.safetensors does not exist; pass model_dir= a folder") as error:
        hub("generator", model_dir=tmp_path)
    assert "--" not in str(error.value)
    with pytest.raises(UserError, match=r"D\.safetensors does not exist; pass model_dir= a folder") as error:
        hub("discriminator", model_dir=tmp_path)
    assert "--" not in str(error.value)
    with pytest.raises(UserError, match=r"^model_dir='.*nowhere' is not a folder; pass model_dir= "):
        hub("generator", model_dir=tmp_path / "nowhere")


def test_raw_g_without_g_points_to_the_averaged_generator_in_python_terms(on_cpu, tmp_path):
    shutil.copy(MODEL / "G_ema.safetensors", tmp_path / "G_ema.safetensors")
    with pytest.raises(UserError) as error:
        hub("generator", model_dir=tmp_path, raw_g=True)
    assert str(error.value) == (f"{tmp_path / 'G.safetensors'} does not exist, so raw_g=True has nothing to load; "
                                f"leave raw_g out to load G_ema.safetensors, the averaged generator beside it.")
    assert not hub("generator", model_dir=tmp_path).training


def test_a_damaged_state_and_discriminator_are_each_refused_without_calling_anything_intact(on_cpu, tmp_path):
    (tmp_path / "state.json").write_text("{not json")
    (tmp_path / "D.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError) as error:
        hub("discriminator", model_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'D.safetensors'} is not a readable safetensors file (")
    assert message.endswith("put back a good copy of it, or pass model_dir= another folder.")

    shutil.copy(MODEL / "D.safetensors", tmp_path / "D.safetensors")
    with pytest.raises(UserError) as error:
        hub("discriminator", model_dir=tmp_path)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'state.json'} cannot be used (it is not valid JSON (")
    assert message.endswith("so how D.safetensors was built is unknown: put back the state.json saved with it, "
                            "or pass model_dir= another folder.")
    for words in ("intact", "--fresh", "--model-dir"):
        assert words not in message


def test_a_g_ema_link_to_nothing_is_answered_in_python_terms(on_cpu, tmp_path):
    shutil.copy(MODEL / "G.safetensors", tmp_path / "G.safetensors")
    (tmp_path / "G_ema.safetensors").symlink_to(tmp_path / "gone.safetensors")
    with pytest.raises(UserError) as error:
        hub("generator", model_dir=tmp_path)
    assert str(error.value) == (f"{tmp_path / 'G_ema.safetensors'} is a link to {tmp_path / 'gone.safetensors'}, "
                                f"which does not exist; put that file back, or pass raw_g=True to draw with "
                                f"G.safetensors.")
    assert "--raw-g" not in str(error.value)


@pytest.mark.parametrize("name, value, why", [("mbstd", "yes", "not true or false"),
                                              ("d_norm", "bogus", "not one of batch, spectral"),
                                              ("d_input_bn", 1, "not true or false")])
def test_a_hand_edited_form_of_d_is_one_sentence_as_train_py_checks_it(on_cpu, tmp_path, name, value, why):
    shutil.copy(MODEL / "D.safetensors", tmp_path / "D.safetensors")
    state = json.loads((MODEL / "state.json").read_text())
    state["hyper_parameters"][name] = value
    (tmp_path / "state.json").write_text(json.dumps(state))
    with pytest.raises(UserError) as error:
        hub("discriminator", model_dir=tmp_path)
    assert str(error.value) == (f"{tmp_path / 'state.json'} records {name}={value!r}, which Train.py never writes "
                                f"({why}): it was edited by hand, so how D.safetensors was built is unknown; put back "
                                f"the state.json saved with it, or pass model_dir= another folder.")
