"""The LLM playground streams tokens from SmolLM2 (a real worker process) and answers one prompt from two
versions side by side: stable and canary. SmolLM2 comes from ``llm_support`` (converted once per session)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from console_support import login, screenshot, text_of, wait_for
from cp_harness import lmaas, start_control_plane
from llm_support import SMOLLM2_FILES, smollm2_dir
from processes import ServerProcess, start_worker, wait_for_workers
from selenium.webdriver.common.by import By


@pytest.fixture()
def llm_plane(tmp_path: Path) -> Iterator[ServerProcess]:
    """A control plane serving SmolLM2 v1 (stable) and v2 (canary, the same weights) on one real worker."""
    source = smollm2_dir()
    control = start_control_plane(tmp_path)
    try:
        w = start_worker(None, "--control-plane", control.grpc, "--worker-id", "llm-worker", "--cache-dir",
                         str(tmp_path / "cache"), "--report-every", "1", env={"HF_HUB_OFFLINE": "1"})
        try:
            wait_for_workers(control.grpc)
            v2 = tmp_path / "v2"  # a second version: the same files, a different description
            v2.mkdir()
            for f in SMOLLM2_FILES:
                os.link(source / f, v2 / f)
            assert lmaas("model", "push", "smollm2", str(source), "-q", address=control.grpc).stdout.strip() == "1"
            assert lmaas("model", "push", "smollm2", str(v2), "-q", "--parent", "1", "--description", "canary",
                         address=control.grpc).stdout.strip() == "2"
            lmaas("deploy", "smollm2", "1", "--canary", "2", "--weight", "50", "--wait", address=control.grpc,
                  timeout=300)
            yield control
        finally:
            w.stop()
    finally:
        control.stop()


def test_the_playground_streams_two_versions_side_by_side(llm_plane: ServerProcess, browser: Any) -> None:
    base = f"http://{llm_plane.http}"
    login(browser, base)
    browser.get(base + "/#/models/smollm2")
    wait_for(browser, lambda d: d.find_elements(By.ID, "playground-link"), "the playground link of an LLM")
    browser.find_element(By.ID, "playground-link").click()
    wait_for(browser, lambda d: d.find_elements(By.ID, "chat-form"), "the playground")
    assert browser.find_element(By.ID, "version-a").get_attribute("value") == "1"  # stable vs canary by default
    assert browser.find_element(By.ID, "version-b").get_attribute("value") == "2"
    tokens = browser.find_element(By.ID, "max-tokens")
    tokens.clear()
    tokens.send_keys("16")
    assert browser.find_element(By.ID, "mode").get_attribute("value") == "chat"
    browser.find_element(By.ID, "send").click()
    for pane, version in (("a", "1"), ("b", "2")):
        stats = wait_for(browser, lambda d, p=pane: "tokens" in text_of(d, f"#stats-{p}") and text_of(d, f"#stats-{p}"),
                         f"pane {pane} finished", 180)
        assert stats.startswith(f"v{version} on llm-worker · "), stats
        counted = re.search(r" · (\d+) tokens · (stop|length) · TTFT [\d.]+ ms · [\d.]+ tokens/s"
                            r" · turn 1, 1 message sent$", stats)
        assert counted and 1 < int(counted.group(1)) <= 16, stats  # within max_tokens, as the worker counted
        # streamed: the text arrived as several events, each appended as its own text node
        assert browser.execute_script(f"return document.getElementById('out-{pane}').childNodes.length") > 1
    a, b = text_of(browser, "#out-a"), text_of(browser, "#out-b")
    assert a.strip() and a == b  # the same weights, greedy: the same text
    assert "Paris" in a, a  # the chat template made it an answer to the question

    # a second turn: each pane sends the whole conversation (as the route counted it: user, assistant, user)
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.get_attribute("value") == ""  # cleared for the next turn
    prompt.send_keys("And of Germany?")
    browser.find_element(By.ID, "send").click()
    for pane in ("a", "b"):
        stats = wait_for(browser, lambda d, p=pane: "turn 2" in text_of(d, f"#stats-{p}") and text_of(d, f"#stats-{p}"),
                         f"pane {pane}'s second turn", 180)
        assert stats.endswith(" · turn 2, 3 messages sent"), stats
        log = text_of(browser, f"#log-{pane}")
        assert "You: What is the capital of France?" in log and a.strip() in log, log  # the first turn, kept
        assert text_of(browser, f"#ask-{pane}") == "You: And of Germany?"
    second_a, second_b = text_of(browser, "#out-a"), text_of(browser, "#out-b")
    assert second_a.strip() and second_a == second_b and second_a != a  # the same conversation on both sides
    assert "Berlin" in second_a, second_a  # "And of Germany?" is answerable only with the first turn
    screenshot(browser, "playground", "Playground smollm2", readme=True)

    # a prompt as it is (no template) is continued, on the version the deployment routes to
    browser.find_element(By.CSS_SELECTOR, '#mode option[value="completion"]').click()
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("The capital of France is")
    browser.find_element(By.CSS_SELECTOR, '#version-a option[value="0"]').click()
    browser.find_element(By.CSS_SELECTOR, '#version-b option[value="none"]').click()
    browser.find_element(By.ID, "send").click()
    stats = wait_for(browser, lambda d: "tokens" in text_of(d, "#stats-a") and text_of(d, "#stats-a"),
                     "the completion", 180)
    assert stats.split(" ")[0] in ("v1", "v2") and text_of(browser, "#out-a") not in ("", a), stats
    assert text_of(browser, "#out-b") == ""
    assert text_of(browser, "#log-a") == ""  # another mode: another conversation

    # without Prometheus, the model page charts time to first token from the histograms the worker reports
    browser.get(base + "/#/models/smollm2")

    def ttft_chart(d: Any) -> str:
        for chart in d.find_elements(By.CSS_SELECTOR, "#charts svg"):
            label = str(chart.get_attribute("aria-label") or "")
            if label.startswith("Time to first token p50.") and re.search(r"v[12]: [\d.]+ ms", label):
                return label
        return ""

    label = wait_for(browser, ttft_chart, "a TTFT chart from the control plane's aggregation", 60)
    assert "Generated tokens" in text_of(browser, "#charts"), label
