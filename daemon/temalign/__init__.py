"""temalign: unattended condenser-aperture alignment for transmission electron microscopes."""

__version__ = "0.1.0"
