"""`temalign model status|shadow|promote|rollback|reset`: the live model, a candidate in shadow
beside it, and the swaps between them (service.lifecycle; docs/learning.md, "Shadow, promote,
rollback"). Each talks to the running daemon over the control socket, as the other verbs do;
`reset` also works with the daemon stopped (a promoted model that no longer fits the config keeps
the daemon from starting)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from temalign.service.cli import (
    _config_arg,
    _json_arg,
    _settings,
    _socket,
    _socket_arg,
    lsb_status,
)

if TYPE_CHECKING:
    from temalign.cli import Subparsers
    from temalign.values import JsonObject


def register(subparsers: Subparsers) -> None:
    """Add `model` with its actions."""
    parser = subparsers.add_parser(
        "model", help="the live model, a candidate in shadow, promote and roll back",
        description="Run a candidate model in shadow beside the live one (it reads every wobble, is "
                    "scored against every verified correction, and never moves anything), promote it "
                    "when it agreed with the verified outcomes at least as well as the live model over "
                    "models.promote_min_verified cycles, and roll back. Every swap is journaled.")
    actions = parser.add_subparsers(dest="model_action", required=True, metavar="ACTION")

    def action(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=summary, description=description)
        _config_arg(p)
        _socket_arg(p)
        _json_arg(p)
        return p

    p = action("status", "the live model and why, the candidate and its evidence, the previous",
               "Show which model is live and why (promoted, or the config's estimator.model), the "
               "candidate in shadow with its evidence (verified cycles, each model's RMS error against "
               "them) and whether it may be promoted, and the previous model a rollback restores, each "
               "with its fingerprint. Exit status as LSB says: 0 the daemon runs, 3 it does not, 4 its "
               "state cannot be told.")
    p.set_defaults(handler=status)

    p = action("shadow", "run a candidate beside the live model (or --stop it)",
               "Copy the candidate (a .tflite with its card beside it, or a shipped model's name) into "
               "the state directory, open it as the daemon opens its model (a bad one is refused and "
               "nothing changes), and read it beside the live model on every wobble from the next on. "
               "It never moves anything. --stop takes it out of shadow.")
    p.add_argument("path", nargs="?", metavar="PATH",
                   help="the candidate's .tflite (its card beside it, same name, .json), or a shipped "
                        "model's name such as wobble_physics")
    p.add_argument("--stop", action="store_true", help="take the candidate in shadow out of it")
    p.set_defaults(handler=shadow)

    p = action("promote", "swap the candidate in, if its shadow evidence allows",
               "Make the candidate in shadow the live model in the running daemon (no restart), keeping "
               "the live one for `temalign model rollback`. Refused, with the numbers, unless the "
               "candidate was scored on at least models.promote_min_verified verified cycles, read at "
               "least as many of their stacks as the live model, and its RMS error against them is at "
               "most the live model's. Exit status 1 when refused.")
    p.set_defaults(handler=lambda a: _model_verb(a, "model-promote"))

    p = action("rollback", "make the model a promotion (or reset) replaced live again",
               "Swap back to the previous model: the one the last promotion or reset replaced. Once "
               "rolled back there is no previous any more: a second rollback is refused (exit status 1).")
    p.set_defaults(handler=lambda a: _model_verb(a, "model-rollback"))

    p = action("reset", "go back to the config's estimator.model",
               "Make the config's estimator.model live again (the promoted model is kept as the previous, "
               "so `temalign model rollback` undoes this). With the daemon stopped, it takes effect at "
               "the next start.")
    p.set_defaults(handler=reset)


def _model_verb(args: argparse.Namespace, verb: str, extra: JsonObject | None = None) -> int:
    from temalign.service.control import request

    result = request(_socket(args), verb, extra or {})
    _print(args, result)
    return 0


def _print(args: argparse.Namespace, result: JsonObject) -> None:
    if args.json:
        print(json.dumps(result, indent=1, default=str))
        return
    if result.get("message"):
        print(result["message"])
    else:
        print(describe_models(result))


def status(args: argparse.Namespace) -> int:
    """LSB: 0 the daemon runs, 3 it does not, 4 its state is unknown."""
    return lsb_status(lambda: _model_verb(args, "model-status"))


def shadow(args: argparse.Namespace) -> int:
    from temalign import shipped
    from temalign.service.cli import UsageError

    if args.stop:
        if args.path is not None:
            raise UsageError("model shadow: give PATH or --stop, not both")
        return _model_verb(args, "model-shadow-stop")
    if args.path is None:
        raise UsageError("model shadow: give the candidate's PATH (or --stop)")
    path = args.path if shipped.is_model_name(args.path) else str(Path(args.path).expanduser().absolute())
    return _model_verb(args, "model-shadow", {"path": path})


def reset(args: argparse.Namespace) -> int:
    """Through the daemon when one runs, else on the state directory directly."""
    from temalign.service.control import is_running
    from temalign.service.lifecycle import reset_stopped

    sock = _socket(args)
    if is_running(sock):
        return _model_verb(args, "model-reset")
    said = reset_stopped(_settings(args), time.time(), "temalign model reset (daemon stopped)")
    text = said or "no promoted model: the config's estimator.model is live already"
    print(json.dumps({"message": text, "changed": said is not None}) if args.json else text)
    return 0


def _model_line(part: str, model: JsonObject | None) -> str:
    if not model:
        return f"{part}: none"
    name = model.get("file") or ""
    return f"{part}: {Path(str(name)).name} ({model.get('fingerprint')})"


def describe_models(s: JsonObject) -> str:
    """`temalign model status` for a person."""
    live = s.get("live") or {}
    lines = [f"{_model_line('live', live)}, {live.get('why')}"]
    candidate = s.get("candidate")
    lines.append(_model_line("candidate in shadow", candidate))
    if candidate:
        from temalign.decide.promotion import Evidence, summary

        evidence = Evidence.from_json(candidate["evidence"])
        lines.append(f"  since {evidence.started}: {summary(evidence)}")
        if candidate.get("failures"):
            lines.append(f"  {candidate['failures']} failures, the last: {candidate.get('last_failure')}")
        verdict = s.get("promotion") or {}
        lines.append("  promote: " + ("allowed" if verdict.get("promote") else
                                      f"not yet ({verdict.get('reason')}): {verdict.get('detail')}"))
    lines.append(_model_line("previous (rollback restores it)", s.get("previous")))
    return "\n".join(lines)
