"""Released recipes as data: config/recipes/NAME.json, read through the option schema.

A recipe file holds a `description`, an optional `base` (another recipe whose options it extends)
and `options` (name: value, each checked against the schema). Names starting with `_` are bases:
the hyper-parameters an encoder pair is released with, which apply when no recipe is given.
"""

import json
import os

from errors import ConfigError
from .schema import COMMAND


FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "recipes")


def recipe_names() -> list[str]:
    """The released recipes one can train (bases excluded)."""
    return sorted(name[:-5] for name in os.listdir(FOLDER) if name.endswith(".json") and not name.startswith("_"))


def _recipe_file(name: str, where: str = "--recipe", folder: str = "") -> str:
    """The file of a recipe name (config/recipes/NAME.json) or path (relative to `folder`: the
    folder of the recipe that names it as its base)."""
    if name.endswith(".json") or os.sep in name or "/" in name:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ConfigError(f"{where} {name}: no such recipe file ({os.path.abspath(path)})")
        return path
    path = os.path.join(FOLDER, f"{name}.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{where} {name} is not a recipe (choose {', '.join(recipe_names())}, or give a .json "
                          "file)")
    return path


def read_recipe(name: str, options: dict, seen: tuple = (), where: str = "--recipe", folder: str = "") -> dict:
    """The options of recipe `name`, its bases' first, every value checked against `options`.
    A recipe holds training options only: the run's own (output folder, resume, overwrite,
    --init_from) are given on the command line."""
    path = _recipe_file(name, where, folder)
    if path in seen:
        raise ConfigError(f"recipe {path} is its own base")
    try:
        with open(path, encoding="utf-8") as handle:
            recipe = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"recipe {path} is not a readable JSON file ({exc})") from exc
    if not isinstance(recipe, dict) or not isinstance(recipe.get("options"), dict) \
            or set(recipe) - {"description", "base", "options"}:
        raise ConfigError(f"recipe {path} must be an object with 'description', 'options' and an optional 'base'")
    values = read_recipe(recipe["base"], options, seen + (path,), f"recipe {path}: base",
                         os.path.dirname(path)) if recipe.get("base") else {}
    for key, value in recipe["options"].items():
        option = options.get(key)
        if option is None or not option.flag:
            raise ConfigError(f"recipe {path}: '{key}' is not an option of train.py")
        if option.role == COMMAND:
            raise ConfigError(f"recipe {path}: '{key}' is an option of the run, not of a recipe; give it on the "
                              "command line")
        if key == "encoders" and values.get("encoders", value) != value:
            raise ConfigError(f"recipe {path} sets encoders {value} over its base's {values['encoders']}: a recipe "
                              "and its bases train one encoder pair")
        if value is None:
            raise ConfigError(f"recipe {path}: '{key}' is null; give it a value, or leave it out for the default")
        if option.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        try:
            option.check(value)
        except ConfigError as exc:
            raise ConfigError(f"recipe {path}: {exc}") from exc
        values[key] = value
    return values


def describe(name: str) -> str:
    with open(_recipe_file(name), encoding="utf-8") as handle:
        return json.load(handle).get("description", "")
