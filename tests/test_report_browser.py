"""The two demo HTML reports in a real browser: Debian's chromium, driven by Playwright (never a browser that
Playwright downloads). What a reader sees with and without JavaScript, that the page fetches nothing from the
network, fits a phone, meets WCAG AA contrast, prints, and names its pictures."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_SCHEMES = {"file", "data", "about", "blob"}
EXPECTED_VERDICT = {"badnets": "FAIL", "clean": "PASS"}


@pytest.fixture(scope="module")
def browser():
    """One headless chromium for the module. CI sets AUDITOR_REQUIRE_BROWSER so that a missing browser
    fails there instead of silently skipping every test here."""
    if not CHROMIUM.is_file():
        message = f"{CHROMIUM} is missing (apt-get install chromium)"
        if os.environ.get("AUDITOR_REQUIRE_BROWSER"):
            pytest.fail(message + " and AUDITOR_REQUIRE_BROWSER is set")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(params=["badnets", "clean"])
def report(request):
    run = request.getfixturevalue(f"{request.param}_e2e")
    assert run.data is not None and run.html_path.is_file(), run.stderr[-2000:]
    return request.param, run


class Page:
    """A fresh context on one report that records every request URL, blocks those that would leave the
    machine, and keeps the page's script errors."""

    def __init__(self, browser, url: str, js: bool = True, **context):
        self.context = browser.new_context(java_script_enabled=js, **context)
        self.requests, self.errors, self.console = [], [], []
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.console.append(m.text))
        if url:
            self.page.goto(url, wait_until="load")

    def _route(self, route):
        url = route.request.url
        self.requests.append(url)
        route.continue_() if urlsplit(url).scheme in LOCAL_SCHEMES else route.abort()

    @property
    def remote(self) -> list[str]:
        return [u for u in self.requests if urlsplit(u).scheme not in LOCAL_SCHEMES]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.context.close()


def _metrics_table(page):
    return page.locator("xpath=//*[contains(@class, 'auditor')]//h3[normalize-space()='Attack success and accuracy']"
                        "/following::table[1]")


@pytest.mark.slow
@pytest.mark.parametrize("js", [False, True], ids=["js-off", "js-on"])
def test_verdict_hashes_and_numbers_are_visible(browser, report, js):
    from playwright.sync_api import expect

    name, run = report
    data = run.data
    with Page(browser, run.html_path.as_uri(), js=js) as p:
        verdict = p.page.locator(".auditor .verdict")
        expect(verdict).to_be_visible()
        assert verdict.inner_text().startswith(EXPECTED_VERDICT[name]), verdict.inner_text()[:200]

        hashes = [data["model"]["sha256"]] + [o["sha256"] for o in (data.get("provenance") or {}).get("outputs") or []]
        if name == "badnets":  # the defense wrote the repaired model: its hash is evidence too
            assert len(hashes) > 1 and data["defense"]["applied"]
        for sha in hashes:
            assert sha and len(sha) == 64
            expect(p.page.locator("#provenance .hash").filter(has_text=sha).first).to_be_visible()

        before, after = data["metrics"]["before"], data["metrics"].get("after") or {}
        numbers = [before["c_acc"]] + ([before["asr"], after["asr"]] if name == "badnets" else [])
        table = _metrics_table(p.page)
        for value in numbers:
            expect(table.get_by_text(f"{value:.2%}", exact=True).first).to_be_visible()


@pytest.mark.slow
def test_nothing_leaves_the_page_and_no_script_fails(browser, report):
    _, run = report
    with Page(browser, run.html_path.as_uri()) as p:
        p.page.wait_for_load_state("networkidle")
        assert p.requests, "the route saw no request at all: the guard is not watching"
        assert not p.remote, f"the report fetches from the network: {p.remote}"
        assert not p.errors, f"script errors on the page: {p.errors}"
        assert not p.console, f"console errors on the page: {p.console}"


def test_request_guard_sees_an_external_font(browser):
    """The guard above must be able to fail: a page that pulls a web font is caught (and the request blocked)."""
    with Page(browser, "") as p:
        p.page.set_content('<link rel="stylesheet" href="https://fonts.example.invalid/css?family=X"><p>x</p>')
        assert p.remote == ["https://fonts.example.invalid/css?family=X"]


@pytest.mark.slow
def test_phone_width_does_not_scroll_sideways(browser, report):
    _, run = report
    width = 400
    with Page(browser, run.html_path.as_uri(), js=False, viewport={"width": width, "height": 800}) as p:
        scroll_width = p.page.evaluate("document.documentElement.scrollWidth")
        # the outermost elements that stick out (outside a .scroll wrapper), each with the heading above it
        wide = p.page.evaluate(f"""() => [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > {width + 1} && !e.closest('.scroll')
                         && !(e.parentElement.getBoundingClientRect().right > {width + 1}))
            .map(e => {{
              const h = [...document.querySelectorAll('h1, h2, h3')].filter(h => h.compareDocumentPosition(e) & 4).pop();
              return `${{e.tagName.toLowerCase()}}.${{e.className}} ${{Math.round(e.getBoundingClientRect().right)}}px`
                     + ` (under "${{h ? h.textContent.trim() : ''}}")`; }})""")
        assert scroll_width <= width + 1, f"page is {scroll_width}px wide at {width}px; wide elements: {wide}"
        box = p.page.locator(".auditor .verdict").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width + 1, box
        overflow = p.page.locator(".auditor .verdict").evaluate("e => e.scrollWidth - e.clientWidth")
        assert overflow <= 1, f"the verdict's text overflows its banner by {overflow}px"


