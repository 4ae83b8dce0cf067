"""Drives the dashboard in Debian's chromium with Playwright (run by tests/tests/dashboard.rs).

usage: dashboard.py pool <url> <screenshot dir>   (the Rust side answers WANT lines on stdin)
       dashboard.py token <url> <token> <screenshot dir>
       dashboard.py cancel <url> <screenshot dir>   (a HuggingFace pull the hub holds mid-file)
       dashboard.py preset <url> <screenshot dir>   (a node holding the demo model as `demo`)

Prints METRIC lines the Rust test reports; exits non-zero (with the reason) on any failure,
a browser console error included.
"""

import re
import sys
import time

from playwright.sync_api import expect, sync_playwright

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def say(*parts):
    print(*parts, flush=True)


def ask(what):
    """Asks the Rust side to do something to the pool; returns its answer line."""
    say("WANT", what)
    line = sys.stdin.readline().strip()
    if not line.startswith("DONE"):
        raise SystemExit(f"the test harness answered {line!r} to {what}")
    return line


class Console:
    """Collects console errors and uncaught page errors; `allowed` filters expected ones."""

    def __init__(self, page):
        self.errors = []
        self.allowed = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def check(self):
        bad = [e for e in self.errors if not any(a in e for a in self.allowed)]
        if bad:
            raise SystemExit(f"browser console errors: {bad}")


def open_browser(p):
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    return browser, page


def node_rows(page):
    return page.locator("#nodes tbody tr")


def page_metrics(page):
    """Bytes the page transferred (the document and every resource) and its first paint."""
    m = page.evaluate(
        """() => {
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource')
            .filter(r => !r.name.includes('/v1/') && !r.name.endsWith('/health'));
        const paint = performance.getEntriesByType('paint').find(p => p.name === 'first-contentful-paint')
            || performance.getEntriesByType('paint')[0];
        return {
            transfer: nav.transferSize + res.reduce((s, r) => s + r.transferSize, 0),
            decoded: nav.decodedBodySize + res.reduce((s, r) => s + r.decodedBodySize, 0),
            files: 1 + res.length,
            paint: paint ? paint.startTime : null,
        };
    }"""
    )
    say("METRIC page_transfer_bytes", m["transfer"])
    say("METRIC page_decoded_bytes", m["decoded"])
    say("METRIC page_files", m["files"])
    say("METRIC first_contentful_paint_ms", round(m["paint"], 1))
    if m["paint"] is None:
        raise SystemExit("no paint timing recorded")


def no_sideways_scroll(page):
    """Fails when the page is wider than the viewport (tables scroll in their own box)."""
    wide = page.evaluate(
        """() => document.documentElement.scrollWidth <= innerWidth + 1 ? null
        : [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > innerWidth + 1
                && !e.closest('.scroll'))
            .slice(0, 5).map(e => e.outerHTML.slice(0, 120))"""
    )
    if wide:
        raise SystemExit(f"the page scrolls sideways at phone width: {wide}")


