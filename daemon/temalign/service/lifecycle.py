"""Which model is live, which is in shadow, and the swaps between them (issue 14): what
`temalign model status|shadow|promote|rollback|reset` do to a running daemon.

The live model is the promoted one while the model store (record.model_store) has one, else the
config's `estimator.model`; the config file is never edited. Every model the daemon is to run is
opened by `estimate.model_estimator.open_model`, exactly as the configured one is at start, so a
candidate that would not start the daemon is refused before anything changes. Each swap is
journaled before and after (`model.swap`), saved in one atomic write, and only then made live in
the running estimator; the callers hold the daemon's cycle lock, so no cycle sees half a swap.
The promotion rule itself is decide.promotion.may_promote."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from temalign import shipped
from temalign.config.schema import Settings
from temalign.decide.promotion import Evidence, may_promote, summary
from temalign.estimate.calibration import Calibration
from temalign.estimate.model_estimator import ModelError, ModelEstimator, file_fingerprint, open_model
from temalign.record.metrics import Metrics
from temalign.record.model_store import ModelParts, ModelStore, ModelStoreError, Shadowed, StoredModel
from temalign.service.cycle import Parts
from temalign.service.shadow import Shadow
from temalign.timetext import iso_time
from temalign.values import JsonObject

PROMOTED = "promoted"
CONFIG = "config"


class Refused(ValueError):
    """A model verb that changed nothing, and why (the control socket replies with it)."""


class ModelLifecycle:
    """The model store and the parts it names, for one daemon."""

    def __init__(self, settings: Settings, frames: str, metrics: Metrics) -> None:
        self.frames = frames
        self.metrics = metrics
        self.store = ModelStore(settings.paths.state_dir)
        self.parts: ModelParts = self.store.load()

    # ---- start ------------------------------------------------------------------------------------

    def open_live(self, settings: Settings) -> ModelEstimator:
        """The model to start with: the promoted one if any (ModelError naming it and the way back
        when it no longer fits the config), else the config's."""
        live = self.parts.live
        if live is None:
            model = open_model(settings, self.frames)
        else:
            try:
                model = open_model(settings, self.frames, self.store.file(live))
            except ModelError as error:
                raise ModelError(f"the promoted model {live.name} ({live.fingerprint}, kept in "
                                 f"{self.store.root}) cannot run with this config: {error}; `temalign model "
                                 "reset` (the daemon stopped too) goes back to estimator.model") from None
        _ = model.fingerprint  # the file as it was opened, whatever happens to it later
        return model

    def resume_shadow(self, parts: Parts) -> str | None:
        """The candidate in shadow before the restart, opened again; one that no longer opens is
        taken out of shadow (it never decides anything, so it does not stop the start) and the
        returned sentence says why."""
        shadowed = self.parts.shadow
        if shadowed is None:
            return None
        try:
            candidate = open_model(parts.settings, self.frames, self.store.file(shadowed.model))
        except ModelError as error:
            parts.journal.append("model.shadow", action="stop", why=str(error),
                                 candidate=shadowed.model.to_json(), evidence=shadowed.evidence.to_json())
            self._save(replace(self.parts, shadow=None))
            return f"the candidate in shadow cannot run any more and was taken out of shadow: {error}"
        evidence = shadowed.evidence
        if evidence.live_fingerprint != parts.estimator.model.fingerprint:
            evidence = self._fresh_evidence(parts, shadowed.model,
                                            "the live model changed since the shadow began")
        parts.shadow = self._shadow(parts, candidate, shadowed.model, evidence)
        return None

    # ---- the verbs --------------------------------------------------------------------------------

    def start_shadow(self, parts: Parts, asked: object, now: float) -> str | None:
        """`temalign model shadow PATH`: copy the candidate in, open it as the daemon opens its
        model, and read it beside the live one from the next stack on. Returns None when that very
        candidate is in shadow already."""
        source = candidate_path(asked)
        try:
            open_model(parts.settings, self.frames, source)
        except ModelError as error:
            raise Refused(f"model shadow: refused, nothing changed: {error}") from None
        shadowed = self.parts.shadow
        if shadowed is not None:
            if shadowed.model.fingerprint == file_fingerprint(source):
                return None
            raise Refused(f"model shadow: {shadowed.model.name} ({shadowed.model.fingerprint}) is in shadow "
                          f"already ({shadowed.evidence.verified} verified cycles): `temalign model shadow "
                          "--stop` first")
        live = parts.estimator.model
        try:
            stored = self.store.keep(source, origin="candidate", since=iso_time(now))
            candidate = open_model(parts.settings, self.frames, self.store.file(stored))
        except (ModelError, ModelStoreError) as error:
            self.store.collect(self.parts)
            raise Refused(f"model shadow: refused, nothing changed: {error}") from None
        if stored.fingerprint == live.fingerprint:
            self.store.collect(self.parts)
            raise Refused(f"model shadow: {source} is the live model itself ({live.fingerprint}): "
                          "nothing to compare")
        evidence = Evidence(live.fingerprint, stored.fingerprint, iso_time(now))
        parts.journal.append("model.shadow", action="start", candidate=stored.to_json(),
                             live_fingerprint=live.fingerprint)
        self._save(replace(self.parts, shadow=Shadowed(stored, evidence)))
        parts.shadow = self._shadow(parts, candidate, stored, evidence)
        note = matrix_note(parts.estimator.calibration, candidate)
        return (f"{stored.name} ({stored.fingerprint}) is in shadow beside {live.path.name} "
                f"({live.fingerprint}) from the next wobble on; {note}")

    def stop_shadow(self, parts: Parts) -> str | None:
        """`temalign model shadow --stop`; None when no candidate is in shadow."""
        shadowed = self.parts.shadow
        if shadowed is None:
            return None
        evidence = parts.shadow.evidence if parts.shadow is not None else shadowed.evidence
        parts.journal.append("model.shadow", action="stop", why="stopped by a person",
                             candidate=shadowed.model.to_json(), evidence=evidence.to_json())
        self._save(replace(self.parts, shadow=None))
        parts.shadow = None
        self.metrics.set_shadow(None)
        return f"{shadowed.model.name} is out of shadow ({summary(evidence)})"

    def promote(self, parts: Parts, now: float, who: str) -> str:
        """`temalign model promote`: the candidate becomes the live model if the evidence allows
        (decide.promotion), the live one is kept as the previous."""
        shadow = parts.shadow
        if shadow is None or self.parts.shadow is None:
            raise Refused("model promote: refused: no candidate in shadow (`temalign model shadow PATH` "
                          "first)")
        live = parts.estimator.model
        verdict = may_promote(shadow.evidence, live_fingerprint=live.fingerprint,
                              min_verified=parts.settings.models.promote_min_verified)
        if not verdict.promote:
            parts.journal.append("model.promote", refused=verdict.reason, detail=verdict.detail)
            raise Refused(f"model promote: refused ({verdict.reason}): {verdict.detail}")
        previous = self._keep_live(parts, now)
        promoted = replace(shadow.stored, since=iso_time(now), evidence=shadow.evidence)
        new = ModelParts(live=promoted, previous=previous, shadow=None)
        self._swap(parts, "promote", shadow.candidate, new, who, evidence=shadow.evidence.to_json())
        self.metrics.set_shadow(None)
        return (f"promoted {promoted.name} ({promoted.fingerprint}) in place of {previous.name} "
                f"({previous.fingerprint}), on this evidence: {verdict.detail}; "
                f"{matrix_note(parts.estimator.calibration, shadow.candidate)}; `temalign model rollback` "
                "goes back")

    def rollback(self, parts: Parts, now: float, who: str) -> str:
        """`temalign model rollback`: the previous model is live again (the config's own when that
        is where it came from and the config still names that very file)."""
        previous = self.parts.previous
        if previous is None:
            raise Refused("model rollback: refused: no previous model is kept (nothing was promoted, or "
                          "the last rollback or reset already went back); `temalign model status` shows "
                          "the parts")
        try:
            model = open_model(parts.settings, self.frames, self.store.file(previous))
        except ModelError as error:
            raise Refused(f"model rollback: refused, nothing changed: the previous model cannot run with "
                          f"this config: {error}") from None
        config_again = previous.origin == CONFIG and _fingerprint_or_none(parts.settings.estimator.model) \
            == previous.fingerprint
        live = None if config_again else replace(previous, since=iso_time(now))
        new = ModelParts(live=live, previous=None, shadow=self._rebase_shadow(parts, model))
        self._swap(parts, "rollback", model, new, who)
        where = "the config's estimator.model again" if config_again else f"kept in {self.store.root}"
        return (f"rolled back to {previous.name} ({previous.fingerprint}), {where}; "
                f"{matrix_note(parts.estimator.calibration, model)}")

    def reset(self, parts: Parts, now: float, who: str) -> str | None:
        """`temalign model reset`: the config's `estimator.model` is live again (the promoted one is
        kept as the previous, so a rollback undoes the reset); None when it is already."""
        if self.parts.live is None:
            return None
        try:
            model = open_model(parts.settings, self.frames)
        except ModelError as error:
            raise Refused(f"model reset: refused, nothing changed: {error}") from None
        previous = replace(self.parts.live, since=iso_time(now))
        new = ModelParts(live=None, previous=previous, shadow=self._rebase_shadow(parts, model))
        self._swap(parts, "reset", model, new, who)
        return (f"the config's estimator.model {model.path.name} ({model.fingerprint}) is live again; "
                f"{previous.name} is kept as the previous (`temalign model rollback`); "
                f"{matrix_note(parts.estimator.calibration, model)}")

    # ---- what status shows ------------------------------------------------------------------------

    def live_source(self, settings: Settings, model: ModelEstimator) -> JsonObject:
        """Which model is live and why, for `temalign status` and `temalign model status`."""
        live = self.parts.live
        if live is None:
            return {"source": CONFIG, "fingerprint": model.fingerprint, "path": str(model.path),
                    "why": "the config's estimator.model (no promoted model)"}
        return {"source": PROMOTED, "fingerprint": live.fingerprint, "path": str(self.store.file(live)),
                "copied_from": live.source, "since": live.since,
                "why": f"promoted {live.since}; it overrides estimator.model {settings.estimator.model} "
                       "until `temalign model rollback` or `temalign model reset`"}

    def status(self, parts: Parts) -> JsonObject:
        """Everything `temalign model status` shows."""
        model = parts.estimator.model
        live = {"file": model.path.name, **self.live_source(parts.settings, model),
                "evidence": None if self.parts.live is None or self.parts.live.evidence is None
                else self.parts.live.evidence.to_json()}
        shadow = parts.shadow
        verdict = None
        if shadow is not None:
            said = may_promote(shadow.evidence, live_fingerprint=model.fingerprint,
                               min_verified=parts.settings.models.promote_min_verified)
            verdict = {"promote": said.promote, "reason": said.reason, "detail": said.detail}
        return {"live": live, "candidate": None if shadow is None else shadow.to_json(),
                "previous": None if self.parts.previous is None else self.parts.previous.to_json(),
                "promotion": verdict, "promote_min_verified": parts.settings.models.promote_min_verified,
                "config_model": str(parts.settings.estimator.model), "store": str(self.store.root)}

    # ---- the steps --------------------------------------------------------------------------------

    def _shadow(self, parts: Parts, candidate: ModelEstimator, stored: StoredModel,
                evidence: Evidence) -> Shadow:
        return Shadow(candidate, stored, evidence, journal=parts.journal, metrics=self.metrics,
                      save=lambda kept: self._save(self.parts.with_evidence(kept)))

    def _save(self, new: ModelParts) -> None:
        self.store.save(new)
        self.parts = new

    def _keep_live(self, parts: Parts, now: float) -> StoredModel:
        """The live model as the previous one: the stored record when it was promoted, else the
        config's file copied in (refused if it changed since the daemon opened it)."""
        if self.parts.live is not None:
            return replace(self.parts.live, since=iso_time(now))
        live = parts.estimator.model
        try:
            kept = self.store.keep(live.path, origin=CONFIG, since=iso_time(now))
        except ModelStoreError as error:
            raise Refused(f"model promote: refused, nothing changed: the live model cannot be kept for a "
                          f"rollback: {error}") from None
        if kept.fingerprint != live.fingerprint:
            self.store.collect(self.parts)
            raise Refused(f"model promote: refused, nothing changed: {live.path} changed since the daemon "
                          f"opened it ({live.fingerprint}, now {kept.fingerprint}), so it could not be "
                          "rolled back to: restart the daemon first")
        return kept

    def _fresh_evidence(self, parts: Parts, stored: StoredModel, why: str) -> Evidence:
        live = parts.estimator.model.fingerprint
        evidence = Evidence(live, stored.fingerprint, iso_time(parts.wall()))
        parts.journal.append("model.shadow", action="restart", why=why, live_fingerprint=live,
                             candidate=stored.to_json())
        self._save(self.parts.with_evidence(evidence))
        return evidence

    def _rebase_shadow(self, parts: Parts, new_live: ModelEstimator) -> Shadowed | None:
        """After a rollback or reset the candidate stays in shadow, its evidence begun anew against
        the model that is live now (what it showed was against another)."""
        shadow = parts.shadow
        if shadow is None:
            return None
        fresh = Evidence(new_live.fingerprint, shadow.stored.fingerprint, iso_time(parts.wall()))
        shadow.evidence = fresh
        self.metrics.set_shadow(fresh)
        return Shadowed(shadow.stored, fresh)

    def _swap(self, parts: Parts, kind: str, model: ModelEstimator, new: ModelParts, who: str,
              evidence: JsonObject | None = None) -> None:
        """Journal the swap, save the new parts, then make `model` live in the running estimator."""
        old = parts.estimator.model
        op = parts.journal.intent("model.swap", swap=kind, by=who, evidence=evidence,
                                  **{"from": _named(old), "to": _named(model)})
        self._save(new)
        parts.estimator.model = model
        if new.shadow is None:
            parts.shadow = None
        self.metrics.set_model(model.identity)
        self.metrics.model_swapped(kind)
        parts.journal.outcome(op, "model.swap", ok=True, swap=kind,
                              live=new.live.to_json() if new.live else None,
                              previous=new.previous.to_json() if new.previous else None)


