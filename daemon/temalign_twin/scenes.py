"""What the beam passes through on its way to the camera: the scenes of a holography session.

A scene is a transmission map over the camera's field, fixed to the detector (the specimen and
the biprism sit below the condenser system, so the beam's disc moves across them while they stay
put) and multiplying the illumination as twin.md's specimen texture does:

- `specimen`: the amorphous-carbon-like texture everywhere (twin.md's default specimen);
- `vacuum`: nothing in the beam;
- `specimen-edge`: holography's reference wave needs vacuum, so half the field is vacuum and half
  a specimen with a strong texture and a mean transmission of 40 to 70 %, across a rough edge;
- `biprism`: the biprism wire's shadow, a dark band with bright Fresnel fringes along both sides;
- `holography`: the two together, the wire in the vacuum beside the edge and, with the wire
  biased, the interference fringes of the hologram in the overlap around its shadow.

The named scenes of `--scene` (`SCENES`) are settings overrides, so the elliptical (stigmated)
illumination holography uses is a scene too (`stigmated`, `stigmated-holography`). Everything
here is a function of the seed and the settings, cached per camera size by render.Specimen."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from temalign.optics import pixel_to_fov
from temalign.values import JsonObject
from temalign_twin.settings import SceneSettings

STREAM_SCENE = 23
EDGE_WAVES = 6
"""Sinusoids that make a specimen edge rough (random wavelengths of a fifth to a whole FOV)."""


def _rotated(xs: np.ndarray, ys: np.ndarray, angle_deg: float, offset: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance from a line whose normal points at `angle_deg` (from +x towards +y) and
    which passes `offset` FOV from the centre, and the position along it, on the grid (xs, ys)."""
    a = math.radians(angle_deg)
    across = xs[None, :] * math.cos(a) + ys[:, None] * math.sin(a) - offset
    along = -xs[None, :] * math.sin(a) + ys[:, None] * math.cos(a)
    return across, along


def _step(distance: np.ndarray, pixel: float) -> np.ndarray:
    """0 to 1 across an edge at distance 0, softened over about a pixel (what a pixel averages)."""
    out: np.ndarray = 0.5 * (1.0 + np.tanh(distance / max(pixel, 1e-6)))
    return out


def _specimen_side(scene: SceneSettings, xs: np.ndarray, ys: np.ndarray, seed: int) -> np.ndarray:
    """Fraction (0..1) of each pixel covered by specimen: past a rough edge, softened by a pixel."""
    across, along = _rotated(xs, ys, scene.edge_angle_deg, scene.edge_offset_fov)
    rng = np.random.default_rng([seed, STREAM_SCENE])
    wavelengths = rng.uniform(0.2, 1.0, EDGE_WAVES)
    phases = rng.uniform(0.0, 2.0 * math.pi, EDGE_WAVES)
    weights = rng.standard_normal(EDGE_WAVES)
    weights *= scene.edge_roughness_fov / max(float(np.sqrt(np.sum(weights**2) / 2.0)), 1e-12)
    rough = sum(w * np.sin(2.0 * math.pi * along / lam + p)
                for w, lam, p in zip(weights, wavelengths, phases, strict=True))
    return _step(across - rough, float(xs[1] - xs[0]))


