"""temalign.yaml to `Settings`, or one `ConfigError` a person can act on.

Everything is checked here, before anything connects or moves: the file itself (exists, regular,
at most 1 MiB, UTF-8), the YAML (with line and column; repeated keys are errors, since YAML lets
the last one silently win), and every value against the schema. Each message names the file, the
key path (`wobble.fraction`) and the reason."""

from __future__ import annotations

import difflib
import os
import re
import reprlib
import stat
import typing
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from temalign import shipped
from temalign.config.schema import Settings, check_address
from temalign.errors import ConfigError

SYSTEM_CONFIG_PATH = Path("/etc/temalign/temalign.yaml")
MAX_CONFIG_BYTES = 1024 * 1024
MAX_NESTING = 64
MAX_REPORTED = 5

_MERGE_TAG = "tag:yaml.org,2002:merge"


def default_config_path() -> Path:
    """/etc/temalign/temalign.yaml where the site installed one, else the one shipped inside the
    package (temalign/config/temalign.yaml, see temalign.shipped)."""
    if SYSTEM_CONFIG_PATH.is_file():
        return SYSTEM_CONFIG_PATH
    packaged = shipped.config_path()
    if packaged.is_file():
        return packaged
    raise ConfigError(
        f"no configuration file: neither {SYSTEM_CONFIG_PATH} nor the shipped {packaged} "
        "exists; name one on the command line"
    )


def load_config(path: str | Path) -> Settings:
    """Read, parse and validate the config file at `path`; ConfigError names what is wrong."""
    return parse_config(_read(Path(path)), path)


def parse_config(raw: bytes, source: str | Path) -> Settings:
    """Validate config bytes as if read from `source` (named in messages; its directory is the base
    of relative paths). For a reload that must check a file before swapping settings, and for tests.

    The error's message quotes what it found in the file (for the person at the terminal); its
    summary names the file only (for the journal and the logs)."""
    name = str(source)
    try:
        return _parse(raw, name, source)
    except ConfigError as error:
        raise ConfigError(str(error), summary=f"{name}: not a usable temalign config (its content is not "
                          f"repeated here: `temalign config check {name}` says what is wrong)") from None


def _parse(raw: bytes, name: str, source: str | Path) -> Settings:
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{name}: {len(raw)} bytes, larger than the {MAX_CONFIG_BYTES}-byte limit "
                          "for a config file")
    text = _decode(raw, name)
    data = _parse_yaml(text, name)
    if data is None:
        raise ConfigError(f"{name}: the file is empty (or only comments); it needs at least "
                          "microscope.address (HOST:PORT of the protocol server)")
    if not isinstance(data, dict):
        raise ConfigError(f"{name}: the top level must be a mapping of sections "
                          f"({', '.join(s + ':' for s in Settings.model_fields)}), got {_kind(data)}")
    base_dir = Path(source).absolute().parent
    try:
        return Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as error:
        raise ConfigError(_format_errors(name, error)) from None


def apply_overrides(settings: Settings, microscope: str | None = None) -> Settings:
    """Settings with command-line overrides applied (`--microscope HOST:PORT`), checked like the file."""
    if microscope is None:
        return settings
    try:
        address = check_address(microscope)
    except ValueError as error:
        raise ConfigError(f"--microscope {microscope!r}: {error}") from None
    microscope_settings = settings.microscope.model_copy(update={"address": address})
    return settings.model_copy(update={"microscope": microscope_settings})


# --- the file -------------------------------------------------------------------------------------

