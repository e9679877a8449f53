"""Every fixed number and name of fastsvd in one place, with its unit in its name."""

from __future__ import annotations

# --- the fal endpoint contract -------------------------------------------------------------

TEXT_TO_VIDEO_ENDPOINT = "fal-ai/fast-svd/text-to-video"
IMAGE_TO_VIDEO_ENDPOINT = "fal-ai/fast-svd"
# the few-step family: SVD-XT distilled with AnimateLCM ("SVD v1.1 at lightning speed")
FEW_STEP_TEXT_TO_VIDEO_ENDPOINT = "fal-ai/fast-svd-lcm/text-to-video"
FEW_STEP_IMAGE_TO_VIDEO_ENDPOINT = "fal-ai/fast-svd-lcm"

NUM_FRAMES = 25  # SVD-XT renders 25 frames; fal: "Total video length is 25 frames"
# fastsvd's extension: longer videos as chained segments of NUM_FRAMES (pipeline/chain.py); 241
# is ten segments, each after the first adding NUM_FRAMES - 1 frames (the join is not repeated)
NUM_FRAMES_MIN, NUM_FRAMES_MAX = 1, 241

DEFAULT_NEGATIVE_PROMPT = (
    "unrealistic, saturated, high contrast, big nose, painting, drawing, sketch, cartoon, "
    "anime, manga, render, CG, 3d, watermark, signature, label"
)
DEFAULT_MOTION_BUCKET_ID = 127
DEFAULT_COND_AUG = 0.02
DEFAULT_STEPS = 20
DEFAULT_FEW_STEP_STEPS = 4  # fal-ai/fast-svd-lcm
DEFAULT_FPS = 10
DEFAULT_VIDEO_SIZE = "landscape_16_9"

# fal publishes no bounds for this endpoint; these follow its sibling endpoints where they have
# them (motion_bucket_id 1-255, cond_aug 0-10) and the model's limits elsewhere.
MOTION_BUCKET_ID_MIN, MOTION_BUCKET_ID_MAX = 1, 255
COND_AUG_MIN, COND_AUG_MAX = 0.0, 10.0
STEPS_MIN, STEPS_MAX = 1, 50
FEW_STEP_STEPS_MAX = 20  # fal-ai/fast-svd-lcm publishes 1-20
FPS_MIN, FPS_MAX = 1, 100
SEED_MIN, SEED_MAX = 0, 2**63 - 1
RANDOM_SEED_MAX = 2**32 - 1  # seeds drawn for the caller stay short enough to read and retype
PROMPT_MAX_CHARS = 2000

# Custom sizes: each side a multiple of SIZE_MULTIPLE (the VAE's /8 times the U-Net's three
# /2 downsamples, so every level of the U-Net sees whole latents), within these bounds.
SIZE_MULTIPLE = 64
SIDE_MIN_PX, SIDE_MAX_PX = 64, 2048
PIXELS_MAX = 1024 * 1024  # the largest fal preset, square_hd

# --- output files ------------------------------------------------------------------------

VIDEO_CONTENT_TYPE = "video/mp4"
VIDEO_CRF = 17  # x264 quality: visually lossless for 25 short frames, a few hundred KB

# FASTSVD_MEMORY_MODE's values besides auto, leanest last (pipeline/memory.py)
MEMORY_MODES = ("resident", "offload-first-frame", "offload-unets")

EXIT_MODEL_NOT_AVAILABLE = 3  # a worker's exit code when its weights are missing: not restarted
EXIT_CANNOT_RUN_HERE = 4  # no usable GPU, or its models do not fit it: not restarted
EXIT_GPU_FAULT = 5  # its GPU failed under a job (handed back): restarted, a fresh process

DEFAULT_PRESET = "svd-xt-1.1"  # SDXL base first frame + SVD-XT 1.1, the model fal serves

# --- durations (seconds) and multiples of the lease ------------------------------------------

# Multiples of the lease (FASTSVD_LEASE_S, a setting):
# a worker heard from within this many leases counts as serving its endpoints (/ready, the
# metrics, a queued request's "no worker serves this" note): one missed heartbeat is not yet a
# lost worker
SERVING_LEASES = 3
# a worker renews its job's lease, and beats, this many times a lease: two renewals may fail
# before it lapses. A PostgreSQL statement gets at most one renewal's time (see below), so a
# write stuck behind a lock fails, and is retried, while the lease still holds.
RENEWALS_PER_LEASE = 3
REAPS_PER_LEASE = 2  # a worker looks for jobs of dead workers at least this often a lease
REAP_EVERY_S = 5.0  # ... and at least this often (also: housekeeping)
START_DEADLINE_SWEEP_S = 1.0  # the API ends queued jobs past their start deadline this often

