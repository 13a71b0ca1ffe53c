"""The examples run against real servers started with the control-plane test harness (``cp_harness``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control_plane"))