def pool(url, shots):
    with sync_playwright() as p:
        browser, page = open_browser(p)
        console = Console(page)
        started = time.monotonic()
        page.goto(url + "/")
        # Three nodes within 3 s of opening the page.
        expect(node_rows(page)).to_have_count(3, timeout=3000)
        say("METRIC three_nodes_shown_ms", round((time.monotonic() - started) * 1000))
        page_metrics(page)
        for name in ["node-a", "node-b", "node-c"]:
            expect(page.locator(f'#nodes tr[data-node="{name}"]')).to_be_visible()
        # The memory meters and the device name are drawn from each node's status.
        expect(page.locator('#nodes tr[data-node="node-a"] meter')).to_have_count(1, timeout=3000)
        page.screenshot(path=f"{shots}/pool.png", full_page=True)

        # A fourth node joins; then one is killed.
        ask("join node-d")
        t = time.monotonic()
        expect(page.locator('#nodes tr[data-node="node-d"]')).to_be_visible(timeout=5000)
        say("METRIC join_shown_ms", round((time.monotonic() - t) * 1000))
        expect(node_rows(page)).to_have_count(4)
        ask("kill node-b")
        t = time.monotonic()
        expect(page.locator('#nodes tr[data-node="node-b"]')).to_have_count(0, timeout=5000)
        say("METRIC leave_shown_ms", round((time.monotonic() - t) * 1000))
        expect(node_rows(page)).to_have_count(3)

        # Keyboard: the views are links in the nav, reachable with Tab and Enter.
        page.locator('nav a[href="#Models"]').focus()
        page.keyboard.press("Enter")
        expect(page.locator("#models-h")).to_be_visible()
        # The demo model is held by node-a only; pull it here (node-c) from the pool.
        row = page.locator('#models tr[data-model="demo"]')
        expect(row).to_contain_text("node-a", timeout=5000)
        page.get_by_label("Pull a model").fill("demo")
        page.get_by_role("button", name="Pull", exact=True).click()
        job = page.locator('li.job[data-job="model_pull"]')
        expect(job).to_be_visible(timeout=5000)
        expect(job.locator("progress")).to_be_visible(timeout=60000)
        expect(job.locator(".state")).to_have_text("done", timeout=120000)
        text = job.inner_text()
        say("METRIC pull_job_text", " ".join(text.split()))
        if "from node-a" not in text or "253" not in text:
            raise SystemExit(f"the pull shows no progress from the peer: {text!r}")
        expect(row).to_contain_text("node-a, node-c", timeout=5000)
        # Now held here too: its headers' architecture and quantization show.
        expect(row).to_contain_text("gemma3")
        expect(row).to_contain_text("Q4_K_M")
        page.screenshot(path=f"{shots}/models.png", full_page=True)

        # Chat: streamed tokens, the serving node, tokens/s and TTFT.
        page.locator('nav a[href="#Chat"]').click()
        page.get_by_label("Model", exact=True).select_option("demo")
        page.get_by_label("System prompt").fill("You answer briefly.")
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Max tokens").fill("24")
        page.get_by_label("Message").fill("Name three colours.")
        page.evaluate(
            """() => {
            window.__updates = 0;
            new MutationObserver(() => window.__updates++).observe(
                document.querySelector('.messages'), {subtree: true, characterData: true, childList: true});
        }"""
        )
        page.get_by_role("button", name="Send").click()
        served = page.locator(".msg.assistant .served-by")
        expect(served).to_be_visible(timeout=120000)
        node = served.inner_text()
        updates = page.evaluate("window.__updates")
        reply = page.locator(".msg.assistant .text").inner_text()
        stats = page.locator(".msg.assistant .served").inner_text()
        say("METRIC chat_served_by", node)
        say("METRIC chat_stats", stats)
        say("METRIC chat_dom_updates", updates)
        if node not in ("node-a", "node-c"):
            raise SystemExit(f"the chat names {node!r} as the serving node")
        if not reply.strip() or updates < 4:
            raise SystemExit(f"the reply did not stream ({updates} updates): {reply!r}")
        if "TTFT" not in stats or "tok/s" not in stats or "TTFT –" in stats:
            raise SystemExit(f"no TTFT or tokens/s shown: {stats!r}")
        # Stop ends a long answer at once and says so.
        page.get_by_label("Max tokens").fill("2000")
        page.get_by_label("Message").fill("Tell me a long story.")
        page.get_by_role("button", name="Send").click()
        last = page.locator(".msg.assistant").last
        expect(last.locator(".text")).to_have_text(re.compile(r"\w\w"), timeout=60000)
        page.get_by_role("button", name="Stop").click()
        expect(last.locator(".served")).to_contain_text("stopped", timeout=5000)
        stopped = last.locator(".served").inner_text()
        say("METRIC chat_stopped", stopped)
        if "TTFT –" in stopped or " 0 tokens" in stopped:
            raise SystemExit(f"a stopped answer lost what it streamed: {stopped!r}")

        # Embeddings get their own panel because node-c holds an embedding model.
        page.get_by_label("Embedding model").select_option("minilm")
        page.get_by_label("Text to embed").fill("a home-lab pool")
        page.get_by_role("button", name="Embed").click()
        expect(page.locator(".embed-result")).to_contain_text("384 dimensions from node-c", timeout=60000)
        page.screenshot(path=f"{shots}/chat.png", full_page=True)

        # Activity: the chat request, with its model and node.
        page.locator('nav a[href="#Activity"]').click()
        req = page.locator("#requests tbody tr", has_text="/v1/chat/completions")
        expect(req.first).to_contain_text("demo", timeout=5000)
        expect(req.first).to_contain_text(node)
        expect(page.locator("figure.chart")).to_have_count(2)
        page.screenshot(path=f"{shots}/activity.png", full_page=True)

        # The pool after the chat: node-c has the demo model loaded (README's screenshot).
        page.locator('nav a[href="#Pool"]').click()
        expect(page.locator('#nodes tr[data-node="node-c"]')).to_contain_text("demo: 0/", timeout=5000)
        page.screenshot(path=f"{shots}/pool-loaded.png")

        # Unload from the Models view: the pool view shows it gone from node-c.
        page.locator('nav a[href="#Models"]').click()
        row.get_by_role("button", name="Unload").click()
        expect(page.locator('li.job[data-job="model_unload"] .state')).to_have_text("done", timeout=10000)
        expect(row.locator("td").nth(5)).to_have_text("–", timeout=5000)

        # Phone width and dark mode render without overflowing the page.
        page.set_viewport_size({"width": 390, "height": 844})
        page.emulate_media(color_scheme="dark")
        page.locator('nav a[href="#Pool"]').click()
        expect(node_rows(page)).to_have_count(3)
        page.screenshot(path=f"{shots}/pool-phone-dark.png", full_page=True)
        no_sideways_scroll(page)
        page.screenshot(path=f"{shots}/pool-phone-dark.png", full_page=True)
        console.check()
        browser.close()