def _named(model: ModelEstimator) -> JsonObject:
    return {"file": str(model.path), "fingerprint": model.fingerprint}


def _fingerprint_or_none(path: Path) -> str | None:
    try:
        return file_fingerprint(path)
    except OSError:
        return None


def candidate_path(asked: object) -> Path:
    """The candidate a request names: a shipped model's name (`wobble_physics`) or an absolute
    path (the CLI makes a relative one absolute where the person typed it)."""
    if not isinstance(asked, str) or not asked.strip():
        raise Refused("model shadow: path must be the path of a .tflite (or a shipped model's name)")
    if shipped.is_model_name(asked):
        try:
            return shipped.model_path(asked)
        except ValueError as error:
            raise Refused(f"model shadow: {error}") from None
    path = Path(asked)
    if not path.is_absolute():
        raise Refused(f"model shadow: {asked!r} is not an absolute path (the daemon has no working "
                      "directory of yours)")
    return path


def matrix_note(calibration: Calibration | None, model: ModelEstimator) -> str:
    """How `model`'s reading becomes a delta with the stored calibration: through a model matrix
    measured for this very file, else through the classical M (a calibration's model matrix
    belongs to the model file it was measured for, estimate.calibration)."""
    if calibration is None:
        return "no calibration yet: `temalign calibrate` measures M (and this model's own matrix)"
    if calibration.model_matrix is not None and calibration.model_fingerprint == model.fingerprint:
        return "it uses the model matrix the calibration measured for this very file"
    how = "its walk goes through the classical M" if model.reads_spots else \
        "its output is re-mapped through the classical M"
    own = ("" if calibration.model_matrix is None else
           f" (the calibration's model matrix was measured for {calibration.model_fingerprint})")
    return f"{how}{own}; `temalign calibrate` measures one for it"


