"""Traced optics: the disc on the camera as C1, the aperture and the projection make it.

twin.md's first-order formulas put the disc where `g D R(theta(u)) m` says, with the radius law.
Here nothing is put: rays from the source cross the condenser aperture (in C1's principal plane),
C1 bends them by its power, which grows as the square of its current (focal length as 1/I^2),
plus the third-order error of spherical aberration, and turns them by its Larmor angle k I; a
fixed projection (magnification, camera rotation, mirror) takes the plane where C1 images the
crossover at c_f to the camera. The disc's outline, its centre, its brightness across it and the
current it carries all come out of that ray map.

The ray map, for a ray through the aperture point h (motor units, from the optic axis):

    G(h) = (lambda I + Q) h + (1 + lambda) Cs |h|^2 h,        lambda = (I / c_f)^2 - 1
    y(h) = s + T G(h),   T = WALK_PER_POWER * M * R(camera) * Mirror * R(k I) * (-1)

lambda is C1's power relative to the focusing one (2u + u^2, not 2u), Cs its spherical aberration
(relative power per unit^2 of ray height), Q a quadrupole (condenser astigmatism, twin.md's
ellipticity made real: the two axes focus at different currents, with line foci between), -1
the inversion at the crossover, s the beam shift. What the map does not carry is added where the
physics puts it:

- the finite source: every source point casts the same shadow shifted by its crossover image, so
  the disc is the shadow convolved with the crossover's image (a Gaussian of the column's sigma):
  that sets the focused spot, the edge's penumbra and, through the partial coherence it implies,
  how much of the Fresnel fringes survives;
- Fresnel diffraction at the aperture edge: the fringes of a converging wave (Fresnel scaling) have
  a first period that goes as the square root of the shadow's size;
- the gun's angular emission (a Gaussian in the ray height at C1) and the ray density (1 / det of
  the map's Jacobian) make the brightness across the disc, and the emission the current that the
  aperture passes.

Rendering fills the outline (polar about the aperture centre's image) with the profile of a disc
convolved with the source, exact for a round disc both far from focus (an erfc edge) and at focus
(a Gaussian spot); a scene's transmission map multiplies the result as the specimen texture does.
Everything is vectorised numpy: a frame costs a few milliseconds at 256 px."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from temalign.optics import D_FOV, WOBBLE_UNIT, pixel_to_fov
from temalign_twin.columns import REFERENCE_APERTURE_UNITS, SPOT_RADIUS_PER_SIGMA, Column
from temalign_twin.render import erf
from temalign_twin.settings import BeamSettings, TwinSettings

WALK_PER_POWER = D_FOV / 1000.0 / (2.0 * WOBBLE_UNIT)
"""Projection scale of the reference column: FOV per motor unit per unit of relative C1 power.
With the power going as (1 + u)^2 the walk at small u is 2 u times this: g D / 1000, twin.md's."""
REFERENCE_SHADOW_FOV = 2.0 * WOBBLE_UNIT * WALK_PER_POWER * REFERENCE_APERTURE_UNITS
"""Radius of the reference aperture's shadow at lambda = 0.06 (|g| = 1 at small u), FOV: 0.156."""
EDGE_POINTS = 96
"""Aperture-edge rays traced per disc outline (plenty: the outline is smooth)."""
RAY_RINGS, RAY_SPOKES = 16, 48
"""Rays filling the aperture near focus (equal-area rings), and for the transmission."""
TABLE = 256
"""Uniform angular resolution of the outline tables the renderer looks up."""
BRIGHT_STEPS = 33
"""Radial samples of an outline disc's brightness table (it is smooth: emission and ray density)."""
QUAD_PHI, QUAD_RHO = 128, 192
"""Polar quadrature of an outline disc's intensity (normalisation and centroid)."""
REACH_SIGMAS = 6.0
"""The beam's blur is followed this many sigmas out."""
OUTLINE_MIN_SIGMAS = 3.0
"""An outline narrower than this many blur sigmas anywhere is rendered from its rays."""
_SQRT2 = math.sqrt(2.0)


