"""The upload page in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, never a
downloaded browser), against ``deepscan serve`` running as a real process on a free loopback port.
The ``browser`` fixture is defined in ``tests.workers.serving`` (imported by the conftest).

A screenshot of the result page is kept in ``build/test-artifacts/``.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUNDLED_PACK, REPO
from tests.workers.serving import get_json, serve

ARTIFACTS = REPO / "build" / "test-artifacts"
PAGE_TIMEOUT_S = 240


def wait_until(driver: Any, script: str, what: str, timeout_s: float = PAGE_TIMEOUT_S) -> Any:
    """Poll a JavaScript expression in the page until it is truthy."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = driver.execute_script(f"return {script};")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.25)


def card(name: str) -> str:
    return f"document.querySelector('.card[data-filename=\"{name}\"]')"


def upload_and_read(driver: Any, base: str, files: list[Path], shot: Path) -> dict[str, dict[str, Any]]:
    """Upload ``files`` through the page's file picker, wait for every verdict and figure, read them."""
    from selenium.webdriver.common.by import By

    driver.get(base + "/")
    wait_until(driver, "document.getElementById('ready').textContent === '(ready)'", "the page to be ready")
    driver.find_element(By.ID, "files").send_keys("\n".join(str(p) for p in files))
    read: dict[str, dict[str, Any]] = {}
    for path in files:
        name = path.name
        wait_until(
            driver, f"{card(name)} && {card(name)}.dataset.status === 'done'", f"the verdict of {name}"
        )
        wait_until(
            driver,
            f"Array.from({card(name)}.querySelectorAll('figure')).every(f => f.hidden || f.dataset.done === 'true')",
            f"the figures of {name}",
        )
        read[name] = driver.execute_script(
            """
            const c = document.querySelector(arguments[0]);
            const text = (sel) => { const e = c.querySelector(sel); return e && !e.closest('[hidden]') ? e.textContent : null; };
            const image = (sel) => {
              const img = c.querySelector(sel);
              return img.closest('figure').hidden ? null
                : {loaded: img.dataset.loaded, width: img.naturalWidth, height: img.naturalHeight};
            };
            return {label: text('.label'), real: text('.value-real'), fake: text('.value-fake'),
                    reason: text('.reason'), facts: text('.facts'), audio: text('.audio-verdict'),
                    caption: text('.explanation-caption'), media: c.dataset.mediaType,
                    explanation: image('.explanation'), timeline: image('.timeline')};
            """,
            f'.card[data-filename="{name}"]',
        )
    shot.parent.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1100, max(1000, int(height) + 40))
    driver.save_screenshot(str(shot))
    return read


def drop_a_drawing(driver: Any) -> str:
    """Drop a PNG drawn in the page onto the drop zone, as a file dragged from the desktop; its reason."""
    driver.execute_script(
        """
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = 96;
        canvas.getContext('2d').fillStyle = '#888';
        canvas.getContext('2d').fillRect(0, 0, 96, 96);
        canvas.toBlob((blob) => {
          const data = new DataTransfer();
          data.items.add(new File([blob], 'dropped.png', {type: 'image/png'}));
          const zone = document.getElementById('upload');
          zone.dispatchEvent(new DragEvent('dragenter', {dataTransfer: data, bubbles: true, cancelable: true}));
          zone.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }, 'image/png');
        """
    )
    name = "dropped.png"
    wait_until(driver, f"{card(name)} && {card(name)}.dataset.status === 'done'", "the verdict of the drop")
    return str(driver.execute_script(f"return {card(name)}.querySelector('.reason').textContent"))


def percent(text: str) -> float:
    return float(text.replace("%", "").strip())


def check_verdict(seen: dict[str, Any]) -> None:
    assert seen["label"] in ("Real", "Fake"), seen
    assert percent(seen["real"]) + percent(seen["fake"]) == pytest.approx(100, abs=0.2)


@pytest.mark.slow
def test_an_image_and_a_video_uploaded_in_the_browser_show_verdicts_overlay_and_timeline(
    browser: Any, samples: Path, random_pack: Path, tmp_path: Path
) -> None:
    env = {
        "DEEPSCAN_MODELS_DIR": str(random_pack),
        "DEEPSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
        "DEEPSCAN_EXPLAIN_SAMPLES": "16",
    }
    files = [samples / "face.jpg", samples / "talking_face.mp4", samples / "notes.txt"]
    with serve(env, tmp_path) as base:
        read = upload_and_read(browser, base, files, ARTIFACTS / "upload_page.png")
        dropped = drop_a_drawing(browser)
        results = get_json(f"{base}/api/v1/results")["items"]

    image, video, notes = read["face.jpg"], read["talking_face.mp4"], read["notes.txt"]
    check_verdict(image)
    assert image["media"] == "image" and image["timeline"] is None
    assert image["explanation"]["loaded"] == "true" and image["explanation"]["width"] > 400
    assert "red regions push towards fake" in image["caption"]
    check_verdict(video)
    assert video["media"] == "video" and video["timeline"]["loaded"] == "true"
    assert video["audio"].startswith("audio: ")
    assert video["explanation"]["loaded"] == "true" and "at second" in video["caption"]
    assert notes["label"] is None and "unsupported" in notes["reason"]
    assert "no_face" in dropped  # a grey square dropped on the page: analysed, no face in it
    names = sorted([p.name for p in files] + ["dropped.png"])
    assert sorted(r["uri"].rsplit("/", 1)[1] for r in results) == names


@pytest.mark.slow
def test_the_bundled_pack_in_the_browser(browser: Any, samples: Path, tmp_path: Path) -> None:
    """What a newcomer sees: the shipped pack, the default LIME sample count. Slow (minutes on a CPU)."""
    env = {
        "DEEPSCAN_MODELS_DIR": str(BUNDLED_PACK),
        "DEEPSCAN_DATABASE_URL": f"sqlite:///{tmp_path / 'web.db'}",
    }
    files = [samples / "face.jpg", samples / "talking_face.mp4"]
    with serve(env, tmp_path) as base:
        read = upload_and_read(browser, base, files, ARTIFACTS / "upload_page_bundled.png")
    for name in ("face.jpg", "talking_face.mp4"):
        check_verdict(read[name])
        assert read[name]["explanation"]["loaded"] == "true", read[name]
    assert read["talking_face.mp4"]["timeline"]["loaded"] == "true"
    shutil.copy(tmp_path / "serve.log", ARTIFACTS / "serve_bundled.log")