# workers and fastsvd serve
DRAIN_GRACE_S = 60.0  # fastsvd serve's stop: how long workers get to hand back their jobs
SUPERVISOR_POLL_S = 0.5  # fastsvd serve's look at its worker processes
LEAVE_DEADLINE_S = 5.0  # a stopping worker's attempts to take itself off the roster
# A job's progress lines are kept in the worker and written together: at most this late (the
# heartbeat writes them), at once for the first frame, and with the result in its transaction.
LOG_FLUSH_S = 0.5
NVIDIA_SMI_TIMEOUT_S = 10.0  # one nvidia-smi call (platform checks)
# object stores: a store that went away is noticed within seconds (then waited out,
# ``fastsvd.retry``), while a slow but working one still gets through
S3_CONNECT_TIMEOUT_S = 2.0  # a TCP connect (a reachable store answers in milliseconds)
S3_READ_TIMEOUT_S = 10.0  # silence on an open connection (a large PUT's answer included)
WEBHOOK_IDLE_POLL_S = 0.5  # the deliverer's look at its outbox when nothing is due
CANCEL_POLL_S = 1.0  # with pushed cancels: how often a busy worker still reads its cancel flag
# how often the wake-up listener looks up from its connection (and how long closing it can
# wait): a wait on its socket, no query, so looking up often costs nothing
LISTEN_POLL_S = 0.1

# waiting out a dependency that is away (``fastsvd.retry``'s backoff)
FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0  # so a dependency that is back is used again within seconds

# the job store
SQLITE_BUSY_TIMEOUT_S = 30.0
# a fresh file's switch to WAL mode is retried (for as long as the busy timeout) this quickly
SQLITE_WAL_FIRST_DELAY_S, SQLITE_WAL_MAX_DELAY_S = 0.005, 0.2
POSTGRES_CONNECT_TIMEOUT_S = 2  # libpq's least; a reachable server answers in milliseconds
# The server ends a statement that runs longer than this, or than a lease's renewal interval
# (at least 1 s) where that is shorter: well under a worker's lease.
POSTGRES_STATEMENT_TIMEOUT_S = 10.0
# A pooled connection idle for longer than this is pinged before use (SQLAlchemy's pre-ping,
# only where it can matter): the server may have restarted, or dropped it, meanwhile.
POSTGRES_PING_IDLE_S = 1.0

# the HTTP API
# Verified keys are remembered this long, so a client polling every 0.1 s costs no key lookup;
# a revoked key stops working within this time.
KEY_CACHE_S = 5.0
QUEUE_FULL_RETRY_AFTER_S = 10  # Retry-After of a 429 for a full queue
RATE_WINDOW_S = 60.0  # the submit-rate limit's sliding window
SSE_KEEPALIVE_S = 15.0  # a status stream with nothing new sends a comment this often
STREAM_POLL_S = 0.1  # a status stream's look at its request
# POST /{endpoint} (the synchronous run): its look for the result starts quick, backs off to this
RUN_POLL_FIRST_S, RUN_POLL_MAX_S = 0.02, 0.25
UNAVAILABLE_RETRY_AFTER_S = 2  # Retry-After of a 503 while a dependency is away
HTTP_SHUTDOWN_GRACE_S = 10  # the API's stop: how long open connections get to finish
# a rotated webhook signing key stays published in the JWKS this long by default
SIGNING_KEY_OVERLAP_S = 24 * 3600.0

# --- input pictures -----------------------------------------------------------------------

DATA_URI_MAX_BYTES = 20 * 1024 * 1024  # a data: URI's decoded size
IMAGE_PIXELS_MAX = 40_000_000  # refuse larger pictures before decoding them (bombs)
UPLOAD_MAX_BYTES = 50 * 1024 * 1024  # one uploaded file
FETCH_MAX_BYTES = 20 * 1024 * 1024  # an input file fetched from a URL
FETCH_TIMEOUT_S = 30.0  # the whole download, redirects included
IDEMPOTENCY_KEY_MAX_CHARS = 200
# X-Fal-Request-Timeout: fal's documented minimum ("> 0.1 seconds"), and a week at most
START_TIMEOUT_MIN_S, START_TIMEOUT_MAX_S = 0.1, 7 * 24 * 3600.0
URL_MAX_CHARS = 8192  # image_url, other than data: URIs
WEBHOOK_URL_MAX_CHARS = 2048  # fal_webhook: it travels in the query string, percent-encoded

# --- the playground and clients -----------------------------------------------------------

HISTORY_DEFAULT, HISTORY_MAX = 20, 100  # GET .../requests?limit=: a key's newest requests
CLIENT_TIMEOUT_S = 60.0  # fastsvd.client: one HTTP call's time limit
# fastsvd.client's status polls start quick and back off to this
CLIENT_POLL_FIRST_S, CLIENT_POLL_MAX_S = 0.1, 1.0
