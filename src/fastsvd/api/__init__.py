"""The HTTP edge: fal's queue protocol, files and operations (FastAPI)."""