def reset_stopped(settings: Settings, now: float, who: str) -> str | None:
    """`temalign model reset` with the daemon stopped (a promoted model that no longer fits the
    config keeps it from starting): the config's `estimator.model` is live at the next start, the
    promoted model kept as the previous; journaled. None when no promoted model is in place. The
    candidate in shadow stays; its evidence begins anew at the start (ModelLifecycle.resume_shadow)."""
    from temalign.record.journal import Journal

    store = ModelStore(settings.paths.state_dir)
    parts = store.load()
    if parts.live is None:
        return None
    previous = replace(parts.live, since=iso_time(now))
    with Journal(settings.paths.state_dir, max_bytes=settings.journal.max_bytes,
                 keep_files=settings.journal.keep_files) as journal:
        op = journal.intent("model.swap", swap="reset", by=who, daemon="stopped",
                            **{"from": {"file": parts.live.file, "fingerprint": parts.live.fingerprint},
                               "to": {"file": str(settings.estimator.model)}})
        store.save(replace(parts, live=None, previous=previous))
        journal.outcome(op, "model.swap", ok=True, swap="reset", live=None, previous=previous.to_json())
    return (f"the config's estimator.model {settings.estimator.model} is live from the next start; "
            f"{previous.name} is kept as the previous (`temalign model rollback`)")
