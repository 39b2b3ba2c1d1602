"""The batches page (/ui) in a real headless Chromium against the real stack: a tenant signs in with its key and
sees its batches update live from the progress stream; another tenant's key shows none of them; no key in a URL."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.batch_helpers import chat_line, jsonl, submit, wait_status
from tests.browser import Chromium, chromium_path

SKIP_ENV = "PAGEBATCH_TEST_SKIP_BROWSER"
SHOTS = Path(os.environ.get("PAGEBATCH_TEST_SCREENSHOTS", "")) if os.environ.get("PAGEBATCH_TEST_SCREENSHOTS") else None


@pytest.fixture
def browser():
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: browser test skipped on request")
    executable = chromium_path()
    if executable is None:
        pytest.fail(f"no chromium on the PATH (apt-get install -y chromium; .ci/run installs it); set {SKIP_ENV}=1 "
                    "to skip this test on purpose", pytrace=False)
    chromium = Chromium(executable)
    yield chromium
    chromium.close()


def card(tab, batch_id: str, expression: str):
    return tab.js(f"(() => {{ const c = document.getElementById('b-{batch_id}'); return c && ({expression}); }})()")


def test_a_tenant_watches_its_batches_live_and_sees_no_one_else_s(stack, browser, tmp_path):
    mine, theirs = stack.client("n"), stack.client("p")
    model = stack.model
    lines = [chat_line(f"doc-{i}", model, f"note {i}", max_tokens=4) for i in range(30)]
    finished = submit(mine, lines + [chat_line("ghost", "no-such-model"), "{broken"])
    other = submit(theirs, [chat_line("theirs-1", model, max_tokens=2)])
    finished = wait_status(mine, finished.id, logs=stack.logs)
    wait_status(theirs, other.id, logs=stack.logs)
    page = f"http://127.0.0.1:{stack.api_port}/ui"

    tab = browser.new_tab(page)
    tab.js("window.loadedOnce = true")  # a reload would lose it: the page must update in place
    tab.type_into("#api-key", "key-n")
    tab.click("#signin button[type=submit]")
    tab.wait_for(f"document.getElementById('b-{finished.id}')?.dataset.status === 'completed'", what="the ended batch")
    tab.wait_for(f"document.querySelectorAll('#b-{finished.id} .downloads button').length === 3", what="downloads")
    tab.wait_for(f"!!document.querySelector('#b-{finished.id} .errors li')", what="its first errors")
    assert card(tab, finished.id, "c.querySelector('.bar').getAttribute('aria-valuenow')") == "100"
    assert "30 of 32 lines" not in card(tab, finished.id, "c.querySelector('.counts').textContent")
    assert card(tab, finished.id, "c.querySelector('.counts').textContent") == "32 of 32 lines (2 failed)"
    errors = card(tab, finished.id, "[...c.querySelectorAll('.errors li')].map(li => li.textContent)")
    assert errors[0].startswith("ghost: model_not_found") and ": invalid_json: line 32 " in errors[1], errors
    assert card(tab, finished.id, "[...c.querySelectorAll('.downloads button')].map(b => b.dataset.kind)") == [
        "output", "errors", "usage"]
    assert "out" in card(tab, finished.id, "c.querySelector('.usage').textContent")

    # a long batch started now shows up, runs and ends on the open page, from its progress stream
    running = submit(mine, [chat_line(f"long-{i}", model, f"story {i}", max_tokens=128, ignore_eos=True)
                            for i in range(240)])
    tab.click("#refresh")
    seen, shot = [], None
    while True:
        state = card(tab, running.id, "[c.dataset.status, +c.querySelector('.bar').getAttribute('aria-valuenow'),"
                                      " c.querySelector('.eta').textContent,"
                                      " c.querySelector('.spark polyline').getAttribute('points').split(' ').length]")
        if state:
            seen.append(state)
            if state[0] == "in_progress" and 10 <= state[1] <= 90 and state[3] >= 3 and shot is None:
                shot = tab.screenshot(tmp_path / "batches-page-running.png")
            if state[0] == "completed":
                break
        assert len(seen) < 900, seen[-5:]
        tab.js("new Promise(r => setTimeout(r, 200))")
    assert tab.js("window.loadedOnce") is True
    progress = [s[1] for s in seen if s[0] == "in_progress"]
    assert any(0 < p < 100 for p in progress) and progress == sorted(progress), progress
    assert any(s[2].startswith("ETA ") for s in seen), seen  # an ETA while it ran
    assert any(s[3] >= 3 for s in seen), seen  # the throughput line drew the stream's tokens/s over time
    assert seen[-1][1] == 100
    final = tab.screenshot(tmp_path / "batches-page.png")
    assert shot is not None and final.stat().st_size > 10_000
    if SHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for path in (shot, final):
            (SHOTS / path.name).write_bytes(path.read_bytes())

    # the key was never in a URL, nor kept beyond this tab's session
    urls = tab.request_urls()
    assert any("/v1/batches" in u for u in urls) and not any("key-n" in u for u in urls), urls
    assert "key-n" not in tab.js("location.href") and tab.js("localStorage.length") == 0

    # another tenant, in a fresh browser profile: its own batch only
    them = browser.new_tab(page, fresh_profile=True)
    them.type_into("#api-key", "key-p")
    them.click("#signin button[type=submit]")
    them.wait_for(f"document.getElementById('b-{other.id}')?.dataset.status === 'completed'", what="their batch")
    shown = them.js("[...document.querySelectorAll('article.batch')].map(a => a.dataset.batchId)")
    assert other.id in shown and finished.id not in shown and running.id not in shown
    html = them.js("document.documentElement.outerHTML")
    assert finished.id not in html and running.id not in html

    # a wrong key is refused on the page
    them.click("#signout")
    them.type_into("#api-key", "key-nobody")
    them.click("#signin button[type=submit]")
    them.wait_for("document.querySelector('#signin-error').textContent.includes('refused')", what="the refusal")
