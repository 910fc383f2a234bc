"""Print the app's OpenAPI contract as YAML: `python -m service.api.openapi > openapi.yaml`."""

from __future__ import annotations

import yaml

from service.api.app import create_app
from service.settings import Settings


def render() -> str:
    # Building the app runs no lifespan: no model is loaded to describe the routes.
    return yaml.safe_dump(create_app(Settings()).openapi(), sort_keys=False, allow_unicode=True)


if __name__ == "__main__":
    print(render(), end="")
