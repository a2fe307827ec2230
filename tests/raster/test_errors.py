"""The one translation of a pydantic validation error into a one-line message, keyed as the user spells it."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slidemap.errors import key_path, option_name, validation_line


class Training(BaseModel):
    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, ge=1)
    precision: Literal["auto", "32", "bf16"] = "auto"
    threshold: float | Literal["best"] = "best"
    bands: list[str] = []


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    training: Training = Training()
    models: list[Training] = []

    @model_validator(mode="after")
    def _across(self) -> Spec:
        if self.name == "both":
            raise ValueError("give name or training, not both")
        return self


def line(data: dict, *spelling) -> str:
    with pytest.raises(ValidationError) as e:
        Spec.model_validate(data)
    return validation_line(e.value, *spelling)


def test_a_spec_or_sidecar_key_is_its_dotted_path_with_the_value_as_written():
    assert line({"name": "a", "training": {"batch_size": 0}}) == \
        "training.batch_size: 0: must be greater than or equal to 1"
    assert line({"name": "a", "training": {"precision": "fp8"}}) == \
        "training.precision: 'fp8': must be 'auto', '32' or 'bf16'"
    assert line({"name": "a", "models": [{}, {"batch_size": "x"}]}) == \
        "models.1.batch_size: 'x': must be a valid integer, unable to parse string as an integer"
    # a union's member tag (float, literal['best']) is pydantic's, not a key the user wrote
    assert line({"name": "a", "training": {"threshold": "high"}}).startswith("training.threshold: 'high': must be")
    assert line({"training": {}}) == "name: missing"
    assert line({"name": "a", "bogus": 1}) == "bogus: unknown key"
    assert line({"name": "a", "bogus": 1}, key_path, "unknown key; see examples/quick.yaml") == \
        "bogus: unknown key; see examples/quick.yaml"


def test_an_option_is_spelled_as_typed_with_its_value():
    assert line({"name": "a", "training": {"batch_size": 0}}, lambda loc: option_name(loc[1:])) == \
        "--batch-size 0: must be greater than or equal to 1"
    assert line({"name": 3}, option_name) == "--name 3: must be a valid string"
    assert line({"name": "a", "extra_thing": 1}, option_name, "unknown option") == "--extra-thing: unknown option"
    assert option_name(("max_unknown",)) == "--max-unknown"


def test_a_check_across_keys_is_its_own_message():
    assert line({"name": "both"}) == "give name or training, not both"
    assert line({"name": "both"}, option_name) == "give name or training, not both"
