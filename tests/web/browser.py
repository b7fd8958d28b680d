#!/usr/bin/env python3
"""Drives feather's web view in a real browser (Debian's chromium, headless, through
chromedriver and Selenium) as a person would: one tour per call.

    browser.py TOUR JSON

JSON carries the login URL and what the tour needs (VM names, a command to trigger, where to
save screenshots). Exit 0 when the tour saw everything it expected; otherwise the first thing
that went wrong is printed, with the page's text, and the exit status is 1.
"""

import json
import os
import signal
import subprocess
import sys

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 20  # seconds: a VM starts in well under one; the live feed pushes every second
JOB = 180  # seconds for a long action (checkpoint, restore, the IPC probe) on a loaded machine


def browser(width=1280, height=900, profile=None):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    if profile:
        # What one tour leaves in the browser (cache, service workers) the next one finds.
        options.add_argument(f"--user-data-dir={profile}")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", f"--window-size={max(width, 500)},{height}"):
        options.add_argument(argument)
    if width < 500:
        # A headless window is at least 500px wide: a phone's screen is emulated instead.
        options.add_experimental_option("mobileEmulation", {
            "deviceMetrics": {"width": width, "height": height, "pixelRatio": 2}})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


class Tour:
    def __init__(self, args, width=1280, height=900):
        self.args = args
        self.driver = browser(width, height, args.get("profile"))
        self.wait = WebDriverWait(self.driver, WAIT)

    def close(self):
        self.driver.quit()

    def open(self, fragment=""):
        self.driver.get(self.args["url"])
        self.live()
        if fragment:
            self.driver.get(self.args["url"].split("/login")[0] + "/" + fragment)
            self.live()

    def live(self):
        self.wait.until(EC.text_to_be_present_in_element((By.ID, "contact"), "live"))

    def find(self, css):
        return self.wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))

    def click(self, css):
        # The page re-renders what the server's live updates change (a VM's row as its status
        # moves): the element found may be replaced before the click reaches it, which then
        # raises without clicking. Found and clicked again until one click lands.
        def clicked(driver):
            try:
                element = EC.element_to_be_clickable((By.CSS_SELECTOR, css))(driver)
                if not element:
                    return False
                element.click()
                return True
            except StaleElementReferenceException:
                return False
        self.wait.until(clicked)

    def text_appears(self, css, text, seconds=WAIT):
        try:
            WebDriverWait(self.driver, seconds).until(
                EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))
        except TimeoutException:
            raise AssertionError(f"{text!r} never appeared in {css} within {seconds} s")

    def gone(self, css):
        self.wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, css))

    def confirm(self):
        self.find("dialog#confirm[open]")
        self.click("#confirm-ok")

    def notice(self, text):
        self.text_appears("#notice", text)

    def screenshot(self, name):
        folder = self.args.get("screenshots")
        if folder:
            os.makedirs(folder, exist_ok=True)
            self.driver.save_screenshot(os.path.join(folder, name + ".png"))

    def row(self, vm):
        return f'tr[data-vm="{vm}"]'


def vms(tour):
    """Create a VM from the form (with a read-only path), start it, see it run, stop it, remove
    it (with the confirmation), and see bad values refused on the page."""
    tour.open()
    tour.click("#new-vm")
    form = tour.find("#create-form")
    form.find_element(By.NAME, "name").send_keys("bad1")
    form.find_element(By.NAME, "memory").send_keys("lots")
    tour.click("#create-submit")
    tour.notice("lots")
    form.find_element(By.NAME, "memory").clear()
    form.find_element(By.NAME, "name").clear()
    form.find_element(By.NAME, "name").send_keys("b1")
    form.find_element(By.NAME, "net").send_keys("none")
    form.find_element(By.NAME, "services").send_keys("no-such-unit-here")
    tour.click("#create-submit")
    tour.notice("no-such-unit-here")
    form.find_element(By.NAME, "services").clear()
    form.find_element(By.NAME, "services").send_keys("nginx")
    form.find_element(By.NAME, "ro").send_keys("usr/relative")
    tour.click("#create-submit")
    tour.notice("usr/relative")
    form.find_element(By.NAME, "ro").clear()
    form.find_element(By.NAME, "ro").send_keys("/usr")
    tour.click("#create-submit")
    tour.text_appears(tour.row("b1"), "created")
    tour.click(tour.row("b1") + ' button[data-action="start"]')
    tour.text_appears(tour.row("b1"), "running")
    tour.screenshot("vms")
    tour.click(tour.row("b1") + " a")
    tour.text_appears("#vm-processes", "feather-keeper")
    # Created with a service: it started with the VM.
    tour.text_appears('#vm-services tr[data-unit="nginx.service"]', "active")
    tour.screenshot("vm")
    tour.click('#vm-actions button[data-action="stop"]')
    tour.text_appears("#vm-status", "stopped")
    tour.click('#vm-actions button[data-action="remove"]')
    tour.confirm()
    tour.wait.until(lambda d: d.current_url.endswith("#/"))
    tour.gone(tour.row("b1"))


