// Sign-in: by code (RFC 8628, the default) or by enrollment token. The window polls
// nothing itself: one `finish_device_login` call waits while the core polls the hub, and
// Cancel tells the core to stop.
import * as api from "./api";
import { describeError } from "./errors";
import { S, fill } from "./i18n";
import type { AgentSnapshot, DeviceSignIn } from "./types";
import { hasErrors, validateLogin, type LoginErrors } from "./validate";
import { byId, showError, showMessage } from "./view";

type Mode = "device" | "token";

let mode: Mode = "device";
let onSignedIn: (snapshot: AgentSnapshot) => void = () => {};
/** Which sign-in the panel shows; a late answer from an older one is ignored. */
let attempt = 0;
let timer: ReturnType<typeof setInterval> | undefined;


function input(id: string): HTMLInputElement {
  return byId<HTMLInputElement>(id);
}

function setMode(next: Mode): void {
  mode = next;
  byId("login-form").dataset.mode = next;
  byId("token-field").hidden = next !== "token";
  input("token").required = next === "token";
  labelMode();
  showError("login-error", null);
  for (const id of ["hub-url", "token"]) {
    input(id).setAttribute("aria-invalid", "false");
    showMessage(`${id}-error`, null);
  }
}

function labelMode(): void {
  byId("login-intro").textContent = mode === "device" ? S.loginIntroDevice : S.loginIntroToken;
  byId("login-submit").textContent = mode === "device" ? S.getCode : S.logIn;
  byId("login-mode").textContent = mode === "device" ? S.useToken : S.useCode;
}

/** The sign-in texts in the current language (after a language switch). The static ones
 * come from index.html's `data-i18n`; a field error shown stays in the language it was
 * shown in until the next check. */
