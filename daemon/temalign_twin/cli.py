"""`temalign twin`: serve a digital twin of the column on TCP until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from temalign.errors import ConfigError

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.values import JsonObject
    from temalign_twin.settings import TwinSettings

DEFAULT_PORT = 7801


def register(subparsers: Subparsers) -> None:
    """Add the `twin` subcommand."""
    parser = subparsers.add_parser(
        "twin",
        help="serve a digital twin of the microscope (protocol v1 on TCP)",
        description="Serve a digital twin of the column: condenser aperture, C1 lens and camera over "
                    "protocol v1, plus twin.* methods (truth, clock, faults) for tests and benchmarks. "
                    "Settings apply in order: defaults, --preset, --optics/--column/--scene, --settings, "
                    "--set.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="TCP port (default %(default)s; 0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of drift, noise and specimen (default 0)")
    parser.add_argument("--time-scale", type=float, default=1.0, metavar="X",
                        help="twin seconds per wall second (default 1; 0: stepped, moved by twin.advance)")
    parser.add_argument("--preset", default="default", metavar="NAME",
                        help="named conditions (default, n14, n13, n10, n6, far, low-dose, large-aperture)")
    add_optics_arguments(parser)
    parser.add_argument("--settings", type=Path, metavar="FILE.yaml", help="YAML of TwinSettings overrides")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        dest="assignments",
                        help="override one knob, e.g. camera.width=512 (value read as YAML; repeatable)")
    parser.add_argument("--token-file", type=Path, metavar="F",
                        help="file holding the token hello must present")
    parser.add_argument("--viewer", action="store_true",
                        help="show the live-view window (for screen capture)")
    parser.add_argument("--viewer-position", metavar="X,Y", help="screen position of the viewer window")
    parser.set_defaults(handler=run)


def parse_assignment(text: str) -> JsonObject:
    """`section.key=value` as a nested override dict; the value is read as YAML."""
    import yaml

    path, sep, raw = text.partition("=")
    keys = [k.strip() for k in path.split(".")]
    if not sep or len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set expects SECTION.KEY=VALUE (e.g. camera.width=512), got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {path}: value {raw!r} is not valid YAML: {error}") from error
    out: JsonObject = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        out = {key: out}
    return out


def _load_file(path: Path) -> JsonObject:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read twin settings {path}: {error.strerror or error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        return {}
    if isinstance(data, dict) and set(data) == {"twin"}:
        data = data["twin"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of twin settings sections, got {type(data).__name__}")
    return data


def add_optics_arguments(parser: argparse.ArgumentParser, *, optics: str | None = None,
                         column: str | None = None, scene: str | None = None) -> None:
    """--optics, --column and --scene: the twin's optics, column and scene, for the twin and for
    every tool that runs one (benchmarks, acquisition, the fault campaign, the demo); the defaults
    (None: the twin's own) are the caller's."""
    from temalign_twin.columns import COLUMNS
    from temalign_twin.scenes import SCENES

    parser.add_argument("--optics", choices=("first-order", "traced"), default=optics,
                        help="how the disc is made: twin.md's first-order formulas (what conformance "
                             "checks) or traced through a column's optics "
                             f"(default {optics or 'first-order'})")
    parser.add_argument("--column", metavar="NAME", default=column,
                        help=f"the column traced optics trace ({', '.join(COLUMNS)}; default "
                             f"{column or 'reference'})")
    parser.add_argument("--scene", metavar="NAME", default=scene,
                        help=f"what the beam passes through ({', '.join(SCENES)}; "
                             f"default {scene or 'specimen'})")


def optics_overrides(optics: str | None, column_name: str | None, scene_name: str | None = None
                     ) -> JsonObject:
    """The settings layer of --optics, --column and --scene; --column without traced optics is an
    error (it only means something to them), and so is a column or scene that does not exist."""
    from temalign_twin.columns import column
    from temalign_twin.scenes import scene
    from temalign_twin.settings import deep_merge

    layer: JsonObject = {} if optics is None else {"optics": {"model": optics}}
    if column_name is not None:
        if optics != "traced":
            raise ConfigError(f"--column {column_name} picks the column of the traced optics: "
                              "add --optics traced")
        try:
            column(column_name)
        except KeyError as error:
            raise ConfigError(f"--column: {error.args[0]}") from None
        layer = {"optics": {"model": "traced", "column": column_name}}
    if scene_name is not None:
        try:
            layer = deep_merge(layer, scene(scene_name).overrides)
        except KeyError as error:
            raise ConfigError(f"--scene: {error.args[0]}") from None
    return layer


def build_settings(preset_name: str, settings_file: Path | None, assignments: list[str], *,
                   optics: str | None = None, column_name: str | None = None,
                   scene_name: str | None = None) -> TwinSettings:
    """TwinSettings from defaults, a preset, --optics/--column/--scene, a YAML file and --set
    overrides (in that order)."""
    from pydantic import ValidationError

    from temalign_twin.presets import preset
    from temalign_twin.settings import TwinSettings

    try:
        chosen = preset(preset_name)
    except KeyError as error:
        raise ConfigError(error.args[0]) from None
    layers = [("preset " + preset_name, chosen.overrides)]
    choice = optics_overrides(optics, column_name, scene_name)
    if choice:
        layers.append(("--optics/--column/--scene", choice))
    if settings_file is not None:
        layers.append((str(settings_file), _load_file(settings_file)))
    layers += [(f"--set {a}", parse_assignment(a)) for a in assignments]
    settings = TwinSettings()
    for where, overrides in layers:
        try:
            settings = settings.updated(overrides)
        except ValidationError as error:
            detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
            raise ConfigError(f"bad twin settings in {where}: {detail}") from None
    return settings


def _position(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.split(",")
    try:
        x, y = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--viewer-position expects X,Y in screen pixels, got {text!r}") from None
    return x, y


def _token(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"cannot read token file {path}: {error.strerror or error}") from error
    if not token:
        raise ConfigError(f"token file {path} is empty")
    return token


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM (or the viewer window closes); 0 on a clean stop."""
    import signal
    import sys
    import threading

    from temalign.clock import clock_for_scale
    from temalign_twin.model import Twin
    from temalign_twin.presets import PRESETS
    from temalign_twin.service import TwinServer

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0..65535, got {args.port}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {args.seed}")
    if not args.time_scale >= 0 or args.time_scale == float("inf"):
        raise ConfigError(f"--time-scale must be >= 0 (0: stepped), got {args.time_scale}")
    settings = build_settings(args.preset, args.settings, args.assignments, optics=args.optics,
                              column_name=args.column, scene_name=args.scene)
    position = _position(args.viewer_position)
    token = _token(args.token_file)
    seed = args.seed + PRESETS[args.preset].seed_offset
    twin = Twin(settings, clock_for_scale(args.time_scale), seed=seed)
    try:
        server = TwinServer(twin, host=args.host, port=args.port, token=token).start()
    except OSError as error:
        raise ConfigError(f"cannot listen on {args.host}:{args.port}: {error.strerror or error}") from error
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        host, port = server.address[:2]
        traced = (f", traced optics, column {settings.optics.column}"
                  if settings.optics.model == "traced" else "")
        scene = f", scene {args.scene}" if args.scene else ""
        print(f"temalign-twin listening on {host}:{port} (seed {seed}, time scale {args.time_scale:g}"
              f"{traced}{scene})", flush=True)
        if args.viewer:
            from temalign_twin.viewer import run_viewer

            run_viewer(twin, settings.display, position=position, stop_event=stop)
        else:
            while not stop.wait(0.5):
                pass
    finally:
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.stdout.flush()
    return 0

