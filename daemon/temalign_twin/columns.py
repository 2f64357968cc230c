"""Named columns for the twin's traced optics: the optics that twin.md's first-order formulas
summarise, one frozen description per microscope.

A column fixes what a real instrument fixes and an estimator cannot assume: the projection from
the C1 crossover plane to the camera (magnification, camera rotation, mirror), the C1 value of
maximal convergence c_f, how C1's Larmor rotation grows with its current, C1's spherical
aberration, the condenser aperture (radius, contaminated edge), the gun's angular emission and the
size of its crossover. `temalign_twin/traced.py` turns one of these and a lens value into a disc.

The reference column is chosen so that its traced optics reproduce the first-order constants
wherever the physics lets them (see docs/twin.md, "Traced optics"):

- the walk per unit misalignment: the projection scale `WALK_PER_POWER` (traced.py) is derived
  from D = 1.25 FOV, so the walk at small offsets and small wobbles is twin.md's exactly;
- the rotation: theta = camera rotation + 180 deg (the crossover inverts) + k I, with
  k c_f = 150 deg and a camera rotation of 60 deg gives 30 deg + 150 deg u exactly;
- the radius law: an aperture of 124.8 units gives 0.156 FOV at |g| = 1 (to the lens law and the
  spherical aberration of its edge rays), and a crossover image of sigma 0.0085 FOV gives the
  0.012 FOV focused spot (a Gaussian with the current and the peak intensity of a 0.012 FOV disc);
- what physics does not allow to vanish stays, at a typical size: the lens law (power as I^2),
  spherical aberration (Scherzer: never zero for a round lens), the emission fall-off, and the
  Fresnel fringes, which a crossover that large washes out to a few per cent (partial coherence:
  the same source makes the focused spot and the penumbra of every edge)."""

from __future__ import annotations

from dataclasses import dataclass

from temalign.optics import D_FOV, RADIUS_MIN, RADIUS_PER_G

REFERENCE_APERTURE_UNITS = RADIUS_PER_G / D_FOV * 1000.0
"""Aperture radius (motor units) whose shadow at |g| = 1 is 0.156 FOV with the walk of D = 1.25 FOV
per 1000 units: 124.8 units."""
SPOT_RADIUS_PER_SIGMA = 1.4142135623730951
"""Radius of the disc that carries a 2-D Gaussian spot's current at its peak intensity, in sigmas
(sqrt 2): how a focused spot that is not a disc gets the radius twin.md's law gives a disc (the
same current, the same saturation)."""


@dataclass(frozen=True)
class Column:
    """One microscope's fixed optics. Angles in degrees; FOV and motor units as in twin.md."""

    name: str
    description: str
    magnification: float
    """Projection scale relative to the reference column: the walk and the disc grow with it."""
    camera_rotation_deg: float
    """Rotation of the camera about the optic axis, from +x towards +y (y down)."""
    mirrored: bool
    """The projection flips the image (an odd number of inversions): y -> -y before the rotation."""
    c_f: float
    """C1 value (lens units, proportional to its current) that images the crossover on the camera."""
    larmor_deg_per_unit: float
    """C1's Larmor rotation per lens unit of current: theta_L = k I (absolute current, not u)."""
    cs_power_at_1000: float
    """Spherical aberration: extra C1 power, relative to its paraxial power, for a ray that crosses
    the lens 1000 motor units off axis (power grows as the square of the ray height)."""
    aperture_radius_units: float = REFERENCE_APERTURE_UNITS
    """Condenser aperture radius, motor units (it sits in C1's principal plane)."""
    edge_harmonics: tuple[tuple[int, float, float], ...] = ()
    """Contaminated, non-circular aperture edge: (n, relative amplitude, phase deg) terms of
    r(psi) = R (1 + sum a_n cos(n psi + phase_n)); empty for a clean round hole."""
    emission_sigma_units: float = 354.0
    """Gaussian angular emission of the gun, as a ray height in C1 (motor units): the current
    through the aperture falls off with its offset (80 % left at 240 units for the reference)."""
    crossover_sigma_fov: float = RADIUS_MIN / SPOT_RADIUS_PER_SIGMA
    """Gaussian sigma of the source crossover's image on the camera, FOV: the focused spot, the
    penumbra of every disc's edge and, through the partial coherence it implies, the damping of
    the Fresnel fringes (one and the same source)."""


REFERENCE = Column(
    "reference",
    "The first-order constants wherever physics allows: D = 1.25 FOV, theta = 30 + 150 u deg, "
    "0.156 FOV at |g| = 1, a 0.012 FOV focused spot; with C1's lens law, a typical spherical "
    "aberration and the gun's emission fall-off.",
    magnification=1.0, camera_rotation_deg=60.0, mirrored=False, c_f=1.2,
    larmor_deg_per_unit=125.0, cs_power_at_1000=0.022)

COLUMNS: dict[str, Column] = {c.name: c for c in (
    REFERENCE,
    Column("low-mag-mirrored",
           "Low magnification (0.7), mirrored camera at 180 deg, c_f 1.0, a weaker Larmor rotation "
           "(90 deg at focus: 5.4 deg across a 3 % wobble), stronger spherical aberration and a "
           "small, coherent crossover: strong Fresnel fringes and a tiny focused spot.",
           magnification=0.7, camera_rotation_deg=180.0, mirrored=True, c_f=1.0,
           larmor_deg_per_unit=90.0, cs_power_at_1000=0.035, emission_sigma_units=300.0,
           crossover_sigma_fov=0.0015),
    Column("high-mag-contaminated",
           "High magnification (1.3), camera at 0 deg, c_f 1.5, Larmor 90 deg at focus, and a "
           "contaminated aperture whose edge is not round (2- and 3-fold).",
           magnification=1.3, camera_rotation_deg=0.0, mirrored=False, c_f=1.5,
           larmor_deg_per_unit=60.0, cs_power_at_1000=0.018,
           edge_harmonics=((2, 0.025, 40.0), (3, 0.015, -70.0)), emission_sigma_units=450.0,
           crossover_sigma_fov=0.006),
    Column("quarter-turn-mirrored",
           "Magnification 0.85, mirrored camera at 90 deg, c_f 1.35, a strong Larmor rotation "
           "(216 deg at focus) and a medium crossover.",
           magnification=0.85, camera_rotation_deg=90.0, mirrored=True, c_f=1.35,
           larmor_deg_per_unit=160.0, cs_power_at_1000=0.028, crossover_sigma_fov=0.004),
)}
NAMED_COLUMNS: tuple[str, ...] = tuple(COLUMNS)
"""The named columns, fixed here: a training set's randomly drawn columns are registered in COLUMNS
where their stacks are taken (tools/trainkit/traced_sets.py), and must not join the named ones."""


def column(name: str) -> Column:
    """The column called `name`; KeyError names the known ones."""
    try:
        return COLUMNS[name]
    except KeyError:
        raise KeyError(f"unknown column {name!r}; known: {', '.join(COLUMNS)}") from None
