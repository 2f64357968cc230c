"""The daemon's settings: every key, its unit, its default and the range that is safe on a column.

Strict on purpose: a YAML slip ("3" for 3, `yes` for 1, a typo'd key) is an error, never a guess,
because these numbers end up moving hardware. Relative paths resolve against the directory given in
the validation context (`{"base_dir": Path}`; the loader passes the config file's directory), else
against the working directory.

Adding a section (safety, scheduler, metrics, control...): subclass `Section` with defaults for
every field, add it to `Settings` with `Field(default_factory=...)`. The loader's messages, `temalign
config show` and the completeness tests (every key in the shipped temalign.yaml, temalign/config/, and
docs/configuration.md) pick it up from the model."""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from temalign import shipped
from temalign.protocol.address import parse_address

TOKEN_MAX_BYTES = 4096
DISPLAY_PATTERN = re.compile(r"[A-Za-z0-9._-]*:\d+(\.\d+)?")


def key_error(key: str, reason: str) -> PydanticCustomError:
    """An error about `key` (dotted, relative to the model raising it) from a model validator.

    Model validators only know their own location; the loader appends `key` so the message still
    names the exact key a person has to edit."""
    return PydanticCustomError("config_key", "{reason}", {"key": key, "reason": reason})


def check_address(text: object) -> str:
    """HOST:PORT as the config and `--microscope` accept it; ValueError says what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected HOST:PORT as text, got {type(text).__name__}")
    parse_address(text)
    return text.strip()


def _as_path(value: object) -> Path:
    if isinstance(value, Path):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("path_type", "expected a path (text)")
    if not value.strip():
        raise ValueError("expected a path, got an empty value")
    if "\0" in value:
        raise ValueError("a path cannot contain a NUL character")
    return Path(value)


def _resolve(path: Path, info: ValidationInfo) -> Path:
    try:
        path = path.expanduser()
    except RuntimeError as error:  # "~name" of a user this machine does not know
        raise ValueError(f"{path}: {error} ({str(path).split('/')[0]} names no user here)") from None
    if not path.is_absolute():
        context = info.context if isinstance(info.context, dict) else {}
        base = context.get("base_dir")
        path = (Path(base) if base is not None else Path.cwd()) / path
    return Path(os.path.normpath(path))


PathText = Annotated[Path, BeforeValidator(_as_path)]


def read_token(path: Path) -> str:
    """The token in `path`: one line, not readable by everyone; ValueError (never the token) if not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot open: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_mode & 0o004:
            raise ValueError(
                f"{path}: readable by everyone (mode {stat.S_IMODE(info.st_mode):04o}); "
                f"the token is a secret: chmod o-rwx {path}"
            )
        if info.st_size > TOKEN_MAX_BYTES:
            raise ValueError(f"{path}: {info.st_size} bytes, a token file holds at most {TOKEN_MAX_BYTES}")
        raw = os.read(fd, TOKEN_MAX_BYTES + 1)
    except OSError as error:
        raise ValueError(f"{path}: cannot read: {error.strerror or error}") from None
    finally:
        os.close(fd)
    if len(raw) > TOKEN_MAX_BYTES:
        raise ValueError(f"{path}: longer than {TOKEN_MAX_BYTES} bytes")
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    if not token:
        raise ValueError(f"{path}: empty, expected the token on one line")
    if any(ch.isspace() or not ch.isprintable() for ch in token):
        raise ValueError(f"{path}: expected one token on one line, without spaces or control characters")
    return token


