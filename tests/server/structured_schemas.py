"""Twenty JSON schemas of varied shape for the structured-output tests: nested objects, arrays,
enums, bounded numbers, optional fields, unions, references and patterns. Free strings carry a
``maxLength``, arrays a ``maxItems`` and fractional numbers a ``multipleOf`` (a JSON number has
no length limit otherwise), so that every valid output fits the token budget."""

from __future__ import annotations

NAME = {"type": "string", "maxLength": 24}

SCHEMAS: list[tuple[str, dict]] = [
    (
        "person",
        {
            "type": "object",
            "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
            "required": ["name", "age"],
        },
    ),
    (
        "color_enum",
        {
            "type": "object",
            "properties": {"color": {"enum": ["red", "green", "blue"]}},
            "required": ["color"],
        },
    ),
    (
        "bounded_number",
        {
            "type": "object",
            "properties": {
                "score": {"type": "number", "minimum": -5, "maximum": 5, "multipleOf": 0.25}
            },
            "required": ["score"],
        },
    ),
    (
        "boolean_flags",
        {
            "type": "object",
            "properties": {"done": {"type": "boolean"}, "late": {"type": "boolean"}},
            "required": ["done", "late"],
        },
    ),
    (
        "int_array",
        {
            "type": "object",
            "properties": {
                "values": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 99},
                    "minItems": 1,
                    "maxItems": 5,
                }
            },
            "required": ["values"],
        },
    ),
    (
        "nested_address",
        {
            "type": "object",
            "properties": {
                "name": NAME,
                "address": {
                    "type": "object",
                    "properties": {
                        "city": NAME,
                        "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    },
                    "required": ["city", "zip"],
                },
            },
            "required": ["name", "address"],
        },
    ),
    (
        "optional_fields",
        {
            "type": "object",
            "properties": {
                "title": NAME,
                "subtitle": NAME,
                "pages": {"type": "integer", "minimum": 1, "maximum": 999},
            },
            "required": ["title"],
        },
    ),
    (
        "array_of_objects",
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "maxItems": 3,
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                        },
                        "required": ["sku", "qty"],
                    },
                }
            },
            "required": ["items"],
        },
    ),
    (
        "top_level_array",
        {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 4},
    ),
    (
        "any_of",
        {
            "type": "object",
            "properties": {
                "id": {
                    "anyOf": [
                        {"type": "integer", "minimum": 0, "maximum": 1000},
                        {"type": "string", "pattern": "^id-[a-z]{3}$"},
                    ]
                }
            },
            "required": ["id"],
        },
    ),
    (
        "nullable",
        {
            "type": "object",
            "properties": {"nickname": {"type": ["string", "null"], "maxLength": 16}},
            "required": ["nickname"],
        },
    ),
    (
        "const_and_enum",
        {
            "type": "object",
            "properties": {"version": {"const": 2}, "mode": {"enum": ["fast", "slow", 3]}},
            "required": ["version", "mode"],
        },
    ),
    (
        "date_pattern",
        {
            "type": "object",
            "properties": {
                "date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9]$"}
            },
            "required": ["date"],
        },
    ),
    (
        "refs",
        {
            "$defs": {
                "point": {
                    "type": "object",
                    "properties": {
                        "x": {"type": "integer", "minimum": -9, "maximum": 9},
                        "y": {"type": "integer", "minimum": -9, "maximum": 9},
                    },
                    "required": ["x", "y"],
                }
            },
            "type": "object",
            "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
            "required": ["start", "end"],
        },
    ),
    (
        "deep_nesting",
        {
            "type": "object",
            "properties": {
                "a": {
                    "type": "object",
                    "properties": {
                        "b": {
                            "type": "object",
                            "properties": {
                                "c": {
                                    "type": "object",
                                    "properties": {
                                        "d": {"type": "integer", "minimum": 0, "maximum": 9}
                                    },
                                    "required": ["d"],
                                }
                            },
                            "required": ["c"],
                        }
                    },
                    "required": ["b"],
                }
            },
            "required": ["a"],
        },
    ),
    (
        "string_lengths",
        {
            "type": "object",
            "properties": {"code": {"type": "string", "minLength": 3, "maxLength": 6}},
            "required": ["code"],
        },
    ),
    (
        "exclusive_bounds",
        {
            "type": "object",
            "properties": {
                "ratio": {
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "exclusiveMaximum": 1,
                    "multipleOf": 0.125,
                }
            },
            "required": ["ratio"],
        },
    ),
    (
        "matrix",
        {
            "type": "object",
            "properties": {
                "rows": {
                    "type": "array",
                    "maxItems": 3,
                    "items": {
                        "type": "array",
                        "maxItems": 3,
                        "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    },
                }
            },
            "required": ["rows"],
        },
    ),
    (
        "tagged_union",
        {
            "type": "object",
            "properties": {
                "shape": {
                    "oneOf": [
                        {
                            "type": "object",
                            "properties": {
                                "kind": {"const": "circle"},
                                "r": {"type": "integer", "minimum": 1, "maximum": 9},
                            },
                            "required": ["kind", "r"],
                        },
                        {
                            "type": "object",
                            "properties": {
                                "kind": {"const": "square"},
                                "side": {"type": "integer", "minimum": 1, "maximum": 9},
                            },
                            "required": ["kind", "side"],
                        },
                    ]
                }
            },
            "required": ["shape"],
        },
    ),
    (
        "email_like",
        {
            "type": "object",
            "properties": {
                "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.(com|org)$"},
                "verified": {"type": "boolean"},
            },
            "required": ["email", "verified"],
        },
    ),
]
