"""The sample recording bundled with Kestrel (see NOTICE for its source and licence)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

SAMPLE_DIR: Final = Path(__file__).parent / "data" / "us-equity-ticks" / "ibm"
SAMPLE_FILES: Final = (SAMPLE_DIR / "20131010_quote.zip", SAMPLE_DIR / "20131010_trade.zip")
"""IBM quotes and trades of 10 October 2013 (LEAN tick format)."""