def relative_power(c: float, c_f: float) -> float:
    """lambda = (c / c_f)^2 - 1: C1's power over its focusing power, less one (2u + u^2)."""
    return (c / c_f) ** 2 - 1.0


def larmor_rad(c: float, column: Column) -> float:
    """C1's Larmor rotation, radians: proportional to the absolute current, k c."""
    return math.radians(column.larmor_deg_per_unit * c)


def projection(c: float, column: Column) -> np.ndarray:
    """T: the 2x2 map from C1's relative power error times the ray height (motor units) to the
    camera (FOV): inversion at the crossover, Larmor rotation, mirror, camera rotation, scale."""
    def rot(a: float) -> np.ndarray:
        return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])

    mirror = np.diag([1.0, -1.0]) if column.mirrored else np.eye(2)
    t: np.ndarray = -(WALK_PER_POWER * column.magnification) * (
        rot(math.radians(column.camera_rotation_deg)) @ mirror @ rot(larmor_rad(c, column)))
    return t


def aperture_edge(psi: np.ndarray, column: Column) -> np.ndarray:
    """Edge points of the aperture (n, 2), motor units from its centre, at polar angles psi."""
    r = np.full(psi.shape, column.aperture_radius_units)
    for n, amplitude, phase in column.edge_harmonics:
        r = r + column.aperture_radius_units * amplitude * np.cos(n * psi + math.radians(phase))
    edge: np.ndarray = np.stack([r * np.cos(psi), r * np.sin(psi)], axis=-1)
    return edge