class Section(BaseModel):
    """Base of every settings section: strict types, no unknown keys, immutable once loaded."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_sections_are_defaults(cls, data: Any) -> Any:
        """`wobble:` with every key commented out reads as null in YAML; it means "all defaults"."""
        if isinstance(data, dict):
            sections = {
                name for name, field in cls.model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, Section)
            }
            data = {key: ({} if key in sections and value is None else value) for key, value in data.items()}
        return data


class MicroscopeSettings(Section):
    """Where the protocol server (twin or vendor bridge) is and how long each call may take."""

    address: str = Field(description="HOST:PORT of the protocol server (twin or vendor bridge)")
    token_file: PathText | None = Field(
        default=None, description="file holding the protocol token, or null (no token)"
    )
    call_timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 10.0
    connect_timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 5.0
    acquire_timeout_s: Annotated[float, Field(gt=0.0, le=600.0)] = 30.0

    _token: str | None = PrivateAttr(default=None)

    @field_validator("address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if isinstance(value, str):
            return check_address(value)
        return value

    @field_validator("token_file")
    @classmethod
    def _token_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _read_token(self) -> MicroscopeSettings:
        if self.token_file is not None:
            try:
                self._token = read_token(self.token_file)
            except ValueError as error:
                raise key_error("token_file", str(error)) from None
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        """(host, port) to connect to."""
        return parse_address(self.address)

    @property
    def token(self) -> str | None:
        """The token read from `token_file` at load time; None without a token file."""
        return self._token


class CameraSourceSettings(Section):
    """Frames from `camera.acquire` over the protocol: raw detector counts."""

    exposure_s: Annotated[float, Field(gt=0.0, le=60.0)] | None = 0.1


class Region(Section):
    """A rectangle of screen pixels (X11 root-window coordinates); all four numbers are required."""

    left: Annotated[int, Field(ge=0, le=32767)]
    top: Annotated[int, Field(ge=0, le=32767)]
    width: Annotated[int, Field(ge=16, le=16384)]
    height: Annotated[int, Field(ge=16, le=16384)]


class ScreenSourceSettings(Section):
    """Frames grabbed from the camera software's live view on screen (mss), as a person sees them."""

    region: Region = Field(default_factory=lambda: Region(left=0, top=0, width=512, height=512))
    display: str | None = None
    latency_s: Annotated[float, Field(ge=0.0, le=10.0)] = 0.5

    @field_validator("display")
    @classmethod
    def _display(cls, value: str | None) -> str | None:
        if value is not None and not DISPLAY_PATTERN.fullmatch(value):
            raise ValueError(f"expected an X display such as ':0' or 'host:0.0', got {value!r}")
        return value


class SourceSettings(Section):
    """Where the 7 frames of a wobble come from."""

    kind: Literal["camera", "screen"] = "camera"
    camera: CameraSourceSettings = Field(default_factory=CameraSourceSettings)
    screen: ScreenSourceSettings = Field(default_factory=ScreenSourceSettings)

    @model_validator(mode="after")
    def _screen_needs_region(self) -> SourceSettings:
        if self.kind == "screen" and "region" not in self.screen.model_fields_set:
            raise key_error(
                "screen.region",
                "required when kind is screen: the screen pixels of the live view "
                "({left, top, width, height}); a guessed region would measure the wrong pixels",
            )
        return self


class WobbleSettings(Section):
    """The C1 wobble: c0*(1 + w*(k-3)/3) for k = 0..6, a frame after each settle, then C1 back."""

    fraction: Annotated[float, Field(ge=0.005, le=0.10)] = 0.03
    settle_s: Annotated[float, Field(ge=0.0, le=60.0)] = 2.0
    restore_attempts: Annotated[int, Field(ge=1, le=50)] = 5


class PathSettings(Section):
    """Where durable state lives."""

    state_dir: PathText = Path("/var/lib/temalign")

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve(value, info)
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value

    def ensure_state_dir(self) -> Path:
        """Create `state_dir` (owner and group only) if missing; ConfigError if that is impossible
        or the daemon cannot write there (its journal, state and C1 record live there)."""
        from temalign.errors import ConfigError

        try:
            self.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"paths.state_dir: cannot create {self.state_dir}: "
                              f"{error.strerror or error}") from error
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            why = "Read-only file system" if _read_only(self.state_dir) else "permission denied"
            raise ConfigError(f"paths.state_dir: {self.state_dir} cannot be written ({why}): the daemon "
                              "keeps its journal, its state and the C1 record there")
        return self.state_dir


