"""JSON Schema documents of our pydantic models (config, plan), rendered the same way."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel


def json_schema(model: type[BaseModel], title: str) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = title
    return schema


def render_json_schema(model: type[BaseModel], title: str) -> str:
    """Stable text (sorted keys): the checked-in file and a fresh rendering compare equal."""
    return json.dumps(json_schema(model, title), indent=2, sort_keys=True) + "\n"