def _wire(scene: SceneSettings, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The biprism wire's shadow: a dark band (what the wire scatters out of the aperture), bright
    Fresnel fringes outside each edge (the first a third of a period out, the later ones closer,
    as at a straight edge; the same chirp as the disc's own fringes), and, with the wire biased,
    the hologram's fringes where the two waves overlap."""
    across, _ = _rotated(xs, ys, scene.wire_angle_deg - 90.0, scene.wire_offset_fov)
    half = 0.5 * scene.wire_width_fov
    outside = np.abs(across) - half
    lit = _step(outside, 0.7 * float(xs[1] - xs[0]))
    beyond = np.maximum(outside, 0.0) / scene.wire_fringe_period_fov
    chirp = np.sin(math.pi * beyond * (1.0 + beyond))
    fringes = 1.0 + scene.wire_fringe_amplitude * np.exp(-beyond / 3.0) * chirp
    out: np.ndarray = scene.wire_shadow_transmission + (1.0 - scene.wire_shadow_transmission) * lit * fringes
    if scene.kind == "holography" and scene.hologram_fringe_contrast > 0.0:
        overlap = np.abs(across) < 0.5 * scene.hologram_overlap_fov
        hologram = 1.0 + scene.hologram_fringe_contrast * np.cos(
            2.0 * math.pi * across / scene.hologram_fringe_period_fov)
        out = np.where(overlap, out * hologram, out)
    return out


def scene_transmission(scene: SceneSettings, width: int, height: int, seed: int,
                       specimen_texture: np.ndarray | None) -> np.ndarray | None:
    """The scene's transmission at each camera pixel (float32, height x width), or None where
    nothing is in the beam. `specimen_texture` (mean 1) is the texture a specimen shows: the
    twin's amorphous texture for `specimen`, the scene's own strong one past an edge."""
    if scene.kind == "specimen":
        return specimen_texture
    if scene.kind == "vacuum":
        return None
    xs, ys = pixel_to_fov(np.arange(width), np.arange(height), width, height)
    out = np.ones((height, width))
    if scene.kind in ("specimen-edge", "holography"):
        side = _specimen_side(scene, xs, ys, seed)
        texture = specimen_texture if specimen_texture is not None else 1.0
        out = out * (1.0 - side + side * scene.specimen_transmission * texture)
    if scene.kind in ("biprism", "holography"):
        out = out * _wire(scene, xs, ys)
    result: np.ndarray = np.maximum(out, 0.0).astype(np.float32)
    return result


@dataclass(frozen=True)
class Scene:
    """A named scene of `--scene`: settings overrides and what a microscopist would call it."""

    name: str
    description: str
    overrides: JsonObject


_HOLOGRAPHY_ELLIPSE: JsonObject = {"ellipticity": 0.5, "ellipse_angle_deg": 0.0}
"""Holography's elliptical illumination: long axis across the biprism wire (the default wire runs
along y), so the overlap of the two waves gets the most current."""

SCENES: dict[str, Scene] = {s.name: s for s in (
    Scene("specimen", "The twin's default: an amorphous-carbon-like texture over the whole field.",
          {"scene": {"kind": "specimen"}}),
    Scene("vacuum", "Nothing in the beam.", {"scene": {"kind": "vacuum"}}),
    Scene("specimen-edge", "Half the field vacuum (the reference wave), half a strongly textured "
          "specimen that passes 40 to 70 % of the beam, across a rough edge.",
          {"scene": {"kind": "specimen-edge"}}),
    Scene("biprism", "The biprism wire's dark shadow with bright Fresnel fringes along it, across "
          "the disc; vacuum beside it.", {"scene": {"kind": "biprism"}}),
    Scene("holography", "A hologram's set-up: the specimen edge, the biased biprism wire in the "
          "vacuum beside it and the interference fringes where the two waves overlap.",
          {"scene": {"kind": "holography"}}),
    Scene("stigmated", "Vacuum under elliptical (stigmated) illumination of ellipticity 0.5: "
          "with traced optics, real astigmatism with its two line foci inside the wobble.",
          {"scene": {"kind": "vacuum"}, "optics": _HOLOGRAPHY_ELLIPSE}),
    Scene("stigmated-holography", "The holography scene under the elliptical illumination that "
          "holography uses (ellipticity 0.5, long axis across the wire).",
          {"scene": {"kind": "holography"}, "optics": _HOLOGRAPHY_ELLIPSE}),
)}


def scene(name: str) -> Scene:
    """The scene called `name`; KeyError names the known ones."""
    try:
        return SCENES[name]
    except KeyError:
        raise KeyError(f"unknown scene {name!r}; known: {', '.join(SCENES)}") from None