def _read_only(path: Path) -> bool:
    """Whether `path` lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


class LoggingSettings(Section):
    """How much the daemon logs and in which shape."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


def _shipped_model() -> Path:
    """The default model: the shipped `spotnet` (package data, temalign/models/)."""
    return shipped.default_model()


class EstimatorSettings(Section):
    """The two estimators and what makes their estimate trusted enough to move on."""

    model: PathText = Field(default_factory=_shipped_model)
    use: Literal["both", "model", "classical"] = "both"
    threads: Annotated[int, Field(ge=1, le=16)] = 1
    agreement_units: Annotated[float, Field(gt=0.0, le=500.0)] = 15.0
    agreement_fraction: Annotated[float, Field(ge=0.0, le=0.5)] = 0.15
    classical_max_residual_px: Annotated[float, Field(gt=0.0, le=100.0)] = 3.0
    without_calibration: Literal["dry-run", "model-only"] = "dry-run"
    model_alone_max_units: Annotated[float, Field(ge=0.0, le=1000.0)] = 120.0
    """The longest move a spot model may make alone, when the classical estimator cannot measure
    the stack (decide.trust.model_alone); 0: never alone."""
    max_model_rmse_percent: Annotated[float, Field(gt=0.0, le=100.0)] = 1.0
    """The largest RMSE (% of 1000 units, pooled over its card's evaluated sets) of a model the
    daemon runs (decide.model_gate); a model without an evaluation is refused whatever this is."""

    @field_validator("model", mode="before")
    @classmethod
    def _shipped_name(cls, value: Any) -> Any:
        """A bare name (`spotnet`: no directory part, no suffix) is a shipped model; anything
        else is a path, resolved below."""
        if isinstance(value, str) and shipped.is_model_name(value):
            return shipped.model_path(value)
        return value

    @field_validator("model")
    @classmethod
    def _model_path(cls, value: Path, info: ValidationInfo) -> Path:
        return _resolve(value, info)


class QualitySettings(Section):
    """When a stack is doubtful (docs/safety.md): no move is made on it."""

    beam_min_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    disc_min_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    wide_saturated_max_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.001
    saturation_abort_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05


class SafetySettings(Section):
    """The envelope of docs/safety.md: every limit on what the daemon may command, in motor units."""

    window_units: Annotated[float, Field(gt=0.0, le=5000.0)] = 400.0
    max_excursion_units: Annotated[float, Field(gt=0.0, le=5000.0)] = 350.0
    max_step_units: Annotated[float, Field(gt=0.0, le=1000.0)] = 250.0
    deadband_units: Annotated[float, Field(ge=0.0, le=100.0)] = 8.0
    gain: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    rate_limit_units_per_hour: Annotated[float, Field(gt=0.0, le=100000.0)] = 1000.0
    on_limit: Literal["scale", "refuse"] = "scale"
    rollback_margin_units: Annotated[float, Field(ge=0.0, le=100.0)] = 5.0
    motor_tolerance_units: Annotated[float, Field(ge=0.0, le=100.0)] = 5.0
    hold_after_failures: Annotated[int, Field(ge=1, le=100)] = 3
    on_aperture_moved: Literal["pause", "new-reference"] = "pause"
    c1_tolerance: Annotated[float, Field(gt=0.0, le=0.1)] = 1e-4
    busy_file: PathText | None = None

    @field_validator("busy_file")
    @classmethod
    def _busy_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _consistent(self) -> SafetySettings:
        if self.max_excursion_units > self.window_units * math.sqrt(2):
            raise key_error("max_excursion_units", f"{self.max_excursion_units} reaches past the corner of "
                            f"safety.window_units ({self.window_units} per axis): it could never be used")
        if self.deadband_units >= self.max_step_units:
            raise key_error("deadband_units", f"{self.deadband_units} is not below safety.max_step_units "
                            f"({self.max_step_units}): no correction could ever be made")
        return self


