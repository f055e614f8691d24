import subprocess
import sys

import pytest

import methods
from methods.base import ConfigError
from methods.registry import UnknownMethodError, resolve


def test_registry_lists_all_methods():
    assert methods.available() == ["fp", "rtn", "binarymos", "onebit", "gptq", "billm", "pbllm"]


def test_alias_resolves_to_reference():
    assert resolve("fp16").name == "fp"
    assert resolve("BinaryMoS").name == "binarymos"


def test_typo_suggests_closest_name():
    with pytest.raises(UnknownMethodError, match="Did you mean 'binarymos'"):
        resolve("binarymoss")


def test_unknown_name_lists_available():
    with pytest.raises(UnknownMethodError, match="Available methods: fp, rtn"):
        resolve("xyz")


def test_registry_imports_lazily():
    code = "import sys, methods.registry; print('methods.binarymos' in sys.modules, 'methods.onebit' in sys.modules)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "False False"


def test_create_uses_official_defaults():
    quantizer = methods.create("binarymos")
    assert quantizer.config.num_experts == 4
    assert quantizer.config.hidden_loss_weight == 10.0
    onebit = methods.create("onebit")
    assert (onebit.config.kd_alpha, onebit.config.kd_loss_scale, onebit.config.kd_beta) == (1.0, 0.01, 1.0)


def test_unknown_option_is_rejected():
    with pytest.raises(ConfigError, match="Unknown option.*experts.*Valid options: hidden_loss_weight, num_experts"):
        methods.create("binarymos", {"experts": 2})


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("binarymos", {"num_experts": 0}, "num_experts must be >= 1, got 0"),
        ("onebit", {"scale_init": "pca"}, "scale_init must be 'nmf' or 'svd', got 'pca'"),
        ("onebit", {"kd_alpha": 1.5}, r"kd_alpha must be in \[0, 1\], got 1.5"),
    ],
)
def test_invalid_option_value_is_rejected(name, options, message):
    with pytest.raises(ConfigError, match=message):
        methods.create(name, options)