def phone(tour):
    """At a phone's width the VM table is one card per VM and nothing scrolls sideways."""
    tour.open()
    tour.find(tour.row(tour.args["vm"]))
    display = tour.driver.execute_script(
        "return getComputedStyle(document.querySelector('table.vms tr[data-vm]')).display")
    assert display == "block", f"rows are cards at phone width, not {display}"
    overflow = tour.driver.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px"
    tour.screenshot("phone")


def changes(tour):
    """A VM's changes as a tree, a hostile file name shown as text, a chosen change committed,
    and a set-user-ID one marked and committed after a confirmation that names it."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    tour.text_appears("#vm-changes", tour.args["keep"])
    tour.text_appears("#vm-changes", tour.args["hostile"])
    tour.text_appears("#vm-processes", "<script>")
    assert not tour.driver.find_elements(By.CSS_SELECTOR, "#vm-changes img, #vm-processes script"), \
        "a name the VM chose became markup"
    assert tour.driver.title == "feather", f"the page's title became {tour.driver.title!r}"
    tour.screenshot("changes")
    box = tour.find(f'#vm-changes input[data-path="{tour.args["keep"]}"]')
    box.click()
    tour.click("#commit-selected")
    tour.confirm()
    tour.notice("Committed 1")
    # A set-user-ID program the VM made carries a badge, and committing it asks with its name.
    tour.gone(f'#vm-changes input[data-path="{tour.args["keep"]}"]')
    privileged = f'#vm-changes input[data-path="{tour.args["privileged"]}"]'
    label = tour.find(privileged).find_element(By.XPATH, "..")
    assert label.find_element(By.CSS_SELECTOR, ".privileges").text == "set-user-ID", label.text
    tour.click(privileged)
    tour.click("#commit-selected")
    tour.text_appears("dialog#confirm", "run with privileges on the host, or let other users write them:")
    assert tour.args["privileged"] + " (set-user-ID)" in confirmed_lines(tour)
    tour.confirm()
    # The first commit's notice may still read "Committed 1": the change leaving the list is
    # what says this commit is done (the test then reads the base).
    tour.gone(privileged)
    tour.notice("Committed 1")


def confirmed_lines(tour):
    """The lines of the open confirmation, each stripped."""
    return [line.strip() for line in tour.find("#confirm-text").text.splitlines()]


def drop(tour):
    """Chosen changes of a stopped VM dropped, one that commit refuses (at a host mount its
    layer does not cover) among them: it can be picked, commit says it never commits it, and
    Drop selected drops it and the other chosen one after a confirmation naming them."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    refused = f'#vm-changes input[data-path="{tour.args["refused"]}"]'
    dropped = f'#vm-changes input[data-path="{tour.args["dropped"]}"]'
    tour.click(refused)
    tour.click("#commit-selected")
    tour.notice("Never committed: " + tour.args["refused"])
    tour.click(dropped)
    tour.click("#reset-selected")
    tour.text_appears("dialog#confirm", tour.args["refused"])
    # One path per line, so that a name the VM chose cannot read as a list of others.
    lines = confirmed_lines(tour)
    assert tour.args["refused"] in lines and tour.args["dropped"] in lines, lines
    tour.confirm()
    tour.notice("Dropped 2")
    tour.gone(refused)
    tour.gone(dropped)
    tour.find(f'#vm-changes input[data-path="{tour.args["keep"]}"]')


