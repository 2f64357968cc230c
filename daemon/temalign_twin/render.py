"""Camera frames of the spot: the analytic disc sampled where the pixels are, then the detector.

The disc is a function of the distance from the formula's centre only (in the frame where the
ellipse is a circle), so it is point-symmetric about that centre and its centroid is the
geometry's. Its edge is an erfc whose width adds the source blur and the pixel's own box
(sigma^2 = blur^2 + pixel^2 / 12), which stands in for integrating over each pixel and keeps the
3 px focused spot free of sampling bias. Only the disc's bounding box is computed, so a frame
costs little more than its noise.

The specimen texture and the hot pixels are fixed per seed; the texture lives in FOV
coordinates (a periodic field over one FOV), averaged over each camera pixel, so 256 px and
4096 px cameras see the same specimen at different sampling."""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from temalign.optics import RADIUS_MIN, pixel_to_fov
from temalign_twin.scenes import scene_transmission
from temalign_twin.settings import TwinSettings

if TYPE_CHECKING:
    from temalign_twin.traced import TracedDisc

STREAM_TEXTURE = 21
STREAM_HOT = 22
_EDGE_SIGMAS = 6.0


def erf(x: np.ndarray) -> np.ndarray:
    """Vectorised error function (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7); numpy has none."""
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    value: np.ndarray = np.copysign(1.0 - poly * np.exp(-a * a), x)
    return value


@dataclass(frozen=True)
class Beam:
    """What reaches the detector during one exposure: a disc of `radius` (FOV) centred at `centre`
    (FOV) carrying `electrons` in total (0: beam blanked). With traced optics `traced` is the disc
    itself (its outline, brightness and blur; centre and radius are then its centroid and
    equivalent radius) and the first-order disc is not drawn."""

    centre: tuple[float, float]
    radius: float
    electrons: float
    traced: TracedDisc | None = None


def edge_sigma(settings: TwinSettings, width: int) -> float:
    """Edge blur of the rendered disc, FOV: the source blur combined with the pixel's box."""
    return math.sqrt(settings.beam.source_blur_fov**2 + (1.0 / width) ** 2 / 12.0)


def _axes_stretch(ellipticity: float) -> float:
    """Semi-axes are r*k and r/k with k = sqrt((1+e)/(1-e)): about r(1 +- e), the circle's area."""
    return math.sqrt((1.0 + ellipticity) / (1.0 - ellipticity))


def disc_profile(depth: np.ndarray, radius: float, sigma: float, settings: TwinSettings) -> np.ndarray:
    """Relative illumination (1 = plateau) at signed distance `depth` outside the edge (negative
    inside): blurred edge times Fresnel fringes that start at the edge and die out inwards."""
    edge = 0.5 * (1.0 - erf(depth / (math.sqrt(2.0) * sigma)))
    beam = settings.beam
    amplitude = beam.fringe_amplitude * (1.0 - RADIUS_MIN / max(radius, RADIUS_MIN))
    if amplitude <= 0.0:
        return edge
    inside = np.maximum(-depth, 0.0)
    x = inside / beam.fringe_period_fov
    phase = np.pi * x * (1.0 + x)  # Fresnel-like chirp: the first period is fringe_period_fov
    k = np.pi * (1.0 + 2.0 * x) / beam.fringe_period_fov
    envelope = amplitude * np.exp(-inside / beam.fringe_decay_fov - 0.5 * (sigma * k) ** 2)
    profile: np.ndarray = edge * (1.0 + envelope * np.sin(phase))
    return profile


