"""The generation core: prompt -> first frame -> SVD-XT video -> MP4 (the only torch code)."""
