import * as api from "./api";
import { describeError } from "./errors";
import type { AgentSnapshot } from "./types";
import { hasErrors, validateLogin, type LoginErrors } from "./validate";
import { render, showError, showMessage } from "./view";

let current: AgentSnapshot | null = null;

function apply(snapshot: AgentSnapshot): void {
  current = snapshot;
  render(snapshot);
}

function input(id: string): HTMLInputElement {
  return document.getElementById(id) as HTMLInputElement;
}

function showFieldErrors(errors: LoginErrors): void {
  const fields: [keyof LoginErrors, string][] = [
    ["hubUrl", "hub-url"],
    ["token", "token"],
  ];
  for (const [key, id] of fields) {
    const message = errors[key];
    input(id).setAttribute("aria-invalid", message ? "true" : "false");
    showMessage(`${id}-error`, message);
  }
  const first = fields.find(([key]) => errors[key]);
  if (first) input(first[1]).focus();
}

async function onLogin(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const hubUrl = input("hub-url").value.trim();
  const token = input("token").value.trim();
  showError("login-error", null);
  const errors = validateLogin({ hubUrl, token });
  showFieldErrors(errors);
  if (hasErrors(errors)) return;

  const button = document.getElementById("login-submit") as HTMLButtonElement;
  button.disabled = true;
  button.textContent = "Logging in…";
  try {
    apply(await api.login(hubUrl, token));
    input("token").value = "";
    showMessage("login-reason", null);
  } catch (err) {
    showError("login-error", describeError(err));
  } finally {
    button.disabled = false;
    button.textContent = "Log in";
  }
}

async function runAction(action: () => Promise<AgentSnapshot>): Promise<void> {
  showError("action-error", null);
  try {
    apply(await action());
  } catch (err) {
    showError("action-error", describeError(err));
  }
}

async function main(): Promise<void> {
  document.getElementById("login-form")!.addEventListener("submit", (e) => void onLogin(e as SubmitEvent));
  // A field's complaint goes away as soon as the person edits that field.
  for (const id of ["hub-url", "token"]) {
    input(id).addEventListener("input", () => {
      input(id).setAttribute("aria-invalid", "false");
      showMessage(`${id}-error`, null);
    });
  }
  document.getElementById("pause-toggle")!.addEventListener("click", () =>
    void runAction(current?.paused ? api.resume : api.pause),
  );
  document.getElementById("logout")!.addEventListener("click", () => void runAction(api.logout));

  // Listen before asking for the first snapshot so no change falls in between.
  await api.onState(apply);
  await api.onAgentEvent((event) => {
    if (event.type === "loginRequired" && typeof event.reason === "string") {
      showMessage("login-reason", event.reason);
    }
  });
  try {
    apply(await api.getState());
  } catch (err) {
    document.getElementById("boot")!.textContent = describeError(err).summary;
  }
}

void main();