@dataclass(frozen=True)
class Optics:
    """C1's state for one lens value: what the ray map needs besides the ray."""

    power: float
    """lambda, C1's relative power error."""
    cs: float
    """(1 + lambda) Cs: spherical aberration's relative power per unit^2 of ray height."""
    quadrupole: tuple[float, float]
    """(q1, q2) of Q = [[q1, q2], [q2, -q1]]: astigmatism's relative power (`stigmation_of`)."""
    transfer: np.ndarray
    """T, the projection (2x2)."""

    def bend(self, h: np.ndarray) -> np.ndarray:
        """G(h) for rays h (..., 2): the relative power error times the ray height."""
        q1, q2 = self.quadrupole
        hx, hy = h[..., 0], h[..., 1]
        cubic = self.cs * (hx * hx + hy * hy)
        gx = (self.power + q1 + cubic) * hx + q2 * hy
        gy = q2 * hx + (self.power - q1 + cubic) * hy
        out: np.ndarray = np.stack([gx, gy], axis=-1)
        return out

    def jacobian_det(self, hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
        """det dG/dh: the ray density at the camera goes as its inverse."""
        q1, q2 = self.quadrupole
        r2 = hx * hx + hy * hy
        j11 = self.power + q1 + self.cs * (r2 + 2.0 * hx * hx)
        j22 = self.power - q1 + self.cs * (r2 + 2.0 * hy * hy)
        j12 = q2 + 2.0 * self.cs * hx * hy
        det: np.ndarray = j11 * j22 - j12 * j12
        return det


def stigmation_of(ellipticity: float, long_axis_deg: float, column: Column) -> tuple[float, float]:
    """The condenser astigmatism that gives a disc of `ellipticity` (twin.md's: axes in the ratio
    (1 + e) / (1 - e)) at |g| = 1 on the strong side (C1 at c_f (1 + 3 %)), its long axis at
    `long_axis_deg` on the camera: (power difference of the two axes, angle of the stronger one
    in C1's own frame, deg). The two axes then focus at different currents (line foci, at
    lambda = +-s/2, between the wobble's extremes for e up to 0.5), and between them the disc's
    long axis turns by 90 deg, as a real stigmated beam does."""
    lam_1 = 2.0 * WOBBLE_UNIT
    difference = 2.0 * lam_1 * ellipticity
    # camera -> C1: undo the camera rotation, the mirror and the Larmor rotation at focus (an axis
    # does not see the inversion)
    angle = long_axis_deg - column.camera_rotation_deg
    if column.mirrored:
        angle = -angle
    angle -= column.larmor_deg_per_unit * column.c_f * (1.0 + WOBBLE_UNIT)
    return difference, angle


def lens_optics(c: float, column: Column, stigmation: tuple[float, float] = (0.0, 0.0)) -> Optics:
    """C1 at lens value `c` in `column`; `stigmation` = (relative power difference between the
    two astigmatic axes, angle of the stronger one in C1's frame, deg): condenser astigmatism
    (`stigmation_of`), a quadrupole that adds +-s/2 to the power along its two axes."""
    lam = relative_power(c, column.c_f)
    s, angle = stigmation
    q = (s / 2.0 * math.cos(2.0 * math.radians(angle)), s / 2.0 * math.sin(2.0 * math.radians(angle)))
    return Optics(lam, (1.0 + lam) * column.cs_power_at_1000 / 1e6, q, projection(c, column))


@dataclass(frozen=True)
class Fringes:
    """Fresnel fringes of the fully coherent wave at the reference disc (0.156 FOV): amplitude,
    first period and decay depth (FOV), the `beam` knobs of TwinSettings."""

    amplitude: float
    period_fov: float
    decay_fov: float

    @staticmethod
    def of(beam: BeamSettings) -> Fringes:
        return Fringes(beam.fringe_amplitude, beam.fringe_period_fov, beam.fringe_decay_fov)


def aperture_rays(column: Column, rings: int = RAY_RINGS, spokes: int = RAY_SPOKES
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Rays filling the aperture: points (n, 2) in motor units from its centre and their area
    weights (summing to the aperture's area), on equal-area rings."""
    t = np.sqrt((np.arange(rings) + 0.5) / rings)
    psi = (np.arange(spokes)[None, :] + 0.5 * (np.arange(rings)[:, None] % 2)) * (2.0 * np.pi / spokes)
    edge = aperture_edge(psi.reshape(-1), column).reshape(rings, spokes, 2)
    points = (edge * t[:, None, None]).reshape(-1, 2)
    weight = (0.5 * (edge[..., 0] ** 2 + edge[..., 1] ** 2) * (2.0 * np.pi / spokes) / rings).reshape(-1)
    return points, weight


def emission(hx: np.ndarray, hy: np.ndarray, sigma_units: float) -> np.ndarray:
    """The gun's relative angular emission for rays crossing C1 at (hx, hy), motor units: a
    Gaussian of the ray's angle, i.e. of its height at C1 (sigma_units: the column's)."""
    out: np.ndarray = np.exp(-(hx * hx + hy * hy) / (2.0 * sigma_units**2))
    return out


def transmission(m: np.ndarray | tuple[float, float], column: Column) -> float:
    """Current through the aperture centred at `m` (units) over what it passes centred on axis."""
    points, weight = aperture_rays(column)
    h = points + np.asarray(m, dtype=float)
    s = column.emission_sigma_units
    return float(np.sum(weight * emission(h[:, 0], h[:, 1], s))) / float(
        np.sum(weight * emission(points[:, 0], points[:, 1], s)))


def _box(lo_x: float, hi_x: float, lo_y: float, hi_y: float, width: int, height: int
         ) -> tuple[int, int, int, int]:
    """Pixel columns [x0, x1) and rows [y0, y1) whose centres may fall in the FOV rectangle, not
    clipped to the detector."""
    y_off = 0.5 * height / width
    return (math.floor((lo_x + 0.5) * width - 0.5), math.ceil((hi_x + 0.5) * width - 0.5) + 1,
            math.floor((lo_y + y_off) * width - 0.5), math.ceil((hi_y + y_off) * width - 0.5) + 1)


@dataclass(frozen=True, eq=False)
class Outline:
    """A disc much larger than the source image, as polar tables about `anchor` (the image of the
    aperture centre) on a uniform grid of `TABLE` angles from -pi (the first two repeated past
    pi): its radius, the cosine of the angle between its normal and the radial direction, and its
    brightness at `BRIGHT_STEPS` fractions t = 0..1 of the way out (the rays there: their
    emission and their density)."""

    anchor: tuple[float, float]
    radius: np.ndarray
    normal_cos: np.ndarray
    brightness: np.ndarray
    """(TABLE + 2, BRIGHT_STEPS): relative brightness (1 at the anchor)."""

    def lookup(self, phi: np.ndarray, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Radius, normal cosine and brightness at polar (phi in [-pi, pi], rho), interpolated
        linearly. The tables start at -pi and repeat their first entries at the end, so no angle
        needs wrapping (a floating modulo per pixel would cost more than the rest)."""
        pos = (phi + np.pi) * (TABLE / (2.0 * np.pi))
        i0 = pos.astype(np.intp)
        f = pos - i0
        g = 1.0 - f
        i1 = i0 + 1
        r = self.radius[i0] * g + self.radius[i1] * f
        cb = self.normal_cos[i0] * g + self.normal_cos[i1] * f
        t = np.minimum(rho / np.maximum(r, 1e-12), 1.0) * (BRIGHT_STEPS - 1)
        j0 = np.minimum(t.astype(np.intp), BRIGHT_STEPS - 2)
        ft = t - j0
        flat = self.brightness.reshape(-1)
        k0 = i0 * BRIGHT_STEPS + j0
        k1 = k0 + BRIGHT_STEPS
        inner = flat[k0] * g + flat[k1] * f
        outer = flat[k0 + 1] * g + flat[k1 + 1] * f
        return r, cb, inner + (outer - inner) * ft


@dataclass(frozen=True, eq=False)
class TracedDisc:
    """One lens value's beam on the camera (FOV), from the traced rays.

    Discs much larger than the source image are an `outline` filled with the profile of a disc
    convolved with the source, with Fresnel fringes and the brightness of their rays; smaller ones
    (at and near focus, where the outline would be a caustic smaller than the source) are the
    `rays` themselves, each blurred by the source: exact there, and cheap because they are few."""

    centroid: tuple[float, float]
    """Intensity centroid: where the beam's electrons are (what a centroid measures)."""
    outline_centre: tuple[float, float]
    """Centre of the geometric disc, the area centroid of the aperture's image (near focus, of
    its rays weighted by the area they cover there): where a fit to the edge puts it. The
    brightness across the disc (the emission fall-off, the ray density) pulls the intensity
    centroid away from it."""
    equivalent_radius: float
    """sqrt(outline area / pi) with the crossover's spot radius (sqrt 2 sigma: the disc of its
    current at its peak intensity) in quadrature: twin.md's r(c) in the first-order limit."""
    geometric_radius: float
    """sqrt(outline area / pi): the shadow's size without the source."""
    transmission: float
    """Current through the aperture relative to the same aperture centred on the optic axis."""
    sigma_fov: float
    """Blur: the crossover image and the pixel's box together."""
    aperture_centre: tuple[float, float]
    """m, motor units from the optic axis."""
    optics: Optics
    outline: Outline | None
    rays: tuple[np.ndarray, np.ndarray] | None
    """Ray landing points (n, 2) FOV and their weights (emission times area), near focus."""
    fringe_amplitude: float = 0.0
    fringe_period_fov: float = 0.015
    fringe_decay_fov: float = 0.03
    area: float = 1.0
    """Integral of an outline's unnormalised profile over the plane, FOV^2 (its normalisation)."""

    # ---- outline regime ------------------------------------------------------------------------

    def _profile(self, phi: np.ndarray, rho: np.ndarray) -> np.ndarray:
        """Unnormalised intensity at polar (phi, rho) about the outline's anchor: the disc
        convolved with the source (exact for a round disc), the Fresnel fringes damped by the same
        source, times the brightness of the rays there."""
        assert self.outline is not None
        r, cb, bright = self.outline.lookup(phi, rho)
        s = self.sigma_fov
        scale = cb / (_SQRT2 * s)
        out = 0.5 * (erf((rho + r) * scale) - erf((rho - r) * scale))
        if self.fringe_amplitude > 0.0:
            depth = np.maximum(r - rho, 0.0) * cb
            x = depth / self.fringe_period_fov
            k = np.pi * (1.0 + 2.0 * x) / self.fringe_period_fov
            envelope = self.fringe_amplitude * np.exp(-depth / self.fringe_decay_fov - 0.5 * (s * k) ** 2)
            out *= 1.0 + envelope * np.sin(np.pi * x * (1.0 + x))
        profile: np.ndarray = out * bright
        return profile

    def _reach(self) -> float:
        assert self.outline is not None
        return float(np.max(self.outline.radius)) + REACH_SIGMAS * self.sigma_fov / max(
            float(np.min(self.outline.normal_cos)), 0.2)

    # ---- both ----------------------------------------------------------------------------------

    def intensity(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Intensity at FOV points (x, y) (broadcastable), normalised to 1 over the plane."""
        if self.outline is not None:
            ax, ay = self.outline.anchor
            dx, dy = x - ax, y - ay
            out: np.ndarray = self._profile(np.arctan2(dy, dx), np.sqrt(dx * dx + dy * dy))
            return out / self.area
        assert self.rays is not None
        points, weight = self.rays
        s2 = 2.0 * self.sigma_fov**2
        total = np.zeros(np.broadcast_shapes(np.shape(x), np.shape(y)))
        for (px, py), w in zip(points, weight, strict=True):
            total += w * np.exp(-((x - px) ** 2 + (y - py) ** 2) / s2)
        norm: np.ndarray = total / (float(np.sum(weight)) * np.pi * s2)
        return norm

    def expected_electrons(self, electrons: float, settings: TwinSettings, texture: np.ndarray | None = None
                           ) -> tuple[np.ndarray, tuple[slice, slice]]:
        """Mean electrons per pixel inside the beam's bounding box and that box (rows, columns),
        as `render.expected_electrons` gives them: `electrons` over the whole plane."""
        width, height = settings.camera.width, settings.camera.height
        if self.outline is not None:
            reach = self._reach()
            ax, ay = self.outline.anchor
            bx0, bx1, by0, by1 = _box(ax - reach, ax + reach, ay - reach, ay + reach, width, height)
        else:
            assert self.rays is not None
            pts = self.rays[0]
            pad = REACH_SIGMAS * self.sigma_fov
            bx0, bx1, by0, by1 = _box(float(pts[:, 0].min()) - pad, float(pts[:, 0].max()) + pad,
                                      float(pts[:, 1].min()) - pad, float(pts[:, 1].max()) + pad,
                                      width, height)
        x0, x1, y0, y1 = max(0, bx0), min(width, bx1), max(0, by0), min(height, by1)
        box = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
        if x1 <= x0 or y1 <= y0 or electrons <= 0.0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0))), box
        if self.outline is not None:
            xs, ys = pixel_to_fov(np.arange(x0, x1), np.arange(y0, y1), width, height)
            out = self.intensity(xs[None, :], ys[:, None]) * (electrons / width**2)
        else:
            out = self._ray_pixels((bx0, bx1, by0, by1), (x0, x1, y0, y1), width, height) * electrons
        if texture is not None:
            out *= texture[box]
        return out, box

    def _ray_pixels(self, full: tuple[int, int, int, int], clip: tuple[int, int, int, int], width: int,
                    height: int) -> np.ndarray:
        """Fraction of the beam in each pixel of `clip`: every ray a Gaussian of the blur, sampled
        at the pixel centres of the unclipped box `full` and normalised there (so the rays carry
        all of the beam, also off the detector), separable, so one matrix product."""
        assert self.rays is not None
        points, weight = self.rays
        bx0, bx1, by0, by1 = full
        x0, x1, y0, y1 = clip
        xs, ys = pixel_to_fov(np.arange(bx0, bx1), np.arange(by0, by1), width, height)
        s2 = 2.0 * self.sigma_fov**2
        gx = np.exp(-((xs[None, :] - points[:, :1]) ** 2) / s2)
        gy = np.exp(-((ys[None, :] - points[:, 1:]) ** 2) / s2)
        gx /= gx.sum(axis=1, keepdims=True)
        gy /= gy.sum(axis=1, keepdims=True)
        w = weight / float(np.sum(weight))
        gx = gx[:, x0 - bx0:x1 - bx0]
        gy = gy[:, y0 - by0:y1 - by0]
        out: np.ndarray = (gy * w[:, None]).T @ gx
        return out


def _polar_moments(disc: TracedDisc) -> tuple[float, float, float]:
    """Integral of an outline disc's unnormalised intensity (FOV^2) and its centroid, by a polar
    quadrature about the anchor that reaches past the edge's blur."""
    assert disc.outline is not None
    phi = (np.arange(QUAD_PHI) + 0.5) * (2.0 * np.pi / QUAD_PHI) - np.pi
    r, cb, _ = disc.outline.lookup(phi, np.zeros_like(phi))
    rho_max = r + REACH_SIGMAS * disc.sigma_fov / np.maximum(cb, 0.2)
    rho = ((np.arange(QUAD_RHO) + 0.5) / QUAD_RHO)[None, :] * rho_max[:, None]
    f = disc._profile(np.broadcast_to(phi[:, None], rho.shape), rho)
    w = f * rho * (rho_max[:, None] / QUAD_RHO) * (2.0 * np.pi / QUAD_PHI)
    area = float(w.sum())
    ax, ay = disc.outline.anchor
    if not area > 0.0:
        return 1e-300, ax, ay
    return (area, ax + float((w * rho * np.cos(phi)[:, None]).sum()) / area,
            ay + float((w * rho * np.sin(phi)[:, None]).sum()) / area)


def _outline(anchor: np.ndarray, rim: np.ndarray, edge: np.ndarray, m: np.ndarray, opt: Optics,
             emission_sigma_units: float) -> Outline:
    """Polar tables of the traced rim about the anchor (rim and edge: (n, 2), the rays' landing
    points and their aperture-edge vectors). A point a fraction t of the way out in direction phi
    is mapped back to the ray through m + t * edge(phi) (exact for an affine map, and the map is
    nearly affine wherever a disc is an outline): its emission over the density of rays there,
    1 / |det J|, relative to the anchor's."""
    d = rim - anchor
    phi = np.arctan2(d[:, 1], d[:, 0])
    order = np.argsort(phi)
    phi, r, edge = phi[order], np.hypot(d[order, 0], d[order, 1]), edge[order]
    grid = np.arange(TABLE + 2) * (2.0 * np.pi / TABLE) - np.pi  # two past pi: see Outline.lookup
    radius = np.interp(grid, phi, r, period=2.0 * np.pi)
    ex = np.interp(grid, phi, edge[:, 0], period=2.0 * np.pi)
    ey = np.interp(grid, phi, edge[:, 1], period=2.0 * np.pi)
    ring = radius[:TABLE]
    slope = np.resize((np.roll(ring, -1) - np.roll(ring, 1)) / (2.0 * (2.0 * np.pi / TABLE)), TABLE + 2)
    normal_cos = radius / np.sqrt(radius**2 + slope**2 + 1e-300)
    t = np.linspace(0.0, 1.0, BRIGHT_STEPS)[None, :]
    hx, hy = m[0] + t * ex[:, None], m[1] + t * ey[:, None]
    here = np.abs(opt.jacobian_det(hx, hy))
    centre = abs(float(opt.jacobian_det(np.array(m[0]), np.array(m[1]))))
    lit = emission(hx, hy, emission_sigma_units) / emission(np.array(m[0]), np.array(m[1]),
                                                            emission_sigma_units)
    brightness = lit * np.clip(centre / np.maximum(here, 1e-300), 0.2, 5.0)
    return Outline((float(anchor[0]), float(anchor[1])), radius, normal_cos, brightness)


def trace(c: float, m: np.ndarray | tuple[float, float], column: Column, *,
          shift: np.ndarray | tuple[float, float] = (0.0, 0.0), fringes: Fringes | None = None,
          pixel_fov: float = 1.0 / 256, stigmation: tuple[float, float] = (0.0, 0.0)) -> TracedDisc:
    """The beam for C1 at `c` with the aperture centre at `m` (motor units from the optic axis:
    a - a*), the beam shift `shift` (FOV) and camera pixels `pixel_fov` wide."""
    m = np.asarray(m, dtype=float)
    shift = np.asarray(shift, dtype=float)
    opt = lens_optics(c, column, stigmation)
    psi = np.arange(EDGE_POINTS) * (2.0 * np.pi / EDGE_POINTS)
    edge = aperture_edge(psi, column)
    anchor = shift + opt.transfer @ opt.bend(m)
    rim = shift + opt.bend(m + edge) @ opt.transfer.T
    outline = _outline(anchor, rim, edge, m, opt, column.emission_sigma_units)
    ring = outline.radius[:TABLE]
    area = 0.5 * float(np.sum(ring**2)) * (2.0 * np.pi / TABLE)
    r_geo = math.sqrt(area / math.pi)
    src = column.crossover_sigma_fov
    sigma = math.sqrt(src**2 + pixel_fov**2 / 12.0)
    grid = np.arange(TABLE) * (2.0 * np.pi / TABLE) - np.pi
    moment = np.stack([np.cos(grid), np.sin(grid)]) @ ring**3
    centre = anchor + moment * (2.0 * np.pi / TABLE) / 3.0 / area if area > 0.0 else anchor
    base = TracedDisc(
        centroid=(float(anchor[0]), float(anchor[1])), outline_centre=(float(centre[0]), float(centre[1])),
        equivalent_radius=math.hypot(r_geo, SPOT_RADIUS_PER_SIGMA * src), geometric_radius=r_geo,
        transmission=transmission(m, column), sigma_fov=sigma, aperture_centre=(float(m[0]), float(m[1])),
        optics=opt, outline=None, rays=None)
    if float(np.min(outline.radius)) < OUTLINE_MIN_SIGMAS * sigma:
        points, weight = aperture_rays(column)
        h = points + m
        land = shift + opt.bend(h) @ opt.transfer.T
        w = weight * emission(h[:, 0], h[:, 1], column.emission_sigma_units)
        lit = np.average(land, axis=0, weights=w)
        geo = np.average(land, axis=0, weights=weight * np.abs(opt.jacobian_det(h[:, 0], h[:, 1])) + 1e-300)
        return dataclasses.replace(base, centroid=(float(lit[0]), float(lit[1])),
                                   outline_centre=(float(geo[0]), float(geo[1])), rays=(land, w))
    fr = fringes or Fringes(0.0, 0.015, 0.03)
    # Fresnel scaling: the first fringe goes as sqrt(M * lambda_e * L * radius / R) (module doc)
    scale = math.sqrt(column.magnification * REFERENCE_APERTURE_UNITS / column.aperture_radius_units
                      * r_geo / REFERENCE_SHADOW_FOV)
    disc = dataclasses.replace(base, outline=outline, fringe_amplitude=fr.amplitude,
                               fringe_period_fov=fr.period_fov * scale, fringe_decay_fov=fr.decay_fov * scale)
    integral, cx, cy = _polar_moments(disc)
    return dataclasses.replace(disc, centroid=(cx, cy), area=integral)
