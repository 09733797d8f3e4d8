"""The chat page end to end in headless Chromium: page → SupportApi → a real moat-model-server serving the exported
MiniLM sentence encoder → the answer on screen. Markup in an answer (or in what the user types) must show as
text: no element is created from it and no script runs. And `serve_support` (what `moat support serve` runs)
against that model server."""
import json
import os
import re
import urllib.request
from pathlib import Path

import numpy as np
import pytest


MARKUP_ANSWER = 'Write <b>bold</b> like this, but never <img src=x onerror="window.__pwned=1"> in a message.'
SHARED_ANSWER = "Open Settings, then Profile, and edit it there; a change of e-mail address is confirmed by a link."
FAQ = f"""# Billing

## How do I pay for my subscription?
Pay by credit card or bank transfer on the Billing page of your account.

## Can I get a refund?
Yes: within 30 days of a purchase, ask for one on the Orders page and it goes back to the card you paid with.

# Accounts

## How do I reset my password?
Click "Forgot password" on the sign-in page and follow the link we e-mail you.

## How do I change my e-mail address?
{SHARED_ANSWER}

## How do I update my contact details?
{SHARED_ANSWER}

## How do I delete my account?
Open Settings, then Privacy, and choose "Delete account"; your data is erased within 14 days.

# Formatting

## How do I make text bold in the chat window?
{MARKUP_ANSWER}
"""


def tiny_support_dir(tmp: Path, encoder_dir: Path) -> Path:
    """A support build dir from parts around the session build's encoder (tests/conftest.py `support_build`): a
    seven-entry Markdown FAQ with markup in an answer, its index, a hand-set policy and support.json."""
    from moatkit.app.support.index import AnswerIndex, index_keys
    from moatkit.app.support.kb import load_knowledge_base, save_knowledge_base
    from moatkit.app.support.models import LocalModels
    from moatkit.app.support.policy import Policy

    (tmp / "faq.md").write_text(FAQ, encoding="utf-8")
    kb = load_knowledge_base([tmp / "faq.md"])
    out = tmp / "support"
    save_knowledge_base(kb, out)
    texts, owners, kinds = index_keys(kb.entries)
    embeddings = LocalModels(encoder_dir).encode(texts)
    AnswerIndex(embeddings, np.asarray(owners), kinds, answers=[e.answer for e in kb.entries]).save(out)
    Policy(weights=[10.0, 5.0], bias=-6.0, handoff_below=0.5, clarify_below=0.02).save(out)
    encoder = {"name": "support-encoder", "version": int(encoder_dir.name), "dir": str(encoder_dir)}
    (out / "support.json").write_text(json.dumps({"encoder": encoder, "router": None, "labels": None, "top_k": 3}))
    return out


@pytest.fixture(scope="module")
def support(tmp_path_factory, support_build):
    from moatkit.app.support.config import ServeConfig
    from moatkit.app.support.launch import start_support

    tmp = tmp_path_factory.mktemp("support-browser")
    encoder_dir = support_build["repo"] / "support-encoder" / "1"
    with start_support(tiny_support_dir(tmp, encoder_dir), ServeConfig(port=0, log_dir=str(tmp / "logs"))) as handle:
        yield handle