# Every rendered element inside .auditor with text of its own: its colour blended over the nearest opaque
# background (alpha compositing up the ancestors, white canvas last), against WCAG AA. SVG text is coloured by
# `fill`. Background images and `opacity` are not modelled: the report uses neither behind text.
CONTRAST_JS = """() => {
  const rgba = s => {
    const m = /rgba?\\(([^)]*)\\)/.exec(s || '');
    if (!m) return [0, 0, 0, 0];
    const v = m[1].split(/[\\s,\\/]+/).filter(Boolean).map(parseFloat);
    return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1];
  };
  const over = (top, below) => [0, 1, 2].map(i => top[i] * top[3] + below[i] * (1 - top[3])).concat([1]);
  const lum = c => {
    const l = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
    return 0.2126 * l[0] + 0.7152 * l[1] + 0.0722 * l[2];
  };
  const background = el => {
    const layers = [];
    for (let e = el; e && e.nodeType === 1; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    return layers.reverse().reduce((below, top) => over(top, below), [255, 255, 255, 1]);
  };
  const name = el => {
    const parts = [];
    for (let e = el; e && !(e.classList && e.classList.contains('auditor')); e = e.parentElement) {
      const cls = typeof e.className === 'string' && e.className.trim() ? '.' + e.className.trim().split(/\\s+/).join('.') : '';
      parts.unshift(e.tagName.toLowerCase() + cls);
    }
    return '.auditor > ' + parts.join(' > ');
  };
  const out = [];
  for (const el of document.querySelectorAll('.auditor *')) {
    const text = [...el.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!text || !el.getClientRects().length) continue;
    const st = getComputedStyle(el);
    if (st.visibility !== 'visible' || st.display === 'none') continue;
    const svg = el instanceof SVGElement;
    const bg = background(svg ? el.ownerSVGElement.parentElement : el);
    const fg = over(rgba(svg ? st.fill : st.color), bg);
    const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight, 10) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (ratio < need) out.push({element: name(el), text: text.slice(0, 60), color: svg ? st.fill : st.color,
                                background: 'rgb(' + bg.slice(0, 3).map(Math.round).join(', ') + ')',
                                ratio: Math.round(ratio * 100) / 100, need, font: st.fontSize + ' ' + st.fontWeight});
  }
  return out;
}"""


@pytest.mark.slow
def test_text_contrast_meets_wcag_aa(browser, report):
    _, run = report
    with Page(browser, run.html_path.as_uri()) as p:
        offenders = p.page.evaluate(CONTRAST_JS)
    assert not offenders, "text under WCAG AA contrast:\n" + "\n".join(map(str, offenders))


def test_contrast_script_catches_grey_on_white(browser):
    """#999 on white is 2.8:1 and white on the fail banner's red passes: the script tells them apart."""
    with Page(browser, "") as p:
        p.page.set_content('<div class="auditor"><p style="color:#999">faint</p><div style="background:#c62828">'
                           '<span style="color:#fff">banner</span></div><p style="color:rgba(0,0,0,.3)">ghost</p></div>')
        offenders = p.page.evaluate(CONTRAST_JS)
    assert [o["text"] for o in offenders] == ["faint", "ghost"], offenders


@pytest.mark.slow
def test_print_hides_the_filters_and_keeps_the_verdict(browser, report):
    _, run = report
    with Page(browser, run.html_path.as_uri()) as p:
        p.page.emulate_media(media="print")
        assert p.page.pdf().startswith(b"%PDF")
        displays = p.page.locator(".filters, .collapse").evaluate_all("els => els.map(e => getComputedStyle(e).display)")
        assert displays and set(displays) == {"none"}, displays
        assert p.page.locator(".auditor .verdict").evaluate("e => getComputedStyle(e).display") != "none"
        assert p.page.locator(".auditor .verdict").is_visible()


@pytest.mark.slow
def test_language_and_picture_alt_texts(browser, report):
    name, run = report
    with Page(browser, run.html_path.as_uri(), js=False) as p:
        assert p.page.evaluate("document.documentElement.lang") == "en"
        alts = p.page.locator(".auditor img").evaluate_all("els => els.map(e => e.getAttribute('alt'))")
        unnamed = p.page.locator(".auditor svg").evaluate_all(  # an inline chart names itself by <title> or aria-label
            "els => els.filter(e => !(e.getAttribute('aria-label') || e.querySelector('title')?.textContent || '').trim()).length")
    if name == "badnets":  # the known trigger's pictures, at least
        assert alts, "the backdoored model's report shows no trigger pictures"
    generic = {"image", "img", "picture", "figure", "chart", "png"}
    for alt in alts:
        assert alt and alt.strip() and alt.strip().lower() not in generic and not alt.startswith("data:"), alt
    assert unnamed == 0, "an inline chart without a title or aria-label"
