"""Every shipped recipe validates, and `recipe cp` hands out the installed copy."""

from __future__ import annotations

from importlib import resources

import pytest

from domaintune import api
from domaintune.config import load_recipe

NAMES = api.recipe_names()


def test_some_recipes_ship():
    assert "cpu_demo" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates(name, tmp_path):
    path = api.copy_recipe(name, str(tmp_path))
    recipe = load_recipe(str(path))
    assert recipe.model.trust_remote_code is False
    shipped = (resources.files("domaintune") / "recipes" / f"{name}.yaml").read_text()
    assert path.read_text() == shipped
