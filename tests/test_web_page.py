"""The web page at ``/`` in a real (headless) Chromium: chat, the live canvas, errors.

Needs Debian's ``/usr/bin/chromium`` and the ``playwright`` package (its Python API only: no browser
is downloaded); skipped when either is missing. The page is driven as a user would - settings typed
into the inputs, a message typed, Send pressed - against ``dlm serve``'s app on a loopback port.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("the playwright package is not installed", allow_module_level=True)

import httpx  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from serving import running_server  # noqa: E402

import dlm  # noqa: E402

MODEL = "tiny-mdm-instruct"
NAME = "tiny-chat"
MAX_TOKENS, STEPS, SEED = 24, 8, 0
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WAIT_MS = 30_000  # bound on every wait in the page

# The canvas colours of index.html's CSS
MASKED_GREY = (0xD5, 0xD8, 0xDE)      # .s0
COMMITTED_GREEN = (0x4C, 0xAF, 0x50)  # .s1
KEPT_GREEN = (0xE8, 0xF3, 0xE8)       # .s2


@pytest.fixture(scope="module")
def server():
    model = dlm.load(MODEL)
    assert model.tokenizer is not None and model.tokenizer.chat_template, f"{MODEL} should have a chat template"
    with running_server(model, NAME) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS, timeout=WAIT_MS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    """A fresh context (no cookies, no storage) on the page; fails the test on any script error or any
    request that leaves the server (the page must be self-contained)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    script_errors, foreign = [], []
    pg.on("pageerror", lambda exc: script_errors.append(str(exc)))
    pg.on("request", lambda req: None if req.url.startswith(server) else foreign.append(req.url))
    pg.goto(server + "/")
    pg.wait_for_function("name => document.getElementById('model').textContent === name", arg=NAME)
    yield pg
    context.close()
    assert not script_errors, script_errors
    assert not foreign, f"the page fetched from outside the server: {foreign}"


def settings(page, max_tokens: str, steps: str, seed: str = str(SEED)) -> None:
    page.fill("#max_tokens", max_tokens)
    page.fill("#steps", steps)
    page.fill("#seed", seed)


def ask(page, text: str) -> str:
    """Type ``text``, press Send, wait (bounded) for the answer; the page's end state ("1" or "error")."""
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_selector("body[data-done]", state="attached")
    return page.get_attribute("body", "data-done")


def reference(server: str, messages: list[dict]) -> str:
    """The non-streamed chat completion for the request the page sends."""
    body = {"messages": messages, "max_tokens": MAX_TOKENS, "seed": SEED, "dlm": {"steps": STEPS}}
    r = httpx.post(server + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def pixels_near(png, colour, tol: int = 4) -> int:
    img = Image.open(png).convert("RGB")
    return sum(n for n, px in img.getcolors(img.width * img.height)
               if all(abs(a - b) <= tol for a, b in zip(px, colour)))


# Records the class names of the spans each redraw of #canvas puts in the page (what was shown, step by step)
WATCH_CANVAS = """() => {
  window.drawn = [];
  new MutationObserver(records => {
    for (const r of records) if (r.addedNodes.length) window.drawn.push(Array.from(r.addedNodes, n => n.className));
  }).observe(document.getElementById("canvas"), {childList: true});
}"""


def test_chat_and_canvas(page, server, tmp_path):
    settings(page, str(MAX_TOKENS), str(STEPS))
    page.evaluate(WATCH_CANVAS)
    assert ask(page, "Hello there") == "1", page.text_content("#log")

    # the answer in the chat log is the non-streamed answer to the same request
    answers = page.locator("#log .msg.assistant")
    assert answers.count() == 1
    assert page.locator("#log .msg.error").count() == 0
    first = answers.nth(0).text_content()
    assert first == reference(server, [{"role": "user", "content": "Hello there"}])

    # the canvas went through several steps, masked positions giving way to committed tokens
    steps = page.evaluate("window.dlmSteps")
    numbers = [s["step"] for s in steps]
    assert len(set(numbers)) >= 3 and numbers == sorted(set(numbers)), numbers
    assert all(len(s["states"]) == len(s["pieces"]) == MAX_TOKENS for s in steps)
    for s in steps:
        assert all((p is None) == (st == 0) for p, st in zip(s["pieces"], s["states"])), s
    mid = [i for i, s in enumerate(steps) if 0 in s["states"] and {1, 2} & set(s["states"])]
    assert mid, [s["states"] for s in steps]
    assert 0 not in steps[-1]["states"], steps[-1]
    drawn = page.evaluate("window.drawn")  # every step was drawn, with its states as the span classes
    assert drawn == [[f"tok s{st}" for st in s["states"]] for s in steps]
    assert page.get_attribute("#canvas", "data-step") == str(numbers[-1])
    assert page.locator("#canvas .tok").count() == MAX_TOKENS
    assert page.locator("#canvas .tok.s0").count() == 0
    assert "finished" in page.text_content("#status")

    # what the final canvas looks like: committed / kept greens, no masked grey (the legend is not in #canvas)
    final_png = tmp_path / "canvas-final.png"
    page.locator("#canvas").screenshot(path=str(final_png), animations="disabled")
    assert 1 in steps[-1]["states"] and 2 in steps[-1]["states"]  # the last step commits some, keeps others
    assert pixels_near(final_png, COMMITTED_GREEN) > 20
    assert pixels_near(final_png, KEPT_GREEN) > 20
    assert pixels_near(final_png, MASKED_GREY) == 0

    # a mid-run canvas (a recorded step with masked and committed positions, redrawn): grey and green
    page.evaluate("i => drawCanvas(window.dlmSteps[i])", mid[0])
    assert page.locator("#canvas .tok.s0").count() == steps[mid[0]]["states"].count(0)
    mid_png = tmp_path / "canvas-mid.png"
    page.locator("#canvas").screenshot(path=str(mid_png), animations="disabled")
    assert pixels_near(mid_png, MASKED_GREY) > 20
    assert pixels_near(mid_png, COMMITTED_GREEN) + pixels_near(mid_png, KEPT_GREEN) > 20

    # a second turn sends the history: the same as the non-streamed answer to the whole conversation
    assert ask(page, "And then?") == "1", page.text_content("#log")
    assert answers.count() == 2
    conversation = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": first},
                    {"role": "user", "content": "And then?"}]
    assert answers.nth(1).text_content() == reference(server, conversation)


@pytest.mark.parametrize("max_tokens, steps, expected", [("0", str(STEPS), "max_tokens"),
                                                          ("-5", str(STEPS), "max_tokens"),
                                                          (str(MAX_TOKENS), "0", "steps")])
def test_invalid_setting_shows_an_error(page, server, max_tokens, steps, expected):
    settings(page, max_tokens, steps)
    assert ask(page, "Hello there") == "error"
    errors = page.locator("#log .msg.error")
    assert errors.count() == 1
    assert expected in errors.nth(0).text_content()
    assert page.is_enabled("#send")

    # the page recovers, and the failed message is not part of the history it sends next
    settings(page, str(MAX_TOKENS), str(STEPS))
    assert ask(page, "Hi") == "1", page.text_content("#log")
    answer = page.locator("#log .msg.assistant").last.text_content()
    assert answer == reference(server, [{"role": "user", "content": "Hi"}])
