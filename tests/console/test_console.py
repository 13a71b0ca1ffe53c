"""The web console in a real headless Chromium against a real control plane with two workers.

Each test signs in with a token, acts only through what a user sees (links, buttons, the confirmation dialog),
and checks the outcome both on the page and through the REST API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from console_support import Plane, login, screenshot, text_of, wait_for
from cp_harness import ADMIN_TOKEN, lmaas, write_scale_onnx
from lmaas.control_plane.console import CONTENT_SECURITY_POLICY
from lmaas.protos.lmaas.control.v1 import resources_pb2 as pb
from selenium.webdriver.common.by import By

MARKUP = '<img src=x onerror="window.__pwned=1"><b>bold</b>'


def rest(plane: Plane, token: str = ADMIN_TOKEN) -> httpx.Client:
    return httpx.Client(base_url=plane.url + "/api/v1", headers={"authorization": f"Bearer {token}"}, timeout=30)


def push(plane: Plane, tmp: Path, name: str, content: bytes, *extra: str) -> int:
    """``lmaas model push`` (the CLI, as a user would); returns the new version number."""
    path = tmp / f"{name}-{len(list(tmp.glob('*.onnx')))}.onnx"
    path.write_bytes(content)
    return int(lmaas("model", "push", name, str(path), "-q", *extra, address=plane.grpc).stdout.strip())


def click(driver: Any, css: str) -> None:
    wait_for(driver, lambda d: [e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_enabled()],
             f"an enabled {css}")[0].click()


def confirm(driver: Any, *expected: str) -> str:
    """Checks the confirmation dialog names what will change, then confirms."""
    dialog = wait_for(driver, lambda d: d.find_element(By.ID, "confirm").is_displayed()
                      and d.find_element(By.ID, "confirm"), "the confirmation dialog")
    text = str(dialog.find_element(By.ID, "confirm-text").text)
    for part in expected:
        assert part in text, text
    dialog.find_element(By.ID, "confirm-ok").click()
    return text


def rollout_done(driver: Any, generation: int, phase: str = "succeeded") -> None:
    wait_for(driver, lambda d: text_of(d, "#rollout-generation") == str(generation)
             and text_of(d, "#rollout-phase") == phase and text_of(d, "#stream-state") == "Rollout finished.",
             f"generation {generation} {phase}")


def test_login_pages_and_security_headers(plane: Plane, browser: Any, tmp_path: Path) -> None:
    answer = httpx.get(plane.url + "/")
    assert answer.status_code == 200 and answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "<script>" not in answer.text and "<script type=\"module\" src=" in answer.text  # no inline script
    assert httpx.get(plane.url + "/console/app.js").headers["content-type"].startswith("text/javascript")
    assert httpx.get(plane.url + "/console/..%2Fapp.py").status_code == 404

    browser.get(plane.url + "/")
    wait_for(browser, lambda d: d.find_elements(By.ID, "token"), "the login form")
    assert browser.title == "Sign in · LMaaS console"
    browser.find_element(By.ID, "token").send_keys("lmaas_0123456789ab_" + "x" * 43)
    browser.find_element(By.ID, "login-submit").click()
    wait_for(browser, lambda d: text_of(d, "#login-error") == "That token was refused.", "a refused token")
    assert browser.execute_script("return sessionStorage.getItem('lmaas.token')") is None

    push(plane, tmp_path, "demo", b"demo v1")
    login(browser, plane.url)
    assert text_of(browser, "#whoami") == "token:00000000ad01 · admin"
    assert browser.execute_script("return sessionStorage.getItem('lmaas.token')") == ADMIN_TOKEN
    assert browser.execute_script("return document.cookie") == ""  # nothing a cross-site request could carry
    assert ADMIN_TOKEN not in browser.current_url
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "a.model-link"), "the model list")
    # the browser enforces the policy: an inline script (what an injection would add) does not run
    browser.execute_script("const s = document.createElement('script'); s.textContent = 'window.__inline = 1';"
                           "document.body.append(s);")
    assert browser.execute_script("return window.__inline") is None
    blocked = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert blocked, "the CSP violation was not reported"
    screenshot(browser, "models", "Models", readme=True)
    for nav, title, name in (("Workers", "Workers", "workers"), ("Tokens", "Tokens", "tokens"),
                             ("Audit", "Audit trail", "audit")):
        browser.find_element(By.LINK_TEXT, nav).click()
        screenshot(browser, name, title)
    browser.find_element(By.LINK_TEXT, "Workers").click()
    wait_for(browser, lambda d: "w1" in text_of(d, "#workers-table") and "w2" in text_of(d, "#workers-table"),
             "both workers listed")

    # a token created here is shown once, and works
    browser.find_element(By.LINK_TEXT, "Tokens").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "token-form"), "the token form")
    browser.find_element(By.ID, "token-description").send_keys("made in the console")
    browser.find_element(By.CSS_SELECTOR, "#token-form button").click()
    secret = wait_for(browser, lambda d: text_of(d, "#token-secret"), "the new token's secret")
    with rest(plane, secret) as reader:
        assert reader.get("/whoami").json()["role"] == "reader"
    browser.refresh()  # the secret is gone after a reload; the session (sessionStorage) is not
    wait_for(browser, lambda d: text_of(d, "main h1") == "Tokens", "the tokens page again")
    wait_for(browser, lambda d: "made in the console" in text_of(d, "#tokens-table"), "the listed token")
    assert secret not in text_of(browser, "main")
    token_id = secret.split("_")[1]
    click(browser, f'button[aria-label="Revoke {token_id}"]')
    confirm(browser, f"Revoke token {token_id} (reader: made in the console)")
    wait_for(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'button[aria-label="Revoke {token_id}"]'),
             "the token revoked")
    with rest(plane, secret) as revoked:
        assert revoked.get("/whoami").status_code == 401

    # the audit trail, filtered by what was done and by whom
    browser.find_element(By.LINK_TEXT, "Audit").click()
    wait_for(browser, lambda d: "RevokeToken" in text_of(d, "#audit-table"), "the revocation audited")
    browser.find_element(By.ID, "audit-what").send_keys("CreateToken")
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#audit-table tbody tr")]
    assert rows and all("CreateToken" in r and "token:00000000ad01" in r for r in rows), rows
    browser.find_element(By.ID, "audit-who").send_keys("token:nobody")
    wait_for(browser, lambda d: text_of(d, "#audit-table") == "No entry matches.", "no entry for another principal")

    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "token"), "signed out")
    assert browser.execute_script("return sessionStorage.getItem('lmaas.token')") is None


def test_a_version_pushed_with_the_cli_appears_without_a_reload(plane: Plane, browser: Any, tmp_path: Path) -> None:
    login(browser, plane.url)
    wait_for(browser, lambda d: "No models yet" in text_of(d, "#models-table"), "an empty model list")
    browser.execute_script("window.__sameDocument = 42")
    push(plane, tmp_path, "iris", b"iris v1")
    wait_for(browser, lambda d: "iris" in text_of(d, "#models-table") and "v1" in text_of(d, "#models-table"),
             "iris v1 in the list")
    browser.find_element(By.LINK_TEXT, "iris").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "version-1"), "v1 on the model page")
    push(plane, tmp_path, "iris", b"iris v2", "--parent", "1", "--description", "pruned 30%")
    wait_for(browser, lambda d: d.find_elements(By.ID, "version-2"), "v2 on the model page")
    assert browser.execute_script("return window.__sameDocument") == 42  # never reloaded
    row = browser.find_element(By.ID, "version-2").find_element(By.XPATH, "./ancestor::tr")
    assert "v1 → v2" in row.text and "pruned 30%" in row.text and "onnx" in row.text

    # a derived version shows its recipe and what optimize measured beside the parent
    onnx = write_scale_onnx(tmp_path / "real.onnx", 2.0)
    assert lmaas("model", "push", "iris", str(onnx), "-q", address=plane.grpc).stdout.strip() == "3"
    lmaas("model", "optimize", "iris", "3", "--recipe", "fp16", "--seconds", "0.2", address=plane.grpc, timeout=300)
    wait_for(browser, lambda d: d.find_elements(By.ID, "version-4"), "the derived v4")
    row = browser.find_element(By.ID, "version-4").find_element(By.XPATH, "./ancestor::tr")
    assert "v3 → v4" in row.text and "recipe fp16" in row.text, row.text
    assert "speed-up \u00d7" in row.text and "at batch 1" in row.text and "accuracy vs " in row.text, row.text
    screenshot(browser, "model-lineage", "Model iris")


def test_deploy_canary_and_rollback_from_the_console(plane: Plane, browser: Any, tmp_path: Path) -> None:
    for content in (b"scale v1", b"scale v2"):
        push(plane, tmp_path, "scale", content)
    login(browser, plane.url)
    browser.get(plane.url + "/#/models/scale")
    click(browser, 'button.deploy[data-version="1"]')
    confirm(browser, "scale: serve v1 as the stable version")
    rollout_done(browser, 1)
    for w in ("w1", "w2"):  # the rollout reached every worker
        assert text_of(browser, f"#state-{w}") == "acked"
    screenshot(browser, "rollout", "Rollout scale", readme=True)

    browser.get(plane.url + "/#/models/scale")
    click(browser, 'button.deploy[data-version="2"]')
    confirm(browser, "serve v2 as the stable version, replacing v1")
    rollout_done(browser, 2)

    browser.get(plane.url + "/#/models/scale")
    wait_for(browser, lambda d: text_of(d, "#serving") == "v2", "serving v2")
    select = browser.find_element(By.ID, "canary-version")
    select.find_element(By.CSS_SELECTOR, 'option[value="1"]').click()
    weight = browser.find_element(By.ID, "canary-weight")
    weight.clear()
    weight.send_keys("30")
    click(browser, "#set-canary")
    confirm(browser, "send 30% of requests that name no version to canary v1; stable stays v2")
    rollout_done(browser, 3)
    with rest(plane) as api:
        spec = api.get("/deployments/scale").json()["deployment"]["spec"]
    assert (spec["stable_version"], spec["canary_version"], spec["canary_weight"]) == (2, 1, 30)

    browser.get(plane.url + "/#/models/scale")
    wait_for(browser, lambda d: text_of(d, "#serving") == "v2 + canary v1 (30%)", "the canary on the page")
    screenshot(browser, "model", "Model scale")
    click(browser, "#rollback")
    confirm(browser, "stop serving v2 + canary v1 (30%) and serve v2 again")
    rollout_done(browser, 4)
    with rest(plane) as api:
        state = api.get("/deployments/scale").json()
    assert state["deployment"]["spec"]["canary_version"] == 0 and state["deployment"]["spec"]["stable_version"] == 2
    assert state["deployment"]["history"][-1]["reason"] == "rollback"
    assert state["deployment"]["history"][-1]["created_by"] == "token:00000000ad01"
    for w in plane.workers:
        assert text_of(browser, f"#state-{w}") == "acked"


def test_a_nacked_version_shows_the_workers_error(plane: Plane, browser: Any, tmp_path: Path) -> None:
    push(plane, tmp_path, "fragile", b"fine v1")
    push(plane, tmp_path, "fragile", b"corrupt v2")
    with rest(plane) as api:
        assert api.put("/deployments/fragile", json={"version": 1}).status_code == 200
    login(browser, plane.url)
    browser.get(plane.url + "/#/models/fragile")
    wait_for(browser, lambda d: text_of(d, "#serving") == "v1", "serving v1")
    click(browser, 'button.deploy[data-version="2"]')
    confirm(browser, "serve v2 as the stable version, replacing v1")
    wait_for(browser, lambda d: text_of(d, "#rollout-phase") == "failed", "the rollout failed")
    errors = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".worker-error") if e.text]
    assert errors and all("cannot parse the model file" in e for e in errors), errors
    assert "cannot parse the model file" in text_of(browser, "#rollout-message")
    screenshot(browser, "rollout-failed", "Rollout fragile", readme=True)
    with rest(plane) as api:  # the good version kept serving
        assert api.get("/deployments/fragile").json()["deployment"]["spec"]["stable_version"] == 1


def test_a_reader_sees_no_mutating_controls_and_a_forged_mutation_is_refused(
    plane: Plane, browser: Any, reader_token: str, tmp_path: Path
) -> None:
    push(plane, tmp_path, "demo", b"demo v1")
    with rest(plane) as api:
        assert api.put("/deployments/demo", json={"version": 1}).status_code == 200
    login(browser, plane.url, reader_token)
    assert text_of(browser, "#whoami").endswith("· reader")
    nav = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#nav a")]
    assert nav == ["Models", "Workers"]
    browser.get(plane.url + "/#/models/demo")
    wait_for(browser, lambda d: d.find_elements(By.ID, "version-1") and text_of(d, "#serving") == "v1",
             "the model page")
    for css in ("button.deploy", "#canary-form", "#rollback", "#playground-link"):
        assert not browser.find_elements(By.CSS_SELECTOR, css), css
    assert not [b for b in browser.find_elements(By.CSS_SELECTOR, "main button")]
    screenshot(browser, "model-reader", "Model demo")
    # the server enforces the role whatever the page shows: the same fetch the console would send
    forged = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const headers = {'Authorization': 'Bearer ' + sessionStorage.getItem('lmaas.token'),
                         'Content-Type': 'application/json'};
        Promise.all([
          fetch('/api/v1/deployments/demo', {method: 'PUT', headers, body: JSON.stringify({version: 1})}),
          fetch('/api/v1/tokens', {method: 'POST', headers, body: JSON.stringify({role: 'admin'})}),
        ]).then(async (rs) => done(await Promise.all(rs.map(async (r) => [r.status, (await r.json()).code]))));
    """)
    assert forged == [[403, "PERMISSION_DENIED"], [403, "PERMISSION_DENIED"]]
    with rest(plane) as api:
        denied = [e for e in api.get("/audit").json()["entries"] if e["code"] == "PERMISSION_DENIED"]
    assert {e["method"].rsplit("/", 1)[-1] for e in denied} >= {"Deploy", "CreateToken"}


def test_user_supplied_markup_renders_as_text(plane: Plane, browser: Any) -> None:
    with rest(plane) as api:
        assert api.post("/models", json={"name": "<b>x</b>"}).status_code == 422  # names cannot carry markup
        created = api.post("/models", json={"name": "markup", "description": MARKUP, "metadata": {"owner": MARKUP}})
        assert created.status_code == 201, created.text
    plane.token(pb.ROLE_READER, MARKUP)
    login(browser, plane.url)
    wait_for(browser, lambda d: MARKUP in text_of(d, "#models-table"), "the description as text")
    browser.get(plane.url + "/#/models/markup")
    wait_for(browser, lambda d: MARKUP in text_of(d, "#model-info"), "the model page")
    browser.get(plane.url + "/#/tokens")
    wait_for(browser, lambda d: MARKUP in text_of(d, "#tokens-table"), "the token description as text")
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main b")
    assert browser.execute_script("return window.__pwned") is None