def shuttle(tour):
    """The rules in force, which rule decides a request, and a denied request arriving live."""
    tour.open("#/shuttle")
    tour.text_appears("#rules", tour.args["rule_at"])
    form = tour.find("#check-form")
    form.find_element(By.NAME, "kind").send_keys("invoke")
    form.find_element(By.NAME, "object").send_keys(tour.args["object"])
    form.find_element(By.NAME, "source").send_keys(tour.args["source"])
    form.find_element(By.NAME, "target").send_keys(tour.args["target"])
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    tour.text_appears("#check-result", tour.args["rule_at"])
    tour.text_appears("#check-result", "allow")
    subprocess.run(tour.args["trigger"], check=False, capture_output=True, timeout=60)
    tour.text_appears("#audit", "unlisted")
    tour.text_appears("#audit", "denied")
    tour.text_appears("#audit", "quietvm")
    held = tour.find("#audit .badge.held")
    plain = "rgba(233, 237, 243, 1)"  # .badge's own background
    assert held.value_of_css_property("background-color") != plain, "held has no badge style"
    tour.click("#audit-denied")
    tour.text_appears("#audit", "unlisted")
    tour.text_appears("#audit", "loudvm")
    assert "quietvm" not in tour.find("#audit").text, "a held line without refusals shown"
    tour.screenshot("shuttle")


def lost_contact(tour):
    """When the server goes away the page says so, and shows what it holds as stale."""
    tour.open()
    os.kill(tour.args["server_pid"], signal.SIGTERM)
    tour.text_appears("#contact", "lost contact")
    assert "stale" in tour.driver.find_element(By.TAG_NAME, "body").get_attribute("class")


def checkpoint(tour):
    """Checkpoint a running VM from its page and restore it, following each job's steps."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    tour.text_appears("#vm-status", "running")
    tour.click("#checkpoint-vm")
    tour.confirm()
    tour.text_appears("#vm-job", "checkpoint: done", JOB)
    tour.text_appears("#vm-status", "checkpointed")
    tour.click("#restore-vm")
    tour.text_appears("#vm-job", "restore: done", JOB)
    tour.text_appears("#vm-status", "running")
    tour.text_appears("#vm-processes", "sleep 1000")
    tour.screenshot("checkpoint")
    tour.click("#restore-vm")
    tour.text_appears("#vm-job", "restore: failed", JOB)


def services(tour):
    """Start host services in a VM from its page, follow a unit's log live, stop one."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    tour.text_appears("#vm-services", "No services")
    for unit in ("nginx", "talker"):
        form = tour.find("#service-start")
        form.find_element(By.NAME, "unit").send_keys(unit)
        form.find_element(By.CSS_SELECTOR, "button").click()
        tour.text_appears(f'#vm-services tr[data-unit="{unit}.service"]', "active")
    tour.click('tr[data-unit="talker.service"] button[data-action="logs"]')
    tour.text_appears("#service-log", "tick 3")
    tour.text_appears("#service-log", "tick 6")  # it follows: later lines arrive
    assert not tour.driver.find_elements(By.CSS_SELECTOR, "#service-log b"), \
        "a log line became markup"
    tour.screenshot("services")
    tour.click('tr[data-unit="nginx.service"] button[data-action="stop"]')
    tour.text_appears('#vm-services tr[data-unit="nginx.service"]', "inactive")


