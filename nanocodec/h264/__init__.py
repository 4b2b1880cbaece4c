"""H.264 (AVC) Annex-B syntax and a pure-Python validator for the paper's encoder settings."""
