"""`temalign config check|show [FILE]`: validate a config file before the daemon ever reads it.

A bad file raises ConfigError, which temalign.cli prints as one `temalign: error: ...` and turns
into exit status 2. `check` also opens the configured model as the daemon will (open_model): a
model or card that is missing, invalid, made for another wobble or source, not evaluated or
evaluated over `estimator.max_model_rmse_percent` (decide.model_gate) is a ModelError, exit
status 2 as well, naming the file and the number that failed. pydantic, yaml and LiteRT are
imported inside the handlers so `temalign --help` and the other subcommands stay quick."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.config.schema import Settings
    from temalign.values import JsonObject

FILE_HELP = "config file (default: /etc/temalign/temalign.yaml, else the one shipped in the package)"


def register(subparsers: Subparsers) -> None:
    """Add the `config` subcommand with its `check` and `show` actions."""
    parser = subparsers.add_parser(
        "config",
        help="check or show the daemon's configuration file",
        description="Validate temalign.yaml without connecting to anything. A bad file is reported "
                    "as one line naming the file, the key and the reason, with exit status 2.",
    )
    actions = parser.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    for name, handler, summary in (
        ("check", check, "validate FILE and open its model; print FILE: OK and a summary, exit 0 "
                         "(2 on a bad file, model or card)"),
        ("show", show, "print the effective settings of FILE, defaults filled in, as YAML"),
    ):
        action = actions.add_parser(name, help=summary, description=summary)
        action.add_argument("file", nargs="?", type=Path, metavar="FILE", help=FILE_HELP)
        action.add_argument("--microscope", metavar="HOST:PORT",
                            help="override microscope.address, as `temalign run --microscope` would")
        action.set_defaults(handler=handler)


def _load(args: argparse.Namespace) -> tuple[Path, Settings]:
    from temalign.config.loader import apply_overrides, default_config_path, load_config

    path: Path = args.file if args.file is not None else default_config_path()
    return path, apply_overrides(load_config(path), args.microscope)


FRAMES_OF_SOURCE = {"camera": "raw", "screen": "display"}
"""The kind of frame each source.kind gives (temalign.wobble.sources), which the model's card must take."""


def check(args: argparse.Namespace) -> int:
    """Load and validate, open the model as the daemon will; print a short summary of what the
    daemon would do with it."""
    from temalign.estimate.model_estimator import open_model
    from temalign.record.model_store import ModelStore

    path, settings = _load(args)
    model = open_model(settings, FRAMES_OF_SOURCE[settings.source.kind])
    promoted = ModelStore(settings.paths.state_dir).load().live
    print(f"{path}: OK")
    for label, text in summary(settings, model.card):
        print(f"  {label:<11} {text}")
    if promoted is not None:
        print(f"  {'promoted':<11} {promoted.name} ({promoted.fingerprint}, in {settings.paths.state_dir}"
              "/models) is live instead of estimator.model until `temalign model rollback` or `temalign "
              "model reset`")
    return 0


def show(args: argparse.Namespace) -> int:
    """Print every setting as the daemon would use it (token_file shown, never the token)."""
    import yaml

    path, settings = _load(args)
    print(f"# effective settings of {path} (defaults filled in)")
    print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="")
    return 0


def _seconds(value: float) -> str:
    return f"{value:g} s"


def _model(settings: Settings, card: JsonObject | None) -> str:
    path = settings.estimator.model
    if card is None:
        described = "" if path.is_file() else " (MISSING)"
    else:
        if "wobble_range" in card:
            low, high = card["wobble_range"]
            wobbles = f"wobbles {low:g} to {high:g}"
        else:
            wobbles = f"wobble {card['wobble_fraction']:g}"
        evaluation = card.get("evaluation")
        evaluated = ("not evaluated" if not isinstance(evaluation, dict) else
                     f"evaluated RMSE {evaluation.get('rmse_percent')} % over "
                     f"{len(evaluation.get('sets', []))} sets")
        described = (f" (card: preprocess {card['preprocess']}, {wobbles}, {card['frames']} frames, "
                     f"{evaluated}, limit {settings.estimator.max_model_rmse_percent:g} %)")
    return f"{path}{described}; estimators must agree within {settings.estimator.agreement_units:g} units"


def summary(settings: Settings, card: JsonObject | None = None) -> list[tuple[str, str]]:
    """(label, text) lines describing loaded Settings for a person; `card`: the model's, once opened."""
    m, src, w = settings.microscope, settings.source, settings.wobble
    token = f"token from {m.token_file}" if m.token_file is not None else "no token"
    if src.kind == "camera":
        exposure = src.camera.exposure_s
        source = f"camera, exposure {_seconds(exposure) if exposure is not None else 'server default'}"
    else:
        r = src.screen.region
        display = src.screen.display or "$DISPLAY"
        source = (f"screen, {r.width}x{r.height} at ({r.left}, {r.top}) on {display}, "
                  f"latency {_seconds(src.screen.latency_s)}")
    state = settings.paths.state_dir
    sf, sc = settings.safety, settings.schedule
    checks = f"checks at most {_seconds(sc.check_interval_s)} apart" if sc.check_interval_s else "no checks"
    return [
        ("microscope", f"{m.address}, {token}; timeouts call {_seconds(m.call_timeout_s)}, "
                       f"connect {_seconds(m.connect_timeout_s)}, acquire {_seconds(m.acquire_timeout_s)}"),
        ("source", source),
        ("wobble", f"C1 ±{w.fraction * 100:g} % in 7 steps, settle {_seconds(w.settle_s)} each, "
                   f"{w.restore_attempts} tries to restore C1"),
        ("state", f"{state}{'' if state.is_dir() else ' (missing: created at start)'}"),
        ("logging", f"{settings.logging.level}, {settings.logging.format}"),
        ("model", _model(settings, card)),
        ("envelope", f"window ±{sf.window_units:g}, excursion {sf.max_excursion_units:g}, step "
                     f"{sf.max_step_units:g}, deadband {sf.deadband_units:g}, gain {sf.gain:g}, "
                     f"{sf.rate_limit_units_per_hour:g} units/h ({sf.on_limit} beyond), hold after "
                     f"{sf.hold_after_failures} failures"),
        ("schedule", (f"adaptive, {_seconds(sc.min_interval_s)} to {_seconds(sc.max_interval_s)} apart "
                      f"({checks}; {_seconds(sc.interval_s)} after an error or a refusal)" if sc.adaptive
                      else f"every {_seconds(sc.interval_s)}")
                     + f" (±{_seconds(sc.jitter_s)}), first start {sc.mode}"),
        ("control", f"{settings.control.socket}; metrics "
                    + (f"http://{settings.metrics.host}:{settings.metrics.port}/metrics"
                       if settings.metrics.enabled else "off")
                    + "; HTTP control " + (f"http://{settings.control.http_listen}/v1/ (token in "
                                           f"{settings.control.http_token_file})"
                                           if settings.control.http_listen else "off")),
    ]
