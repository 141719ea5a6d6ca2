"""Benchmark: a 2,000-span trace's waterfall drawn by `autotrace view`'s page in headless Chromium.

The viewer (``autotrace view --memory`` on free ports) holds the browser tests' 2,000-span
trace (integration/test_view_browser.py); Debian's chromium, driven by Selenium and
chromedriver as the tests drive it, opens ``/trace/{id}`` ``--rounds`` times. The figure is
the page's own performance mark: milliseconds from navigation to the drawn waterfall.
Target (issue 14): at most 1 s.

    python benchmarks/view_browser.py --rounds 7
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "integration"), str(ROOT / "tests")]

import test_view_browser as pages  # noqa: E402 - the tests' data, viewer and browser

TARGET_MS = 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="page loads measured (one more, first, not counted)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, pages.Viewer(Path(tmp)) as viewer:
        pages.ingest(viewer, pages.big_trace(pages.BIG_START_US))
        browser = pages.start_browser()
        try:
            times = []
            for _ in range(args.rounds + 1):
                browser.get(f"{viewer.ui}/trace/{pages.BIG}")
                rows = pages.wait_for(browser, ".span-row", pages.BIG_SPANS)
                assert len(rows) == pages.BIG_SPANS, len(rows)
                times.append(pages.rendered_ms(browser))
        finally:
            browser.quit()
    first, measured = times[0], times[1:]
    median = statistics.median(measured)
    verdict = "met" if median <= TARGET_MS else "NOT met"
    print(f"{'2,000-span waterfall, first load':<56}{first:>10.0f} ms")
    print(f"{f'2,000-span waterfall, median of {len(measured)}':<56}{median:>10.0f} ms   "
          f"target <= {TARGET_MS:.0f} ({median / TARGET_MS:.2f}x): {verdict}")
    print(f"{'min / max':<56}{min(measured):>10.0f} / {max(measured):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