def _read(path: Path) -> bytes:
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{name}: is a directory, expected a YAML file") from None
    except PermissionError:
        raise ConfigError(f"{name}: cannot read: permission denied") from None
    except (OSError, ValueError) as error:
        raise ConfigError(f"{name}: cannot open: {getattr(error, 'strerror', None) or error}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{name}: is a directory, expected a YAML file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{name}: not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{name}: {info.st_size} bytes, larger than the {MAX_CONFIG_BYTES}-byte "
                              "limit for a config file")
        chunks = []
        remaining = MAX_CONFIG_BYTES + 1
        while remaining > 0:
            chunk = os.read(fd, remaining)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except PermissionError:
        raise ConfigError(f"{name}: cannot read: permission denied") from None
    except OSError as error:
        raise ConfigError(f"{name}: cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)


def _decode(raw: bytes, name: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line, column = _line_column(raw[: error.start].decode("utf-8", errors="replace"))
        raise ConfigError(f"{name}: not UTF-8 text (byte 0x{raw[error.start]:02x} at line {line}, "
                          f"column {column}); save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _line_column(before: str) -> tuple[int, int]:
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


# --- YAML -----------------------------------------------------------------------------------------

class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (`1e-3` is a number, not text) and a nesting limit (deep
    nesting would otherwise end in a RecursionError instead of a message)."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                event = self.peek_event()  # type: ignore[no-untyped-call]  # unannotated in types-PyYAML
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str, name: str) -> object:
    loader: _Loader | None = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_repeated_keys(loader, node, name)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        raise ConfigError(f"{name}: not valid YAML {_yaml_reason(error)}") from None
    except yaml.reader.ReaderError as error:
        line, column = _line_column(text[: error.position])
        char = f"U+{error.character:04X}" if isinstance(error.character, int) else repr(error.character)
        raise ConfigError(f"{name}: not valid YAML at line {line}, column {column}: "
                          f"character {char} is not allowed in YAML text") from None
    except ConfigError:
        raise
    except Exception as error:  # the parser on untrusted text: any failure means "not usable YAML"
        raise ConfigError(f"{name}: not valid YAML: a value cannot be read: {error}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_reason(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    reason = error.problem or error.context or "syntax error"
    if error.context and error.problem:
        started = f" started at line {error.context_mark.line + 1}" if error.context_mark else ""
        reason = f"{error.context}{started}: {error.problem}"
    if "'\\t'" in reason:
        reason += " (YAML indents with spaces, not tabs)"
    return f"{where}: {reason}"


def _check_repeated_keys(loader: _Loader, root: yaml.Node, name: str) -> None:
    """Raise on a key given twice in one mapping (merge keys `<<` excepted: overriding is their point)."""
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, (*path, str(i))) for i, child in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[type, object], int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) \
                    else None
                try:
                    hash(key)
                except TypeError:
                    key = None
                if key is not None:
                    identity = (type(key), key)
                    line = key_node.start_mark.line + 1
                    if identity in first_line:
                        raise ConfigError(
                            f"{name}: {_join((*path, str(key)))}: given twice (lines {first_line[identity]} "
                            f"and {line}); YAML would silently keep only the last one, remove one of them"
                        )
                    first_line[identity] = line
                stack.append((value_node, (*path, str(key) if key is not None else "?")))


# --- schema errors ----------------------------------------------------------------------------------

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlevel = 1
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4

_EXPECTED = {
    "float_type": "a number",
    "int_type": "a whole number",
    "string_type": "text",
    "bool_type": "true or false",
    "model_type": "a mapping of keys",
    "dict_type": "a mapping of keys",
    "path_type": "a path (text)",
}


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple | set):
        return "a list"
    return type(value).__name__


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return _repr.repr(value)