export function relabelSignIn(): void {
  if (!byId<HTMLButtonElement>("login-submit").disabled) labelMode();
  else byId("login-intro").textContent = mode === "device" ? S.loginIntroDevice : S.loginIntroToken;
  const waiting = byId("device-waiting");
  if (waiting.textContent) waiting.textContent = S.waiting;
  byId("device-cancel").textContent = byId("device-retry").hidden ? S.cancel : S.back;
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

function showStart(): void {
  stopTimer();
  byId("login-start").hidden = false;
  byId("device-panel").hidden = true;
}

/** Back to the empty form, sign-in by code: another account is shown now, and a sign-in
 * in progress was the other account's (the core cancelled it). */
export function resetSignIn(): void {
  attempt++;
  stopTimer();
  showStart();
  input("hub-url").value = "";
  input("token").value = "";
  setMode("device");
}

function stopTimer(): void {
  if (timer !== undefined) clearInterval(timer);
  timer = undefined;
}

function formatLeft(secs: number): string {
  const m = Math.floor(secs / 60);
  const s = secs % 60;
  return `${m}:${String(s).padStart(2, "0")}`;
}

/** The code, the page, the QR code and the time left; then the one long wait. */
function showDevice(signIn: DeviceSignIn): void {
  const mine = ++attempt;
  byId("login-start").hidden = true;
  byId("device-panel").hidden = false;
  byId("device-code").textContent = signIn.userCode;
  byId("verification-uri").textContent = signIn.verificationUri;
  const open = byId<HTMLButtonElement>("open-approval");
  open.dataset.url = signIn.verificationUriComplete;
  open.hidden = false;
  const img = byId<HTMLImageElement>("device-qr-img");
  // As an <img>, the SVG is only a picture: nothing in it can run.
  img.src = `data:image/svg+xml;charset=utf-8,${encodeURIComponent(signIn.qrSvg)}`;
  img.dataset.url = signIn.verificationUriComplete;
  byId("device-qr").hidden = false;
  byId("copy-code").hidden = false;
  byId("device-waiting").textContent = S.waiting;
  byId("device-waiting").hidden = false;
  showError("device-error", null);
  byId("device-retry").hidden = true;
  byId("device-cancel").textContent = S.cancel;

  // The time left counts on this machine's clock from when the code came (the core stops
  // on its own clock too); the hub's wall clock plays no part.
  const deadline = performance.now() + signIn.expiresInSecs * 1000;
  const tick = () => {
    const left = Math.max(0, Math.ceil((deadline - performance.now()) / 1000));
    byId("device-expiry").textContent = left > 0 ? fill(S.expiresIn, { time: formatLeft(left) }) : S.expiredLocal;
    byId("device-expiry").dataset.secondsLeft = String(left);
  };
  stopTimer();
  tick();
  timer = setInterval(tick, 1000);

  api.finishDeviceLogin().then(
    (snapshot) => {
      if (mine !== attempt) return;
      stopTimer();
      // null: cancelled; the Cancel handler already went back to the form.
      if (snapshot) {
        showStart();
        onSignedIn(snapshot);
      }
    },
    (err) => {
      if (mine !== attempt) return;
      stopTimer();
      showDeviceError(err);
    },
  );
}

function showDeviceError(err: unknown): void {
  byId("device-waiting").hidden = true;
  byId("open-approval").hidden = true;
  byId("device-qr").hidden = true;
  byId("copy-code").hidden = true;
  byId("device-expiry").textContent = "";
  showError("device-error", describeError(err));
  byId("device-retry").hidden = false;
  byId("device-cancel").textContent = S.back;
  byId("device-retry").focus();
}

async function requestCode(hubUrl: string): Promise<void> {
  const button = byId<HTMLButtonElement>("login-submit");
  button.disabled = true;
  button.textContent = S.gettingCode;
  try {
    showDevice(await api.startDeviceLogin(hubUrl));
  } catch (err) {
    showStart();
    showError("login-error", describeError(err));
  } finally {
    button.disabled = false;
    button.textContent = mode === "device" ? S.getCode : S.logIn;
  }
}

async function onSubmit(event: SubmitEvent): Promise<void> {
  event.preventDefault();
  const hubUrl = input("hub-url").value.trim();
  const token = input("token").value.trim();
  showError("login-error", null);
  const errors = validateLogin(mode === "token" ? { hubUrl, token } : { hubUrl });
  showFieldErrors(errors);
  if (hasErrors(errors)) return;
  if (mode === "device") {
    await requestCode(hubUrl);
    return;
  }

  const button = byId<HTMLButtonElement>("login-submit");
  button.disabled = true;
  button.textContent = S.loggingIn;
  try {
    const snapshot = await api.login(hubUrl, token);
    input("token").value = "";
    showMessage("login-reason", null);
    onSignedIn(snapshot);
  } catch (err) {
    showError("login-error", describeError(err));
  } finally {
    button.disabled = false;
    button.textContent = S.logIn;
  }
}

async function cancel(): Promise<void> {
  attempt++;
  stopTimer();
  showStart();
  try {
    await api.cancelDeviceLogin();
  } catch (err) {
    showError("login-error", describeError(err));
  }
}

export function setUpSignIn(signedIn: (snapshot: AgentSnapshot) => void): void {
  onSignedIn = signedIn;
  setMode("device");
  byId("device-cancel").textContent = S.cancel;

  byId("login-form").addEventListener("submit", (e) => void onSubmit(e as SubmitEvent));
  byId("login-mode").addEventListener("click", () => setMode(mode === "device" ? "token" : "device"));
  // A field's complaint goes away as soon as the person edits that field.
  for (const id of ["hub-url", "token"]) {
    input(id).addEventListener("input", () => {
      input(id).setAttribute("aria-invalid", "false");
      showMessage(`${id}-error`, null);
    });
  }
  byId("device-cancel").addEventListener("click", () => void cancel());
  byId("device-retry").addEventListener("click", () => void requestCode(input("hub-url").value.trim()));
  byId("open-approval").addEventListener("click", () => {
    const url = byId("open-approval").dataset.url ?? "";
    api.openApprovalPage(url).catch((err) => {
      const described = describeError(err);
      showError("device-error", { summary: S.errOpenPage, detail: described.summary });
    });
  });
  byId("copy-code").addEventListener("click", () => {
    const code = byId("device-code").textContent ?? "";
    navigator.clipboard?.writeText(code).then(
      () => {
        byId("copy-code").textContent = S.copied;
        setTimeout(() => (byId("copy-code").textContent = S.copyCode), 1500);
      },
      // No clipboard (permissions): the code stays selectable on screen.
      () => window.getSelection()?.selectAllChildren(byId("device-code")),
    );
  });
}
