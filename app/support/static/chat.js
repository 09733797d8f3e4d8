// The support chat page. Every text from the user or the server goes into the page through textContent on
// elements made with createElement, never as HTML, so an answer or a message cannot inject markup or script.
"use strict";

(function () {
  const SESSION_KEY = "moat-support-session";
  const conversation = document.getElementById("conversation");
  const form = document.getElementById("chat-form");
  const input = document.getElementById("message");
  const send = document.getElementById("send");
  const handoffButton = document.getElementById("handoff");
  let lastTurnId = null;

  function sessionId() {
    let id = sessionStorage.getItem(SESSION_KEY);
    if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
      const bytes = new Uint8Array(16);
      crypto.getRandomValues(bytes);
      id = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      sessionStorage.setItem(SESSION_KEY, id);
    }
    return id;
  }
  const session = sessionId();

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function addTurn(who) {
    const node = el("div", "turn " + who);
    conversation.appendChild(node);
    return node;
  }

  function scrollDown() {
    conversation.scrollTop = conversation.scrollHeight;
  }

  function notice(text, extraClass) {
    const node = addTurn("bot");
    node.classList.add("notice");
    if (extraClass) node.classList.add(extraClass);
    node.appendChild(el("p", "notice-text", text));
    scrollDown();
    return node;
  }

  async function call(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method: method,
        headers: body ? {"Content-Type": "application/json"} : {},
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch (err) {
      return {ok: false, status: 0, data: {error: "could not reach the server"}};
    }
    let data;
    try {
      data = await response.json();
    } catch (err) {
      data = {error: "the server answered " + response.status};
    }
    return {ok: response.ok, status: response.status, data: data};
  }

  function errorText(result) {
    if (result.status === 429) {
      const wait = Number(result.data.retry_after_s || 1);
      return "You are sending messages too quickly: please wait " + Math.ceil(wait) + " s.";
    }
    return "Sorry, that did not work: " + (result.data.error || "error " + result.status);
  }

  function feedbackButtons(turnId, entryId, given) {
    const bar = el("div", "feedback");
    const up = el("button", "feedback-up", "Helpful");
    const down = el("button", "feedback-down", "Not helpful");
    up.type = down.type = "button";
    up.setAttribute("aria-label", "This helped");
    down.setAttribute("aria-label", "This did not help");
    const said = el("span", "feedback-status");
    async function give(helpful) {
      up.disabled = down.disabled = true;
      const result = await call("POST", "/api/feedback",
                                {session: session, turn_id: turnId, helpful: helpful, entry_id: entryId});
      said.textContent = result.ok ? "Thanks for the feedback." : errorText(result);
    }
    if (given) {
      up.disabled = down.disabled = true;
      said.textContent = "Thanks for the feedback.";
    }
    up.addEventListener("click", () => give(true));
    down.addEventListener("click", () => give(false));
    bar.append(up, down, said);
    return bar;
  }

  function answerBlock(answer, turnId, confidence, given) {
    const block = el("div", "answer");
    block.dataset.entryId = answer.entry_id;
    block.appendChild(el("p", "answer-text", answer.answer));
    const where = [answer.question, answer.department, answer.source].filter((part) => part);
    block.appendChild(el("p", "answer-source", "Source: " + where.join(" \u00b7 ")));
    if (confidence !== undefined && confidence !== null) {
      block.appendChild(el("p", "confidence", "Confidence " + Number(confidence).toFixed(2)));
    }
    block.appendChild(feedbackButtons(turnId, answer.entry_id, given));
    return block;
  }

  function handoffText(department, position) {
    let text = "Passing you to a person" + (department ? " (department " + department + ")" : "") + ".";
    if (position) text += " You are number " + position + " in the queue.";
    return text;
  }

  function showReply(turn) {
    lastTurnId = turn.turn_id;
    const node = addTurn("bot");
    node.dataset.turnId = turn.turn_id;
    node.dataset.action = turn.action;
    if (turn.action === "answer" && turn.answer) {
      node.appendChild(answerBlock(turn.answer, turn.turn_id, turn.confidence, Boolean(turn.feedback)));
    } else if (turn.action === "clarify") {
      node.appendChild(el("p", "clarify-text", "Did you mean one of these?"));
      const list = el("div", "candidates");
      (turn.candidates || []).forEach((candidate) => {
        const button = el("button", "candidate", candidate.question);
        button.type = "button";
        button.addEventListener("click", () => {
          list.querySelectorAll("button").forEach((b) => { b.disabled = true; });
          button.classList.add("chosen");
          node.appendChild(answerBlock(candidate, turn.turn_id, null, Boolean(turn.feedback)));
          scrollDown();
        });
        list.appendChild(button);
      });
      node.appendChild(list);
    } else {
      const queued = turn.handoff || {};
      node.classList.add("handoff-notice");
      node.appendChild(el("p", "handoff-text", handoffText(turn.department, queued.position)));
    }
    scrollDown();
  }

  async function ask(message) {
    addTurn("user").textContent = message;
    scrollDown();
    send.disabled = true;
    try {
      const result = await call("POST", "/api/chat", {session: session, message: message});
      if (result.ok) showReply(result.data);
      else notice(errorText(result), "error");
    } finally {
      send.disabled = false;
      input.focus();
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const message = input.value.trim();
    if (!message) return;
    input.value = "";
    ask(message);
  });

  handoffButton.addEventListener("click", async () => {
    const body = {session: session};
    if (lastTurnId) body.turn_id = lastTurnId;
    const result = await call("POST", "/api/handoff", body);
    if (result.ok) notice(handoffText(result.data.department, result.data.position), "handoff-notice");
    else notice(errorText(result), "error");
  });

  async function restore() {
    const result = await call("GET", "/api/history?session=" + encodeURIComponent(session));
    if (!result.ok) return;
    (result.data.turns || []).forEach((turn) => {
      addTurn("user").textContent = turn.message;
      showReply(turn);
    });
  }

  restore();
})();