class ScheduleSettings(Section):
    """When cycles run (the policy is service.schedule), and in which mode the daemon starts the first
    time."""

    interval_s: Annotated[float, Field(ge=10.0, le=86400.0)] = 600.0
    jitter_s: Annotated[float, Field(ge=0.0, le=3600.0)] = 10.0
    mode: Literal["live", "dry-run"] = "dry-run"
    adaptive: bool = True
    min_interval_s: Annotated[float, Field(ge=10.0, le=86400.0)] = 60.0
    max_interval_s: Annotated[float, Field(ge=10.0, le=86400.0)] = 800.0
    target_units: Annotated[float, Field(gt=0.0, le=500.0)] = 10.0
    recheck_units: Annotated[float, Field(gt=0.0, le=1000.0)] = 15.0
    check_interval_s: Annotated[float, Field(ge=0.0, le=86400.0)] = 300.0

    @model_validator(mode="after")
    def _jitter_below_interval(self) -> ScheduleSettings:
        if self.jitter_s >= self.interval_s / 2:
            raise key_error("jitter_s", f"{self.jitter_s} s is not below half of "
                            f"schedule.interval_s ({self.interval_s} s)")
        if self.adaptive:
            if self.min_interval_s > self.max_interval_s:
                raise key_error("min_interval_s", f"{self.min_interval_s} s is above "
                                f"schedule.max_interval_s ({self.max_interval_s} s)")
            if self.jitter_s >= self.min_interval_s / 2:
                raise key_error("jitter_s", f"{self.jitter_s} s is not below half of "
                                f"schedule.min_interval_s ({self.min_interval_s} s)")
            check = self.check_interval_s
            if check and not self.min_interval_s <= check <= self.max_interval_s:
                raise key_error("check_interval_s", f"{self.check_interval_s} s is not between "
                                f"schedule.min_interval_s ({self.min_interval_s} s) and "
                                f"schedule.max_interval_s ({self.max_interval_s} s); 0 turns the check off")
        return self