def token(url, secret, shots):
    with sync_playwright() as p:
        browser, page = open_browser(p)
        console = Console(page)
        # The page loads without the token, tries the API, is refused: those 401s are expected.
        console.allowed.append("401 (Unauthorized)")
        page.goto(url + "/")
        field = page.get_by_role("textbox", name="API token")
        expect(field).to_be_visible(timeout=3000)
        status = page.evaluate("fetch('/v1/pool').then(r => r.status)")
        if status != 401:
            raise SystemExit(f"GET /v1/pool without the token answered {status}")
        page.screenshot(path=f"{shots}/login.png", full_page=True)
        field.fill("not-the-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("refused", timeout=3000)
        field.fill(secret)
        page.get_by_role("button", name="Sign in").click()
        expect(node_rows(page)).to_have_count(1, timeout=3000)
        # A node alone still shows its device and memory budget.
        expect(page.locator("#nodes tbody tr meter")).to_have_count(1, timeout=3000)
        stored = page.evaluate("sessionStorage.getItem('rbee-token')")
        if stored != secret:
            raise SystemExit("the token is not kept in sessionStorage")
        urls = page.evaluate("performance.getEntriesByType('resource').map(r => r.name)")
        if any(secret in u for u in urls):
            raise SystemExit(f"the token appeared in a URL: {urls}")
        console.check()
        browser.close()


def cancel(url, shots):
    with sync_playwright() as p:
        browser, page = open_browser(p)
        console = Console(page)
        page.goto(url + "/#Models")
        page.get_by_label("Pull a model").fill("org/slow")
        page.get_by_role("button", name="Pull", exact=True).click()
        job = page.locator('li.job[data-job="model_pull"]')
        # The hub double stops sending after 64 KiB: the page shows the download under way,
        # with the file's size.
        expect(job.locator("progress")).to_be_visible(timeout=30000)
        expect(job).to_contain_text("downloading")
        expect(job).to_contain_text("B of 404 KB")
        page.screenshot(path=f"{shots}/pull-progress.png", full_page=True)
        job.get_by_role("button", name="Cancel").click()
        expect(job.locator(".state")).to_have_text("failed", timeout=10000)
        expect(job.get_by_role("alert")).to_contain_text("cancel")
        say("METRIC cancelled_job_text", " ".join(job.inner_text().split()))
        console.check()
        browser.close()


def show(page, name):
    """POST /api/show from the page (the server's view of a preset), or its status on failure."""
    return page.evaluate(
        """async (name) => {
        const r = await fetch('/api/show', {method: 'POST', body: JSON.stringify({model: name}),
            headers: {'Content-Type': 'application/json'}});
        return r.ok ? await r.json() : r.status;
    }""",
        name,
    )


def tag_names(page):
    return page.evaluate("fetch('/api/tags').then(r => r.json()).then(t => t.models.map(m => m.name))")


def chat_once(page, model, message):
    """One chat from the Chat view (no system prompt of its own); its text and stats line."""
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Model", exact=True).select_option(model)
    page.get_by_label("System prompt").fill("")
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Max tokens").fill("40")
    page.get_by_label("Message").fill(message)
    page.get_by_role("button", name="Send").click()
    last = page.locator(".msg.assistant").last
    expect(last.locator(".served")).to_be_visible(timeout=120000)
    expect(last.locator(".prompt-tokens")).to_be_visible()
    prompt = int(last.locator(".prompt-tokens").inner_text().split()[0])
    return last.locator(".text").inner_text(), last.locator(".served").inner_text(), prompt


def preset(url, shots):
    system = "You are a pirate. Answer every question in one short sentence, starting with Arr."
    edited = "You are a polite librarian. Answer every question with a book title."
    with sync_playwright() as p:
        browser, page = open_browser(p)
        console = Console(page)
        page.on("dialog", lambda d: d.accept())  # the Delete confirmation
        page.goto(url + "/#Models")
        expect(page.locator('#models tr[data-model="demo"]')).to_be_visible(timeout=5000)

        # New preset, reached by keyboard: system prompt, temperature 0, a stop.
        page.get_by_role("button", name="New preset").focus()
        page.keyboard.press("Enter")
        expect(page.locator("#preset-h")).to_have_text("New preset")
        page.get_by_label("Preset name").fill("pirate")
        page.get_by_label("Base model").fill("demo")
        page.get_by_label("System prompt").fill(system)
        page.get_by_label("Temperature").fill("0")
        page.get_by_label("Stop sequences").fill(".")
        page.get_by_role("button", name="Add message").click()
        page.get_by_label("Text of message 1").fill("Where is the treasure?")
        page.get_by_role("button", name="Add message").click()
        expect(page.get_by_label("Role of message 2")).to_have_value("assistant")
        page.get_by_label("Text of message 2").fill("Arr, under the old oak")
        preview = page.locator("#preset-preview")
        expect(preview).to_contain_text("FROM demo")
        expect(preview).to_contain_text(f'SYSTEM "{system}"')
        expect(preview).to_contain_text("PARAMETER temperature 0")
        expect(preview).to_contain_text('PARAMETER stop "."')
        expect(preview).to_contain_text('MESSAGE assistant "Arr, under the old oak"')
        page.get_by_role("button", name="Save preset").click()
        expect(page.get_by_role("status").filter(has_text="Saved preset")).to_contain_text("pirate", timeout=10000)
        # Saved: now edited in place (Delete offered), listed as a preset over its base.
        expect(page.locator("#preset-h")).to_have_text("Edit preset pirate")
        row = page.locator('#models tr[data-model="pirate"]')
        expect(row).to_contain_text("preset", timeout=5000)
        expect(row).to_contain_text("of demo")
        expect(row).to_contain_text("gemma3")
        shown = show(page, "pirate")
        say("METRIC preset_modelfile", " | ".join(shown["modelfile"].splitlines()))
        if shown.get("system") != system or "temperature" not in shown["parameters"]:
            raise SystemExit(f"/api/show does not have the preset as saved: {shown}")
        if '"."' not in shown["parameters"] or shown["details"]["parent_model"] != "demo:latest":
            raise SystemExit(f"/api/show lost the stop or the base: {shown}")
        page.screenshot(path=f"{shots}/models-preset-editor.png", full_page=True)

        # Chat with the base and then with the preset, the same message: the preset's system
        # prompt and example messages add prompt tokens; its stop ends the answer at a ".".
        page.locator('nav a[href="#Chat"]').click()
        expect(page.get_by_label("Model", exact=True).locator('option[value="pirate"]')).to_have_count(1, timeout=5000)
        question = "What is the capital of France? Say it in a few sentences."
        base_text, base_stats, base_prompt = chat_once(page, "demo", question)
        text, stats, prompt = chat_once(page, "pirate", question)
        say("METRIC base_answer", repr(base_text), "|", base_stats)
        say("METRIC preset_answer", repr(text), "|", stats)
        say("METRIC prompt_tokens_base_preset", base_prompt, prompt)
        if prompt < base_prompt + 20:
            raise SystemExit(f"the preset's system prompt did not reach the model: {base_prompt} → {prompt} prompt tokens")
        if "." in text:
            raise SystemExit(f"the preset's stop sequence did not apply: {text!r}")
        if text == base_text:
            raise SystemExit(f"the preset answered as its base did: {text!r}")

        # Edit: prefilled from /api/show, the system prompt changed, saved and shown again.
        page.locator('nav a[href="#Models"]').click()
        page.get_by_role("button", name="Edit preset pirate").click()
        expect(page.get_by_label("System prompt")).to_have_value(system, timeout=5000)
        expect(page.get_by_label("Base model")).to_have_value("demo")
        expect(page.get_by_label("Temperature")).to_have_value("0")
        expect(page.get_by_label("Stop sequences")).to_have_value(".")
        expect(page.get_by_label("Text of message 2")).to_have_value("Arr, under the old oak")
        page.get_by_label("System prompt").fill(edited)
        page.get_by_role("button", name="Save preset").click()
        expect(page.get_by_role("status").filter(has_text="Saved preset")).to_be_visible(timeout=10000)
        if show(page, "pirate").get("system") != edited:
            raise SystemExit("the edited system prompt was not saved")
        page.get_by_role("button", name="Close editor").click()
        expect(page.locator(".preset-editor")).to_have_count(0)
        page.get_by_role("button", name="Edit preset pirate").click()
        expect(page.get_by_label("System prompt")).to_have_value(edited, timeout=5000)
        expect(page.get_by_label("Temperature")).to_have_value("0")

        # A bad save (an unknown base) shows the server's message and changes nothing.
        before = show(page, "pirate")
        tags = tag_names(page)
        page.get_by_label("Base model").fill("no-such-base")
        page.get_by_label("System prompt").fill("this must not be saved")
        seen = len(console.errors)
        page.get_by_role("button", name="Save preset").click()
        alert = page.locator("#preset-error")
        expect(alert).to_contain_text("no-such-base", timeout=5000)
        say("METRIC bad_save_error", alert.inner_text())
        # The browser logs the refused request itself; that one is expected.
        new = console.errors[seen:]
        if len(new) != 1 or "api/create" not in new[0] and "status of 4" not in new[0]:
            raise SystemExit(f"unexpected console output on the refused save: {new}")
        del console.errors[seen:]
        if show(page, "pirate") != before or tag_names(page) != tags:
            raise SystemExit("a refused save changed the preset")
        # Nor does a missing name reach the server.
        page.get_by_role("button", name="Close editor").click()
        page.get_by_role("button", name="New preset").click()
        page.get_by_role("button", name="Save preset").click()
        expect(page.locator("#preset-error")).to_contain_text("name")

        # Phone width, dark: the editor fits without sideways scrolling.
        page.set_viewport_size({"width": 390, "height": 844})
        page.emulate_media(color_scheme="dark")
        page.get_by_role("button", name="Edit preset pirate").click()
        expect(page.get_by_label("System prompt")).to_have_value(edited, timeout=5000)
        no_sideways_scroll(page)
        page.screenshot(path=f"{shots}/preset-editor-phone-dark.png", full_page=True)

        # Delete: gone from the table and from the node; the base stays.
        page.get_by_role("button", name="Delete preset").click()
        expect(page.locator('#models tr[data-model="pirate"]')).to_have_count(0, timeout=5000)
        expect(page.locator(".preset-editor")).to_have_count(0)
        if show(page, "pirate") != 404 or "pirate:latest" in tag_names(page):
            raise SystemExit("the deleted preset is still on the node")
        expect(page.locator('#models tr[data-model="demo"]')).to_be_visible()
        # The show of the deleted preset was a 404 the browser logs: expected.
        console.errors = [e for e in console.errors if "status of 404" not in e]
        console.check()
        browser.close()


if __name__ == "__main__":
    if sys.argv[1] == "pool":
        pool(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "preset":
        preset(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "cancel":
        cancel(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "token":
        token(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(__doc__)