def ipc(tour):
    """The IPC matrix of a VM, probed from its page: every cell judged, none leaking."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    tour.click("#check-ipc")
    tour.text_appears("#vm-job", "check ipc: done", JOB)
    tour.find("#ipc-matrix table.matrix")
    tour.text_appears("#ipc-matrix", "every cell holds")
    assert not tour.driver.find_elements(By.CSS_SELECTOR, "#ipc-matrix td.leak"), "a leak"
    tour.screenshot("ipc")


def terminal(tour):
    """A shell in the VM from its page: what is typed runs inside, its exit is reported."""
    vm = tour.args["vm"]
    tour.open("#/vm/" + vm)
    tour.click("#open-terminal")
    keys = tour.find("#terminal .xterm-helper-textarea")
    tour.wait.until(lambda d: d.execute_script(
        "return document.querySelector('#terminal .xterm-rows').textContent.trim().length > 0"))
    keys.send_keys("echo inside-$(hostname)-$((6*7))\n")
    tour.text_appears("#terminal .xterm-rows", "inside-" + vm + "-42")
    tour.screenshot("terminal")
    keys.send_keys("exit 3\n")
    tour.text_appears("#terminal .xterm-rows", "exited with status 3")


def ask(tour):
    """A question of an `ask` rule answered from the page: it appears live (and in the header
    on every page), Allow lets the request go ahead."""
    tour.open("#/shuttle")
    asking = subprocess.Popen(tour.args["trigger"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tour.text_appears("#asks", tour.args["object"])
        tour.text_appears("#asks-badge", "1 question")
        tour.screenshot("ask")
        tour.click('#asks button[data-answer="allow"]')
        tour.text_appears("#asks", "None.")
        out, err = asking.communicate(timeout=60)
    finally:
        if asking.poll() is None:
            asking.kill()
            asking.wait()
    assert asking.returncode == 0, f"the allowed request failed ({asking.returncode}): {err!r}"


def other_port(tour):
    """The page lives on across a reload and in a new tab of the same address (the session's
    key is kept by the page's own origin); then the browser visits a server on another port
    of the same host, as the admin looks at a VM's published service."""
    tour.open()
    tour.driver.refresh()
    tour.live()
    tour.driver.switch_to.new_window("tab")
    tour.driver.get(tour.args["url"].split("/login")[0] + "/#/shuttle")
    tour.live()
    tour.driver.get(tour.args["other"])
    tour.text_appears("h1", "my app")


SQUATTER_PAGE = b"""<!doctype html><title>squatter</title><script src="/app.js"></script>
<script>navigator.serviceWorker.register("/sw.js").then(() => navigator.serviceWorker.ready)
  .then(() => { document.body.dataset.worker = "ready"; });</script>"""
# Kept for a year: the next page at this address that names /app.js would run this instead.
SQUATTER_SCRIPT = b"""document.title = "squatted";
window.addEventListener("DOMContentLoaded", () => {
  document.body.dataset.stolen = localStorage.getItem("feather-session") || "none"; });"""
# A worker that stays registered for the origin (it answers nothing itself).
SQUATTER_WORKER = b"""self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("fetch", () => {});"""


def squat(tour):
    """A server on the web view's address while `feather web` is not running: the browser
    visits it (a reloaded tab, a bookmark) and it leaves a service worker and a year-cached
    `/app.js` for that origin."""
    import http.server
    import threading

    class Squatter(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, kind = {"/app.js": (SQUATTER_SCRIPT, "text/javascript"),
                          "/sw.js": (SQUATTER_WORKER, "text/javascript")}.get(
                              self.path, (SQUATTER_PAGE, "text/html"))
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", "max-age=31536000, immutable")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", tour.args["port"]), Squatter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tour.driver.get(f"http://127.0.0.1:{tour.args['port']}/")
        tour.wait.until(lambda d: d.execute_script("return document.body.dataset.worker") == "ready")
        assert tour.driver.title == "squatted", "the squatter's script ran and is cached"
    finally:
        server.shutdown()
        server.server_close()


def after_squat(tour):
    """The next `feather web` at the squatted address: its login link opens the real page —
    its own script runs (the live feed answers it, with the session's key), the squatter's
    cached script does not, and no service worker is left."""
    tour.open()
    assert tour.driver.title == "feather", f"the page's own script, not {tour.driver.title!r}"
    assert tour.driver.execute_script("return document.body.dataset.stolen") is None
    workers = tour.driver.execute_async_script(
        "navigator.serviceWorker.getRegistrations().then((r) => arguments[0](r.length))")
    assert workers == 0, f"{workers} service worker(s) left for the page's origin"


TOURS = {"squat": squat, "after_squat": after_squat, "other_port": other_port, "vms": vms, "phone": phone, "changes": changes, "drop": drop, "shuttle": shuttle,
         "lost_contact": lost_contact, "checkpoint": checkpoint, "services": services,
         "ipc": ipc, "terminal": terminal, "ask": ask}


def main():
    name, args = sys.argv[1], json.loads(sys.argv[2])
    width, height = (390, 844) if name == "phone" else (1280, 900)
    tour = Tour(args, width, height)
    try:
        TOURS[name](tour)
    except Exception as e:  # the tour's report, with what the page showed
        body = tour.driver.find_element(By.TAG_NAME, "body").text if tour.driver else ""
        print(f"tour {name} failed: {type(e).__name__}: {e}\n--- page ---\n{body}")
        sys.exit(1)
    finally:
        tour.close()


if __name__ == "__main__":
    main()