def expected_electrons(beam: Beam, settings: TwinSettings, texture: np.ndarray | None = None
                       ) -> tuple[np.ndarray, tuple[slice, slice]]:
    """Mean electrons per pixel inside the disc's bounding box, and that box (rows, columns).

    The profile is normalised to carry `electrons` over the whole plane (total current is
    conserved), so the mean intensity inside the disc goes as 1 / r^2."""
    if beam.traced is not None:
        return beam.traced.expected_electrons(beam.electrons, settings, texture)
    cam = settings.camera
    width, height = cam.width, cam.height
    sigma = edge_sigma(settings, width)
    opt = settings.optics
    k = _axes_stretch(opt.ellipticity)
    reach = beam.radius * k + _EDGE_SIGMAS * sigma + 2.0 * settings.beam.fringe_period_fov
    cx, cy = beam.centre
    x0 = max(0, math.floor((cx - reach + 0.5) * width - 0.5))
    x1 = min(width, math.ceil((cx + reach + 0.5) * width - 0.5) + 1)
    y_off = 0.5 * height / width
    y0 = max(0, math.floor((cy - reach + y_off) * width - 0.5))
    y1 = min(height, math.ceil((cy + reach + y_off) * width - 0.5) + 1)
    box = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    if x1 <= x0 or y1 <= y0 or beam.electrons <= 0.0:
        return np.zeros((max(0, y1 - y0), max(0, x1 - x0))), box
    xs, ys = pixel_to_fov(np.arange(x0, x1), np.arange(y0, y1), width, height)
    dx = (xs - cx)[None, :]
    dy = (ys - cy)[:, None]
    if opt.ellipticity:
        phi = math.radians(opt.ellipse_angle_deg)
        c, s = math.cos(phi), math.sin(phi)
        along = (c * dx + s * dy) / k
        across = (-s * dx + c * dy) * k
        q = np.sqrt(along * along + across * across)
    else:
        q = np.sqrt(dx * dx + dy * dy)
    profile = disc_profile(q - beam.radius, beam.radius, sigma, settings)
    per_pixel = beam.electrons / _profile_area(beam.radius, sigma, settings) / width**2
    out = profile * per_pixel
    if texture is not None:
        out *= texture[box]
    return out, box


def _profile_area(radius: float, sigma: float, settings: TwinSettings) -> float:
    """Integral of the disc profile over the plane, FOV^2 (pi r^2 without blur or fringes): the
    normalisation that makes every frame carry exactly the beam's electrons."""
    outer = radius + _EDGE_SIGMAS * sigma
    q = np.linspace(0.0, outer, 4001)
    f = disc_profile(q - radius, radius, sigma, settings) * (2.0 * np.pi * q)
    return float(np.sum((f[1:] + f[:-1]) * 0.5) * (q[1] - q[0]))


