"""featureinterp.errors: the error hierarchy callers rely on (a ConfigError is a ValueError, the
load-time errors are RuntimeErrors) and that library code raises them naming the bad value."""

import pytest

from featureinterp.config import parse_feature_key, parse_layer_key
from featureinterp.errors import ConfigError, CorruptFileError, UnavailableError
from featureinterp.storage import load_arrays, load_table


def test_hierarchy_lets_callers_catch_the_builtin_bases():
    assert issubclass(ConfigError, ValueError)
    assert issubclass(UnavailableError, RuntimeError) and issubclass(CorruptFileError, RuntimeError)
    assert not issubclass(ConfigError, RuntimeError) and not issubclass(CorruptFileError, ValueError)
    with pytest.raises(ValueError, match="bad layer key 'X6'"):  # caught as a plain ValueError
        parse_layer_key("X6")


def test_config_errors_name_the_value_and_the_expected_form():
    with pytest.raises(ConfigError, match=r"bad feature key 'F7x'.*'F0007'"):
        parse_feature_key("F7x")
    assert parse_feature_key("F0007") == 7 and parse_layer_key("L06") == 6


def test_corrupt_file_errors_name_the_path_and_the_command_that_recomputes_it(tmp_path):
    missing = tmp_path / "nowhere"
    for load in (load_arrays, load_table):
        with pytest.raises(CorruptFileError, match="run `featureinterp run` to recompute it") as err:
            load(missing)
        assert str(missing) in str(err.value)
