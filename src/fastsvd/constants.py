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

# a worker heard from within this many leases (FASTSVD_LEASE_S) counts as serving its endpoints
# (/ready, the metrics, a queued request's "no worker serves this" note): one missed heartbeat
# is not yet a lost worker
SERVING_LEASES = 3
DRAIN_GRACE_S = 60.0  # fastsvd serve's stop: how long workers get to hand back their jobs
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
