"""Strict function calling (beta): the JSON Schema subset DeepSeek accepts (spec §8.6).

A strict function's `parameters` may use only: object (every property required,
`additionalProperties: false`), string (`pattern`, `format` of email/hostname/ipv4/ipv6/
uuid; no length bounds), number/integer (`const`, `default`, `minimum`, `maximum`,
`exclusiveMinimum`, `exclusiveMaximum`, `multipleOf`), boolean, array (`items`; no item
count bounds), `enum`, `anyOf`, and `$ref` into `$defs` / `$def` (recursion allowed).
Anything else is a 400 that names the keyword and where it is.
"""

from __future__ import annotations

from typing import Any

from seekserve.errors import InvalidRequest

_COMMON = {"type", "description", "title", "enum", "const", "default", "anyOf", "$ref"}
_ROOT_ONLY = {"$defs", "$def", "$schema"}
_BY_TYPE = {
    "object": {"properties", "required", "additionalProperties"},
    "string": {"pattern", "format"},
    "number": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "integer": {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"},
    "boolean": set(),
    "array": {"items"},
    "null": set(),
}
_FORMATS = {"email", "hostname", "ipv4", "ipv6", "uuid"}
MAX_DEPTH = 32
"""Deepest nesting of schemas accepted (arguments are generated under it, grammar and all)."""


def check_strict_schema(schema: Any, param: str) -> None:
    """Raise InvalidRequest (naming `param`, the keyword and its path) unless `schema` is in
    the strict subset."""
    _Checker(param).check(schema, "", depth=0, root=True)


class _Checker:
    def __init__(self, param: str) -> None:
        self.param = param

    def fail(self, where: str, reason: str) -> InvalidRequest:
        at = f" (at {where})" if where else ""
        return InvalidRequest(
            f"Invalid {self.param} value: {reason} in strict mode{at}", param=self.param
        )

    def check(self, schema: Any, where: str, depth: int, root: bool = False) -> None:
        if not isinstance(schema, dict):
            raise self.fail(where, "a schema must be a JSON object")
        if depth > MAX_DEPTH:
            raise self.fail(
                where, f"schemas nested deeper than {MAX_DEPTH} levels are not supported"
            )
        types = schema.get("type")
        type_list = types if isinstance(types, list) else [] if types is None else [types]
        allowed = set(_COMMON) | (_ROOT_ONLY if root else set())
        for name in type_list:
            if name not in _BY_TYPE:
                raise self.fail(where, f"type {name!r} is not supported")
            allowed |= _BY_TYPE[name]
        for keyword in schema:
            if keyword not in allowed:
                raise self.fail(where, f"keyword {keyword!r} is not supported")
        if "object" in type_list:
            self._object(schema, where, depth)
        if "format" in schema and schema["format"] not in _FORMATS:
            raise self.fail(where, f"string format {schema['format']!r} is not supported")
        if "items" in schema:
            self.check(schema["items"], _join(where, "items"), depth + 1)
        for index, option in enumerate(schema.get("anyOf") or []):
            self.check(option, _join(where, f"anyOf[{index}]"), depth + 1)
        for key in ("$defs", "$def"):
            definitions = schema.get(key, {})
            if not isinstance(definitions, dict):
                raise self.fail(where, f"{key!r} must be an object")
            for name, definition in definitions.items():
                self.check(definition, _join(where, f"{key}.{name}"), depth + 1)

    def _object(self, schema: dict[str, Any], where: str, depth: int) -> None:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise self.fail(where, "'properties' must be an object")
        if schema.get("additionalProperties") is not False:
            raise self.fail(where, "an object needs 'additionalProperties': false")
        required = schema.get("required", [])
        missing = [name for name in properties if name not in required]
        if missing:
            raise self.fail(where, f"property {missing[0]!r} must be listed in 'required'")
        for name, sub in properties.items():
            self.check(sub, _join(where, f"properties.{name}"), depth + 1)


def _join(where: str, part: str) -> str:
    return f"{where}.{part}" if where else part


def nesting_depth(value: Any) -> int:
    """How deep JSON containers nest in `value` (iterative: safe for any input)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest
