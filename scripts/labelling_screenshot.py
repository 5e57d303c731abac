"""Take docs/images/labelling.png: the labelling page in headless Chromium over a store with drawn example pairs.

Run: python scripts/labelling_screenshot.py (needs Playwright and Debian's chromium, as the browser test does).
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw
from playwright.sync_api import expect, sync_playwright

from rlcm.labelling.server import start_in_thread
from rlcm.runs.judgements import JudgementStore

OUT = Path(__file__).resolve().parents[1] / "docs" / "images" / "labelling.png"
CHROMIUM = "/usr/bin/chromium"


def sunset(sky: tuple[int, int, int], sun_y: int, ridge: list[int], size: int = 384) -> bytes:
    """A drawn landscape standing in for a sampled image (the docs show the page, not a model)."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for y in range(size):
        t = y / size
        draw.line([(0, y), (size, y)], fill=tuple(int(c * (1 - 0.5 * t) + 255 * 0.3 * t) for c in sky))
    draw.ellipse([size * 0.55, sun_y, size * 0.55 + 70, sun_y + 70], fill=(255, 214, 120))
    step = size // (len(ridge) - 1)
    draw.polygon([(0, size)] + [(i * step, h) for i, h in enumerate(ridge)] + [(size, size)], fill=(52, 48, 70))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def main() -> int:
    with tempfile.TemporaryDirectory() as run:
        store = JudgementStore(Path(run))
        store.set_policy_version(12)
        a = sunset((238, 120, 80), 150, [260, 200, 240, 180, 230, 210, 250])
        b = sunset((90, 110, 190), 90, [280, 250, 270, 230, 260, 275, 265])
        for i in range(7):
            store.add_pair("a sunset over the mountains, oil painting", a, b, 11 + i // 4, (40 + i, 40 + i))
        server = start_in_thread(Path(run), port=0, token="example")
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1000, "height": 700})
                page.goto(server.url + "&labeller=alice")
                expect(page.locator("#prompt")).not_to_be_empty()
                page.keyboard.press("ArrowLeft")
                expect(page.locator("#judged")).to_have_text("1")
                OUT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(OUT))
                browser.close()
        finally:
            server.stop()
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