class Specimen:
    """The amorphous-carbon-like texture and the detector's hot pixels of one seed, per camera size."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._textures: dict[tuple[int, int, float, float, str], np.ndarray | None] = {}
        self._hot: dict[tuple[int, int, float], np.ndarray] = {}
        self._lock = threading.Lock()

    def texture(self, settings: TwinSettings) -> np.ndarray | None:
        """Transmission seen by each camera pixel (the scene: the specimen texture of mean 1 by
        default), or None with nothing in the beam."""
        spec, cam, scene = settings.specimen, settings.camera, settings.scene
        if scene.kind == "specimen":
            contrast, scale = spec.texture_contrast, spec.texture_scale_fov
        else:
            contrast, scale = scene.specimen_contrast, scene.specimen_scale_fov
        key = (cam.width, cam.height, contrast, scale, scene.model_dump_json())
        with self._lock:
            if key in self._textures:
                return self._textures[key]
            textured = contrast > 0.0 and scene.kind in ("specimen", "specimen-edge", "holography")
            seed = self._seed if spec.texture_seed is None else spec.texture_seed
            field = _texture_field(seed, cam.width, cam.height, contrast, scale) if textured else None
            found = scene_transmission(scene, cam.width, cam.height, self._seed, field)
            if len(self._textures) > 4:
                self._textures.clear()
            self._textures[key] = found
        return found

    def hot_pixels(self, settings: TwinSettings) -> np.ndarray:
        """Flat indices of the pixels stuck at saturation."""
        cam = settings.camera
        key = (cam.width, cam.height, cam.hot_pixel_fraction)
        with self._lock:
            found = self._hot.get(key)
            if found is None:
                n = cam.width * cam.height
                count = round(cam.hot_pixel_fraction * n)
                rng = np.random.default_rng([self._seed, STREAM_HOT, cam.width, cam.height])
                found = rng.choice(n, size=count, replace=False) if count else np.zeros(0, dtype=np.int64)
                self._hot[key] = found
        return found


@functools.lru_cache(maxsize=16)
def _texture_field(seed: int, width: int, height: int, contrast: float, scale: float) -> np.ndarray:
    """Log-normal transmission with Gaussian correlation `scale` (FOV) on a periodic 1-FOV tile,
    averaged over camera pixels of 1/width FOV and sampled at their centres. A pure function of its
    arguments, kept for the process (read-only): twins of the same texture seed share it."""
    n = int(min(2048, max(512, 2 ** math.ceil(math.log2(6.0 / scale)))))
    rng = np.random.default_rng([seed, STREAM_TEXTURE])
    white = rng.standard_normal((n, n))
    f = np.fft.fftfreq(n, d=1.0 / n)  # cycles per FOV
    f2 = f[:, None] ** 2 + f[None, :] ** 2
    z = np.fft.ifft2(np.fft.fft2(white) * np.exp(-2.0 * (np.pi * scale) ** 2 * f2)).real
    z /= z.std()
    t = np.exp(contrast * z - 0.5 * contrast**2)
    box = np.sinc(f / width)
    t = np.fft.ifft2(np.fft.fft2(t) * (box[:, None] * box[None, :])).real
    xs, ys = pixel_to_fov(np.arange(width), np.arange(height), width, height)
    u = np.mod((xs + 0.5) * n, n)
    v = np.mod((ys + 0.5) * n, n)
    j0 = np.floor(u).astype(np.int64)
    i0 = np.floor(v).astype(np.int64)
    fu = (u - j0)[None, :]
    fv = (v - i0)[:, None]
    j1, i1 = (j0 + 1) % n, (i0 + 1) % n
    top = t[np.ix_(i0, j0)] * (1 - fu) + t[np.ix_(i0, j1)] * fu
    bottom = t[np.ix_(i1, j0)] * (1 - fu) + t[np.ix_(i1, j1)] * fu
    field: np.ndarray = np.maximum(top * (1 - fv) + bottom * fv, 0.0).astype(np.float32)
    field.setflags(write=False)
    return field


def render_frame(beam: Beam, settings: TwinSettings, rng: np.random.Generator,
                 specimen: Specimen | None = None) -> np.ndarray:
    """One detector frame, uint16 (height, width): electrons counted with shot noise, gain,
    dark offset, read noise, saturation and hot pixels."""
    cam = settings.camera
    texture = specimen.texture(settings) if specimen is not None else None
    mean, box = expected_electrons(beam, settings, texture)
    frame = np.empty((cam.height, cam.width), dtype=np.float32)
    if cam.read_noise:
        rng.standard_normal(out=frame, dtype=np.float32)
        frame *= cam.read_noise
        frame += cam.dark_offset
    else:
        frame.fill(cam.dark_offset)
    if mean.size:
        electrons = _count(mean, rng) if cam.shot_noise else mean
        frame[box] += electrons * cam.counts_per_electron
    np.clip(frame, 0.0, cam.saturation, out=frame)
    out = np.rint(frame).astype(np.uint16)
    if specimen is not None and cam.hot_pixel_fraction:
        out.reshape(-1)[specimen.hot_pixels(settings)] = cam.saturation
    return out


def _count(mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson counts; the normal approximation above 1000 electrons (indistinguishable there, faster)."""
    big = mean > 1000.0
    if not big.any():
        return rng.poisson(mean).astype(np.float32)
    out = np.empty(mean.shape, dtype=np.float32)
    small = ~big
    out[small] = rng.poisson(mean[small])
    lam = mean[big]
    out[big] = lam + np.sqrt(lam) * rng.standard_normal(lam.size)
    return out
