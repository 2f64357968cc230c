"""Named twin conditions: the paper's datasets (Table 1) and harder ones.

A preset is a partial TwinSettings dict plus how a dataset is acquired under it (wobble fraction,
spiral radius, number of positions) and a seed offset, so two presets never share a drift
realisation or a specimen area unless asked. The normative geometry is never a preset's to change."""

from __future__ import annotations

from dataclasses import dataclass, field

from temalign.values import JsonObject
from temalign_twin.settings import TwinSettings


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: JsonObject = field(default_factory=dict)
    wobble_fraction: float = 0.03
    radius: float = 240.0
    """Spiral maximum |delta| per axis, motor units (the paper's 'Delta x/y')."""
    samples: int = 127
    seed_offset: int = 0
    """Added to the run's seed: another day, another drift state and specimen area."""

    def settings(self, base: TwinSettings | None = None) -> TwinSettings:
        return (base or TwinSettings()).updated(self.overrides)


_DEFAULT_ELECTRONS = 2.5e7

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("default", "Twin defaults: 3 % wobble centred on c_f, +-240 units, the paper's usual set-up."),
    Preset("n14", "Paper dataset 14: 84 positions, +-240 units, 3 % wobble centred on maximal "
           "convergence, acquired after a gun flash.",
           overrides={"drift": {"aligned_start": (2162.0, -1347.0)}}, samples=84, seed_offset=14),
    Preset("n13", "Paper dataset 13: 127 positions, +-240 units, 3 % wobble centred on maximal convergence.",
           seed_offset=13),
    Preset("n10", "Paper dataset 10: 127 positions, +-240 units, 3 % wobble centred on maximal convergence.",
           overrides={"drift": {"aligned_start": (2146.0, -1333.0)}}, seed_offset=10),
    Preset("n6", "Paper dataset 6, two days later: C1 starts at 1.02 c_f, 2 % wobble (not centred), "
           "+-200 units, another drift state and beam shift.",
           overrides={"lens": {"start_over_cf": 1.02},
                      "drift": {"aligned_start": (2231.0, -1296.0), "beam_shift_start": (0.018, -0.012),
                                "linear_per_hour": (-6.0, 10.0)}},
           wobble_fraction=0.02, radius=200.0, seed_offset=6),
    Preset("far", "Misalignment up to +-400 units: at the wobble extremes the beam is partly or wholly "
           "off the detector.", radius=400.0, seed_offset=400),
    Preset("low-dose", "1/20 of the default dose: noisy frames, faint wide discs.",
           overrides={"beam": {"electrons_per_s": _DEFAULT_ELECTRONS / 20}}, seed_offset=20),
    Preset("large-aperture", "A larger condenser aperture (twice the diameter) shown at the same "
           "normative disc size: 4x the current, finer and fainter Fresnel fringes, softer edge.",
           overrides={"beam": {"electrons_per_s": _DEFAULT_ELECTRONS * 4, "fringe_amplitude": 0.12,
                               "fringe_period_fov": 0.0075, "fringe_decay_fov": 0.015,
                               "source_blur_fov": 0.002}},
           seed_offset=2),
)}


def preset(name: str) -> Preset:
    """The preset called `name`; KeyError lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown twin preset {name!r}; known: {', '.join(PRESETS)}") from None