def metric(url: str, line_start: str) -> float:
    """The sum of the samples whose line starts with line_start."""
    text = urllib.request.urlopen(url + "metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


def test_chat_page_answers_escapes_markup_takes_feedback_and_hands_off(support, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def bot_turns(count):
        WebDriverWait(browser, 30).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn.bot")) >= count)
        return browser.find_elements(By.CSS_SELECTOR, ".turn.bot")

    def ask(text, count):
        browser.find_element(By.ID, "message").send_keys(text)
        browser.find_element(By.ID, "send").click()
        return bot_turns(count)[count - 1]

    browser.get(support.url)
    assert browser.title == "Support"
    browser.execute_script("document.getElementById('message').value = 'x'.repeat(2001)")
    browser.find_element(By.ID, "send").click()
    assert bot_turns(1)[0].text == "Sorry, that did not work: 'message' has 2001 characters; the limit is 2000"
    first = ask("How do I reset my password?", 2)
    assert first.find_element(By.CSS_SELECTOR, ".answer-text").text == (
        'Click "Forgot password" on the sign-in page and follow the link we e-mail you.')
    source = first.find_element(By.CSS_SELECTOR, ".answer-source").text
    assert source.startswith("Source: How do I reset my password? · Accounts · ") and "faq.md:" in source
    assert re.fullmatch(r"Confidence (0\.9\d|1\.00)", first.find_element(By.CSS_SELECTOR, ".confidence").text)

    markup = ask("How do I make text bold in the chat window?", 3)
    assert markup.find_element(By.CSS_SELECTOR, ".answer-text").text == MARKUP_ANSWER
    ask('Is <b>this</b> <img src=x onerror="window.__pwned=2"> bold?', 4)
    assert browser.find_elements(By.CSS_SELECTOR, ".turn.user")[-1].text == (
        'Is <b>this</b> <img src=x onerror="window.__pwned=2"> bold?')
    assert browser.execute_script(
        "return document.querySelectorAll('#conversation img, #conversation b, #conversation script').length") == 0
    assert browser.execute_script("return window.__pwned") is None

    first.find_element(By.CSS_SELECTOR, ".feedback-up").click()
    WebDriverWait(browser, 10).until(lambda d: "Thanks" in first.find_element(By.CSS_SELECTOR, ".feedback-status").text)
    assert metric(support.url, 'moat_support_feedback_total{helpful="true"}') == 1

    clarify = ask(SHARED_ANSWER, 5)  # two entries share this answer: too close to choose, so the page asks
    candidates = clarify.find_elements(By.CSS_SELECTOR, ".candidates .candidate")
    assert [c.text for c in candidates][:2] == ["How do I change my e-mail address?",
                                                "How do I update my contact details?"]
    candidates[1].click()
    shown = clarify.find_element(By.CSS_SELECTOR, ".answer")
    assert shown.find_element(By.CSS_SELECTOR, ".answer-text").text == SHARED_ANSWER
    assert "How do I update my contact details?" in shown.find_element(By.CSS_SELECTOR, ".answer-source").text

    shown = len(browser.find_elements(By.CSS_SELECTOR, ".turn.bot.handoff-notice"))  # the assistant may hand off too
    browser.find_element(By.ID, "handoff").click()
    WebDriverWait(browser, 10).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn.bot.handoff-notice")) == shown + 1)
    notice = browser.find_elements(By.CSS_SELECTOR, ".turn.bot.handoff-notice")[-1].text
    assert notice.startswith("Passing you to a person (department ") and notice.endswith(
        "You are number 1 in the queue.")
    assert metric(support.url, "moat_support_handoffs_total{") == 1  # one place per session, whoever asked

    artifacts = Path(os.environ.get("MOAT_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(artifacts / "support_chat.png"))
    print(f"screenshot: {artifacts / 'support_chat.png'}")
    events = [json.loads(line)["event"] for line in support.log_path.read_text().splitlines()]
    assert events.count("turn") == 4 and events.count("feedback") == 1 and "handoff" in events


def test_serve_support_uses_a_given_model_server_and_stops_on_request(support, tmp_path):
    import threading

    from moatkit.app.support.config import ServeConfig
    from moatkit.app.support.launch import serve_support

    ready, handles, lines = threading.Event(), [], []
    config = ServeConfig(port=0, model_server=support.model_server, log_dir=str(tmp_path / "logs"))
    thread = threading.Thread(target=serve_support, args=(support.out_dir, config), daemon=True,
                              kwargs={"ready": lambda h: (handles.append(h), ready.set()), "log": lines.append})
    thread.start()
    assert ready.wait(60), lines
    handle = handles[0]
    assert handle.model_server == support.model_server and lines[0].startswith(f"support chat at {handle.url} ")
    body = json.dumps({"session": "cli", "message": "How do I reset my password?"}).encode()
    request = urllib.request.Request(handle.url + "api/chat", data=body, headers={"Content-Type": "application/json"})
    turn = json.loads(urllib.request.urlopen(request, timeout=30).read())
    assert turn["action"] == "answer" and turn["answer"]["question"] == "How do I reset my password?"
    handle.stop()
    thread.join(timeout=30)
    assert not thread.is_alive() and lines[-1] == "support chat stopped"
    assert [json.loads(line)["event"] for line in handle.log_path.read_text().splitlines()] == ["turn"]