class MetricsSettings(Section):
    """The Prometheus endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 9641


class ControlSettings(Section):
    """The control socket the CLI verbs talk to (owner and group only), and the optional HTTP
    endpoint an acquisition script on another PC pauses and resumes the daemon through."""

    socket: PathText = Path("/run/temalign/control.sock")
    group: str | None = None
    http_listen: str | None = Field(
        default=None, description="HOST:PORT of the HTTP control endpoint, or null (off)")
    http_token_file: PathText | None = Field(
        default=None, description="file holding the bearer token the HTTP endpoint requires")

    _http_token: str | None = PrivateAttr(default=None)

    @field_validator("http_listen", mode="before")
    @classmethod
    def _http_address(cls, value: Any) -> Any:
        if isinstance(value, str):
            return check_address(value)
        return value

    @field_validator("http_token_file")
    @classmethod
    def _http_token_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _resolve(value, info)

    @model_validator(mode="after")
    def _http_needs_a_token(self) -> ControlSettings:
        if self.http_listen is not None and self.http_token_file is None:
            raise key_error("http_token_file", "required when control.http_listen is set: the endpoint "
                            "serves nothing without a token (a file readable by the daemon only)")
        if self.http_token_file is not None:
            try:
                self._http_token = read_token(self.http_token_file)
            except ValueError as error:
                raise key_error("http_token_file", str(error)) from None
        return self

    @property
    def http_host_port(self) -> tuple[str, int] | None:
        """(host, port) of the HTTP endpoint; None when it is off."""
        return None if self.http_listen is None else parse_address(self.http_listen)

    @property
    def http_token(self) -> str | None:
        """The token read from `http_token_file` at load time."""
        return self._http_token

    @field_validator("socket")
    @classmethod
    def _socket_path(cls, value: Path, info: ValidationInfo) -> Path:
        value = _resolve(value, info)
        if len(os.fsencode(value)) > 107:
            raise ValueError(f"{value}: longer than a Unix socket path may be (107 bytes)")
        system = next((d for d in SYSTEM_DIRS if value.parent == Path(d) or (
            d not in SHALLOW_SYSTEM_DIRS and value.parent.is_relative_to(d))), None)
        if system is not None:
            raise ValueError(f"{value}: in {system}, a system directory the daemon must not write; use a "
                             "directory of its own such as /run/temalign/control.sock")
        if (value.exists() or value.is_symlink()) and not stat.S_ISSOCK(os.lstat(value).st_mode):
            raise ValueError(f"{value} exists and is not a socket: the daemon would refuse to start "
                             "rather than replace it; name a path of its own")
        return value


SYSTEM_DIRS = ("/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys",
               "/usr", "/var", "/var/lib", "/var/log", "/var/run")
"""Where no control socket goes: the system's own directories (and, but for the shallow ones,
everything under them). /run/temalign (the unit's RuntimeDirectory) is the place."""
SHALLOW_SYSTEM_DIRS = ("/", "/var", "/var/lib", "/var/log", "/var/run")
"""System directories whose subdirectories may be a daemon's own (/var/lib/temalign)."""


class ModelsSettings(Section):
    """Shadow runs and promotion (`temalign model shadow|promote|rollback`, docs/learning.md)."""

    promote_min_verified: Annotated[int, Field(ge=1, le=100000)] = 20
    """Verified cycles a candidate must have been scored on in shadow before it may be promoted."""


class JournalSettings(Section):
    """The write-ahead journal in paths.state_dir: rotation and retention."""

    max_bytes: Annotated[int, Field(ge=65536, le=1 << 34)] = 16 << 20
    keep_files: Annotated[int, Field(ge=1, le=1000)] = 20


class StoreSettings(Section):
    """The stack store (record.stacks): every full wobble kept on disk for learning, bounded."""

    enabled: bool = True
    dir: PathText | None = None
    """Where the stacks go; null: `<paths.state_dir>/stacks`."""
    max_bytes: Annotated[int, Field(ge=1 << 20, le=1 << 44)] = 2_000_000_000
    min_free_bytes: Annotated[int, Field(ge=0, le=1 << 44)] = 1 << 30
    reference_label_s: Annotated[float, Field(ge=0.0, le=86400.0)] = 900.0

    @field_validator("dir")
    @classmethod
    def _dir(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        value = _resolve(value, info)
        if value.exists() and not value.is_dir():
            raise ValueError(f"{value} exists and is not a directory")
        return value


class Settings(Section):
    """Everything the daemon reads from temalign.yaml. Only `microscope.address` is required: the
    daemon connects to no address nobody wrote down."""

    microscope: MicroscopeSettings
    source: SourceSettings = Field(default_factory=SourceSettings)
    wobble: WobbleSettings = Field(default_factory=WobbleSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    estimator: EstimatorSettings = Field(default_factory=EstimatorSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    control: ControlSettings = Field(default_factory=ControlSettings)
    journal: JournalSettings = Field(default_factory=JournalSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)

    @property
    def store_dir(self) -> Path:
        """Where the stack store keeps its stacks: `store.dir`, else `<paths.state_dir>/stacks`."""
        return self.store.dir if self.store.dir is not None else self.paths.state_dir / "stacks"

    @model_validator(mode="after")
    def _acquire_outlasts_exposure(self) -> Settings:
        exposure = self.source.camera.exposure_s
        timeout = self.microscope.acquire_timeout_s
        if self.source.kind == "camera" and exposure is not None and timeout <= exposure:
            raise key_error(
                "microscope.acquire_timeout_s",
                f"{self.microscope.acquire_timeout_s} s is not longer than source.camera.exposure_s "
                f"({exposure} s): every acquisition would time out",
            )
        return self
