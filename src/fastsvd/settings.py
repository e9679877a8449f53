"""Settings: one frozen object, read from the environment once at start-up and passed down."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastsvd.constants import DEFAULT_PRESET, MEMORY_MODES, SERVING_LEASES

ENV_PREFIX = "FASTSVD_"
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def flag(value: str | None) -> bool | None:
    """The one reading of a yes/no setting or header: True for 1, true, yes or on; False for 0,
    false, no or off (any case); None when unset or empty. Anything else is a ValueError."""
    word = (value or "").strip().lower()
    if not word:
        return None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"must be 1, true, yes or on (or 0, false, no or off), not {value!r}")


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with its environment variable in the comment."""

    # --- models
    preset: str = DEFAULT_PRESET  # FASTSVD_PRESET: svd-xt-1.1, svd-xt or tiny
    device: str | None = None  # FASTSVD_DEVICE: cuda, cuda:1, cpu (default: the best there is)
    dtype: str | None = None  # FASTSVD_DTYPE: bf16, fp16, fp32 (default: bf16 on CUDA)
    video_model: str | None = None  # FASTSVD_VIDEO_MODEL: HF id or folder of the SVD weights
    first_frame_model: str | None = None  # FASTSVD_FIRST_FRAME_MODEL: HF id or folder (SDXL)
    # FASTSVD_FEW_STEP_VIDEO_MODEL, FASTSVD_FEW_STEP_FIRST_FRAME_MODEL: the few-step U-Nets
    # (AnimateLCM-SVD-xt, SDXL-Lightning): owner/name/file.safetensors, a file, or a folder
    few_step_video_model: str | None = None
    few_step_first_frame_model: str | None = None
    # FASTSVD_FEW_STEP_GUIDANCE: where the few-step video's per-frame guidance ramp ends
    # (default 1.2, the AnimateLCM authors'; 1.0: no guidance, one U-Net batch instead of two)
    few_step_guidance: float | None = None
    # FASTSVD_FPS_CONDITIONING: "preset" (default): the video model is conditioned on the fps
    # its preset's model was fine-tuned at, and a request's fps is the MP4's playback rate;
    # "request": on the request's fps - 1, as diffusers' StableVideoDiffusionPipeline does
    fps_conditioning: str = "preset"
    # FASTSVD_ENDPOINTS: the endpoints a worker loads models for and serves, comma-separated
    # (default: all of them)
    endpoints: tuple[str, ...] = ()
    # FASTSVD_RUNNER: "module:attribute" of a runner factory replacing the model (tests, demos)
    runner: str | None = None
    optimize: str | None = None  # FASTSVD_OPTIMIZE: e.g. channels_last (pipeline/optimize.py)
    # FASTSVD_COMPILE: 0, 1 or regional (pipeline/compile.py; default: on for CUDA only)
    compile: str | None = None
    # FASTSVD_MEMORY_MODE: auto (default), resident, offload-first-frame or offload-unets: which
    # models wait on the CPU between stages (pipeline/memory.py)
    memory_mode: str | None = None
    # FASTSVD_GPU_MEMORY_GB: plan for this much GPU memory instead of the card's total (a GPU
    # shared with other programs; emulating a smaller card)
    gpu_memory_gb: float | None = None

    # --- service
    data_dir: Path = field(default_factory=lambda: Path("data"))  # FASTSVD_DATA_DIR
    database_url: str | None = None  # FASTSVD_DATABASE_URL (default: SQLite in data_dir)
    # FASTSVD_STORAGE_URL: s3://bucket/prefix or file:///folder (default: data_dir/files)
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # FASTSVD_S3_ENDPOINT_URL: MinIO, R2, Ceph... (not AWS)
    s3_region: str | None = None  # FASTSVD_S3_REGION
    db_pool_size: int = 5  # FASTSVD_DB_POOL_SIZE: PostgreSQL connections per process, kept
    host: str = "127.0.0.1"  # FASTSVD_HOST
    port: int = 8000  # FASTSVD_PORT
    # FASTSVD_TLS_CERT, FASTSVD_TLS_KEY: PEM files; both set, the API speaks https itself
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth: bool = True  # FASTSVD_AUTH=0 turns it off; allowed on loopback only
    workers: int | None = None  # FASTSVD_WORKERS (default: one per GPU, one on a CPU)
    lease_s: float = 30.0  # FASTSVD_LEASE_S: a worker silent this long loses its job
    # FASTSVD_OUTAGE_WAIT_S: how long a worker waits out an unreachable file storage (or a full
    # disk) with a job in hand before it fails the request as storage_unavailable
    outage_wait_s: float = 300.0
    max_queued: int = 1000  # FASTSVD_MAX_QUEUED: waiting requests, all keys; beyond: 429
    max_active_per_key: int = 100  # FASTSVD_MAX_ACTIVE_PER_KEY: a key's unfinished requests
    submits_per_minute: int = 120  # FASTSVD_SUBMITS_PER_MINUTE: per key, all API processes; 0: off
    # FASTSVD_REQUESTS_PER_S: any calls per key (and failed logins per client address), per API
    # process, with bursts of twice as many; 0: off
    requests_per_s: float = 100.0
    # FASTSVD_AUTH_FAILURES_PER_S: wrong or missing keys per client address (bursts of ten times
    # as many), per API process; beyond it 429 before any key lookup; 0: off
    auth_failures_per_s: float = 2.0
    max_attempts: int = 3  # FASTSVD_MAX_ATTEMPTS: tries before a crashing job is given up
    # FASTSVD_RETENTION_S: how long files are kept, and the most a request may ask for
    # (X-Fal-Object-Lifecycle-Preference)
    retention_s: float = 7 * 24 * 3600.0
    # FASTSVD_HOUSEKEEPING_INTERVAL_S: how often ``serve`` deletes expired files and requeues
    # jobs of dead workers
    housekeeping_interval_s: float = 5.0
    idle_poll_s: float = 2.0  # FASTSVD_IDLE_POLL_S: an idle worker's safety-net poll
    # FASTSVD_DRAIN_S: a worker told to stop (SIGTERM) finishes its job within this long, or
    # stops it at its next step and hands it back to the queue (default: waits for the job)
    drain_s: float | None = None
    # FASTSVD_METRICS_PORT: where `fastsvd worker` serves its own Prometheus metrics (unset: not
    # served); the API's /metrics has the queue's
    metrics_port: int | None = None
    # FASTSVD_ALLOW_PRIVATE_URLS=1 lets webhooks reach private addresses (development only)
    allow_private_urls: bool = False
    # FASTSVD_WEBHOOK_ATTEMPTS: tries per webhook: the first and, as fal, 10 retries
    webhook_attempts: int = 11
    webhook_window_s: float = 7200.0  # FASTSVD_WEBHOOK_WINDOW_S: spread over about 2 hours
    webhook_timeout_s: float = 10.0  # FASTSVD_WEBHOOK_TIMEOUT_S: one delivery's time limit

    def model_reference(self, key: str) -> str | None:
        """Where model ``key`` is (``presets.model_key``: "video", "few_step_first_frame"...),
        if ``FASTSVD_<KEY>_MODEL`` says; None: the preset's."""
        return {
            "video": self.video_model,
            "first_frame": self.first_frame_model,
            "few_step_video": self.few_step_video_model,
            "few_step_first_frame": self.few_step_first_frame_model,
        }.get(key)

    def guidance(self, family: str) -> float | None:
        """Where a family's video guidance ramp ends, if set (``FASTSVD_FEW_STEP_GUIDANCE``);
        None: the preset's."""
        return self.few_step_guidance if family == "few_step" else None

    @property
    def serving_window_s(self) -> float:
        """A worker heard from within this long counts as serving (``SERVING_LEASES``)."""
        return SERVING_LEASES * self.lease_s

    @property
    def db_url(self) -> str:
        """The database URL, SQLite under ``data_dir`` unless one is set."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'fastsvd.db'}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``FASTSVD_*`` variables; unset or empty ones keep their defaults."""
        env = os.environ if env is None else env
        defaults = cls()

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name.upper(), "").strip()
            return value or None

        def number(name: str, default: float) -> float:
            value = get(name)
            return _number(name, value, 0.0, math.inf) if value is not None else default

        workers = get("workers")
        tls_cert, tls_key = get("tls_cert"), get("tls_key")
        return cls(
            preset=get("preset") or DEFAULT_PRESET,
            device=get("device"),
            dtype=get("dtype"),
            video_model=get("video_model"),
            first_frame_model=get("first_frame_model"),
            few_step_video_model=get("few_step_video_model"),
            few_step_first_frame_model=get("few_step_first_frame_model"),
            few_step_guidance=_guidance(get("few_step_guidance")),
            fps_conditioning=_fps_conditioning(get("fps_conditioning")),
            endpoints=tuple(e.strip() for e in (get("endpoints") or "").split(",") if e.strip()),
            runner=get("runner"),
            optimize=get("optimize"),
            compile=get("compile"),
            memory_mode=_memory_mode(get("memory_mode")),
            gpu_memory_gb=_optional_number("gpu_memory_gb", get("gpu_memory_gb"), 1.0, 4096.0),
            data_dir=Path(get("data_dir") or defaults.data_dir),
            database_url=get("database_url"),
            storage_url=get("storage_url"),
            s3_endpoint_url=get("s3_endpoint_url"),
            s3_region=get("s3_region"),
            db_pool_size=int(number("db_pool_size", defaults.db_pool_size)),
            host=get("host") or defaults.host,
            port=int(number("port", defaults.port)),
            tls_cert=Path(tls_cert) if tls_cert is not None else None,
            tls_key=Path(tls_key) if tls_key is not None else None,
            auth=_flag("auth", get("auth"), default=True),
            workers=int(workers) if workers is not None else None,
            lease_s=number("lease_s", defaults.lease_s),
            outage_wait_s=number("outage_wait_s", defaults.outage_wait_s),
            max_queued=int(number("max_queued", defaults.max_queued)),
            max_active_per_key=int(number("max_active_per_key", defaults.max_active_per_key)),
            submits_per_minute=int(number("submits_per_minute", defaults.submits_per_minute)),
            requests_per_s=number("requests_per_s", defaults.requests_per_s),
            auth_failures_per_s=number("auth_failures_per_s", defaults.auth_failures_per_s),
            max_attempts=int(number("max_attempts", defaults.max_attempts)),
            retention_s=number("retention_s", defaults.retention_s),
            housekeeping_interval_s=_positive(
                "housekeeping_interval_s",
                number("housekeeping_interval_s", defaults.housekeeping_interval_s),
            ),
            idle_poll_s=number("idle_poll_s", defaults.idle_poll_s),
            drain_s=_optional_number("drain_s", get("drain_s"), 0.0, math.inf),
            metrics_port=_port("FASTSVD_METRICS_PORT", get("metrics_port")),
            allow_private_urls=_flag(
                "allow_private_urls", get("allow_private_urls"), default=False
            ),
            webhook_attempts=int(number("webhook_attempts", defaults.webhook_attempts)),
            webhook_window_s=number("webhook_window_s", defaults.webhook_window_s),
            webhook_timeout_s=number("webhook_timeout_s", defaults.webhook_timeout_s),
        )

    def with_overrides(self, **values: object) -> Settings:
        """A copy with every given value that is not None replaced (command-line flags)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})  # type: ignore[arg-type]


def _flag(name: str, value: str | None, *, default: bool) -> bool:
    try:
        parsed = flag(value)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} {exc}") from None
    return default if parsed is None else parsed


def _positive(name: str, value: float) -> float:
    if not value > 0:
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be more than 0, not {value}")
    return value


def _fps_conditioning(value: str | None) -> str:
    if value is None:
        return "preset"
    if value.lower() not in ("preset", "request"):
        raise ValueError(f"FASTSVD_FPS_CONDITIONING must be preset or request, not {value}")
    return value.lower()


def _guidance(value: str | None) -> float | None:
    if value is None:
        return None
    scale = float(value)
    if not 1.0 <= scale <= 2.0:  # the range the AnimateLCM authors offer
        raise ValueError(f"FASTSVD_FEW_STEP_GUIDANCE must be 1.0-2.0, not {value}")
    return scale


def _number(name: str, value: str, low: float, high: float) -> float:
    """``value`` as a number from ``low`` to ``high``; else an error naming the variable."""
    try:
        parsed = float(value)
    except ValueError:
        parsed = math.nan
    if not low <= parsed <= high or math.isinf(parsed):  # NaN fails the comparison too
        bounds = f">= {low:g}" if math.isinf(high) else f"from {low:g} to {high:g}"
        raise ValueError(f"{ENV_PREFIX}{name.upper()} must be a number {bounds}, not {value}")
    return parsed


def _optional_number(name: str, value: str | None, low: float, high: float) -> float | None:
    return None if value is None else _number(name, value, low, high)


def _port(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise ValueError(f"{name} must be a TCP port, 1-65535, not {value}")
    return int(value)


def _memory_mode(value: str | None) -> str | None:
    if value is None or value.lower() == "auto":
        return None
    if value.lower() not in MEMORY_MODES:
        raise ValueError(
            f"FASTSVD_MEMORY_MODE must be auto or one of {', '.join(MEMORY_MODES)}, not {value}"
        )
    return value.lower()