def _join(path: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _field_at(path: tuple[int | str, ...]) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last key of `path` and that key's field (None: not in the schema)."""
    model: type[BaseModel] | None = Settings
    field = None
    for i, part in enumerate(path):
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None, None
        field = model.model_fields[part]
        if i < len(path) - 1:
            model = _section_type(field)
    return model, field


def _section_type(field: FieldInfo) -> type[BaseModel] | None:
    annotation = field.annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, field in model.model_fields.items():
        sub = _section_type(field)
        if sub is None:
            yield (*prefix, name)
        else:
            yield from _leaf_paths(sub, (*prefix, name))


def leaf_keys() -> list[str]:
    """Every settable key as a dotted path (`wobble.fraction`), in schema order."""
    return [".".join(path) for path in _leaf_paths(Settings)]


def _bounds(field: FieldInfo | None) -> dict[str, float]:
    if field is None:
        return {}
    metadata = list(field.metadata)
    for arg in typing.get_args(field.annotation):
        for item in getattr(arg, "__metadata__", ()):
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    bounds: dict[str, float] = {}
    for item in metadata:
        for attr in ("gt", "ge", "lt", "le"):
            value = getattr(item, attr, None)
            if value is not None:
                bounds[attr] = value
    return bounds


def _range_text(bounds: dict[str, float]) -> str:
    shown = {op: f"{value:g}" for op, value in bounds.items()}
    if "ge" in shown and "le" in shown:
        return f"from {shown['ge']} to {shown['le']}"
    words = {"gt": "more than", "ge": "at least", "lt": "less than", "le": "at most"}
    return " and ".join(f"{words[op]} {shown[op]}" for op in ("gt", "ge", "lt", "le") if op in shown)


def _first_required(
    model: type[BaseModel], prefix: tuple[int | str, ...]
) -> tuple[tuple[int | str, ...], FieldInfo | None]:
    for name, field in model.model_fields.items():
        if field.is_required():
            sub = _section_type(field)
            return _first_required(sub, (*prefix, name)) if sub else ((*prefix, name), field)
    return prefix, None


def _describe(error: ErrorDetails) -> tuple[str, str]:
    """(key path, reason) for one pydantic error, in the words of someone editing the YAML file."""
    loc = tuple(error["loc"])
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    if kind == "config_key":
        return _join(loc + tuple(ctx["key"].split("."))), ctx["reason"]
    if kind == "missing":
        field = _field_at(loc)[1]
        section = _section_type(field) if field is not None else None
        if section is not None:
            loc, field = _first_required(section, loc)
        what = f": {field.description}" if field is not None and field.description else ""
        return _join(loc), f"required key is missing{what}"
    if kind == "extra_forbidden":
        return _join(loc), _unknown_key_reason(loc)
    if kind == "invalid_key":
        return _join(loc[:-1]), f"keys must be text, got {_kind(value)} {_show(value)}"
    if kind == "literal_error":
        return _join(loc), f"must be one of {ctx.get('expected', '')}, got {_show(value)}"
    if kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"}:
        allowed = _range_text(_bounds(_field_at(loc)[1]))
        return _join(loc), f"{_show(value)} is out of range (allowed: {allowed or 'a finite number'})"
    if kind in _EXPECTED:
        hint = ""
        if isinstance(value, bool) and kind == "string_type":
            hint = " (YAML reads unquoted yes/no/on/off/true/false as booleans: quote it)"
        elif isinstance(value, str) and kind in {"float_type", "int_type"}:
            hint = " (remove the quotes)"
        return _join(loc), f"expected {_EXPECTED[kind]}, got {_kind(value)} {_show(value)}{hint}"
    message = error.get("msg", "invalid value").removeprefix("Value error, ")
    return _join(loc), message


def _unknown_key_reason(loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    model: type[BaseModel] | None = Settings
    if loc[:-1]:
        parent_field = _field_at(loc[:-1])[1]
        model = _section_type(parent_field) if parent_field is not None else None
    valid = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"unknown key; did you mean {_join((*loc[:-1], close[0]))}?"
    elsewhere = [path for path in leaf_keys() if path.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"unknown key here; {key} belongs at {elsewhere[0]}"
    return f"unknown key (valid here: {', '.join(valid)})" if valid else "unknown key"


def _format_errors(name: str, error: ValidationError) -> str:
    described = [_describe(item) for item in error.errors(include_url=False)]
    key, reason = described[0]
    lines = [f"{name}: {key}: {reason}"]
    for key, reason in described[1:MAX_REPORTED]:
        lines.append(f"  also {key}: {reason}")
    if len(described) > MAX_REPORTED:
        lines.append(f"  and {len(described) - MAX_REPORTED} more")
    return "\n".join(lines)
