// Several accounts in the window, English and French: with two or more, a bar names each
// account in words and switches between them; a new account, added from Settings, starts at
// its own sign-in; an added account can
// be removed after a confirmation (the first cannot), Home pauses or resumes them all, a
// switch made from the tray menu brings the window back to that account's Home, and a
// refused switch says why and leaves the list as it was.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { NO_CAPS, plainSettings, snapshot, windowUnderTest } from "./harness.mjs";

const TODAY = new Date().toISOString().slice(0, 10);
const GRANTED = [{ name: "http_request", granted: true, outdated: false, text: "core text" }];

const ann = snapshot({
  loggedIn: true,
  hubUrl: "https://hub-a.example.com",
  agentId: "agt_ann",
  creatorId: "c-ann",
  connection: "online",
  usage: { day: TODAY, jobsToday: 3 },
});
const bob = snapshot({
  loggedIn: true,
  hubUrl: "http://127.0.0.1:8787",
  agentId: "agt_bob",
  creatorId: "c-bob",
  connection: "online",
  paused: true,
  usage: { day: TODAY, jobsToday: 0 },
});
const fresh = snapshot({});

function view(id, s, active) {
  return {
    id,
    active,
    loggedIn: s.loggedIn,
    hubUrl: s.hubUrl,
    creatorId: s.creatorId,
    paused: s.paused,
    connection: s.connection,
    busy: 0,
  };
}

const annActive = [view("main", ann, true), view("acct-2", bob, false)];
const bobActive = [view("main", ann, false), view("acct-2", bob, true)];

function app(lang, accounts, state, extra = {}) {
  return {
    state,
    commands: {
      list_accounts: { resolve: accounts },
      get_settings: { resolve: plainSettings(lang) },
      get_consent: { resolve: GRANTED },
      get_usage: { resolve: { jobsToday: 3, bytesToday: 0, caps: NO_CAPS } },
      ...extra,
    },
  };
}

const text = (page, selector) => page.textContent(selector).then((t) => t.trim());
const calls = (page, cmd) => page.evaluate((c) => window.__ipcCalls.filter((x) => x.cmd === c), cmd);
const options = (page) =>
  page.$$eval("#account-select option", (os) => os.map((o) => ({ id: o.value, name: o.textContent, selected: o.selected })));
const emitAccounts = (page, list) => page.evaluate((l) => window.__emit("agent://accounts", l), list);

const open = windowUnderTest();

const WORDS = {
  en: {
    account: "Account",
    bob: "c-bob · 127.0.0.1:8787 (paused)",
    add: "Add an account",
    remove: "Remove this account",
    keep: "Keep it",
    yes: "Remove",
    pauseAll: "Pause all accounts",
    resumeAll: "Resume all accounts",
    fresh: "New account (not signed in)",
    unknown: "This account is no longer in the app. Pick one from the list.",
  },
  fr: {
    account: "Compte",
    bob: "c-bob · 127.0.0.1:8787 (en pause)",
    add: "Ajouter un compte",
    remove: "Retirer ce compte",
    keep: "Le garder",
    yes: "Retirer",
    pauseAll: "Mettre tous les comptes en pause",
    resumeAll: "Reprendre tous les comptes",
    fresh: "Nouveau compte (non connecté)",
    unknown: "Ce compte n'est plus dans l'application. Choisissez-en un dans la liste.",
  },
};

test("one account shows no account bar: there is nothing to choose", async () => {
  const first = await open(app("en", [view("main", fresh, true)], fresh));
  await first.page.waitForSelector("#login-view", { state: "visible" });
  assert.equal(await first.page.isVisible("#account-bar"), false);
  const one = await open(app("en", [view("main", ann, true)], ann));
  await one.page.waitForSelector("#status-view", { state: "visible" });
  assert.equal(await one.page.isVisible("#account-bar"), false);
  assert.equal(await one.page.isVisible("#pause-all"), false);
  assert.deepEqual([...first.errors, ...one.errors], []);
});

for (const lang of ["en", "fr"]) {
  const words = WORDS[lang];

  test(`${lang}: the bar names each account and switches to another, which shows its own Home`, async () => {
    const { page, errors } = await open(
      app(lang, annActive, ann, { switch_account: { resolve: bob } }),
      { locale: lang === "fr" ? "fr-FR" : "en-US" },
    );
    await page.waitForSelector("#account-bar", { state: "visible" });
    assert.equal(await text(page, "#account-label"), words.account);
    assert.deepEqual(await options(page), [
      { id: "main", name: "c-ann · hub-a.example.com", selected: true },
      { id: "acct-2", name: words.bob, selected: false },
    ]);
    assert.equal(await page.isVisible("#account-remove"), false, "the first account cannot be removed");
    assert.equal(await text(page, "#pause-all"), words.pauseAll, "one account of two is not paused");
    assert.equal(await text(page, "#hub-url-value"), "https://hub-a.example.com");

    await page.getByRole("combobox", { name: words.account }).selectOption("acct-2");
    await page.waitForFunction(() => document.querySelector("#hub-url-value").textContent === "http://127.0.0.1:8787");
    assert.deepEqual((await calls(page, "switch_account")).map((c) => c.args), [{ id: "acct-2" }]);
    await emitAccounts(page, bobActive);
    await page.waitForSelector("#account-remove", { state: "visible" });
    assert.equal((await options(page)).find((o) => o.selected).id, "acct-2");
    assert.deepEqual(errors, []);
  });

  test(`${lang}: an added account is removed only after a confirmation`, async () => {
    const { page, errors } = await open(
      app(lang, bobActive, bob, { remove_account: { resolve: ann } }),
      { locale: lang === "fr" ? "fr-FR" : "en-US" },
    );
    await page.waitForSelector("#account-remove", { state: "visible" });
    await page.getByRole("button", { name: words.remove }).click();
    await page.waitForSelector("#account-remove-confirm", { state: "visible" });
    assert.equal(await page.evaluate(() => document.activeElement.id), "account-remove-no", "the safe answer has the focus");
    await page.getByRole("button", { name: words.keep }).click();
    assert.equal(await page.isVisible("#account-remove-confirm"), false);
    assert.deepEqual(await calls(page, "remove_account"), [], "Keep it removes nothing");

    await page.getByRole("button", { name: words.remove }).click();
    await page.getByRole("button", { name: words.yes, exact: true }).click();
    await page.waitForFunction(() => document.querySelector("#hub-url-value").textContent === "https://hub-a.example.com");
    assert.deepEqual((await calls(page, "remove_account")).map((c) => c.args), [{ id: "acct-2" }]);
    await emitAccounts(page, [view("main", ann, true)]);
    await page.waitForSelector("#account-remove", { state: "hidden" });
    assert.equal(await page.isVisible("#pause-all"), false, "one account: no 'all'");
    assert.deepEqual(errors, []);
  });

  test(`${lang}: adding an account from Settings opens its sign-in; the others stay one choice away`, async () => {
    const { page, errors } = await open(
      app(lang, [view("main", ann, true)], ann, { add_account: { resolve: fresh } }),
      { locale: lang === "fr" ? "fr-FR" : "en-US" },
    );
    await page.click("#open-settings");
    await page.waitForSelector("#settings-view", { state: "visible" });
    await page.getByRole("button", { name: words.add }).click();
    await page.waitForSelector("#login-view", { state: "visible" });
    assert.equal(await page.inputValue("#hub-url"), "", "the new account's form starts empty");
    await emitAccounts(page, [view("main", ann, false), view("acct-2", bob, false), view("acct-3", fresh, true)]);
    await page.waitForFunction(() => document.querySelectorAll("#account-select option").length === 3);
    assert.equal(await page.isVisible("#account-bar"), true, "the bar stays on the sign-in of a further account");
    assert.deepEqual((await options(page)).find((o) => o.selected), { id: "acct-3", name: words.fresh, selected: true });
    assert.deepEqual(errors, []);
  });

  test(`${lang}: Home pauses all accounts, then resumes them all`, async () => {
    const allPaused = [view("main", { ...ann, paused: true }, true), view("acct-2", bob, false)];
    const { page, errors } = await open(
      app(lang, annActive, ann, { pause_all: { resolve: allPaused }, resume_all: { resolve: annActive } }),
      { locale: lang === "fr" ? "fr-FR" : "en-US" },
    );
    await page.getByRole("button", { name: words.pauseAll }).click();
    await page.getByRole("button", { name: words.resumeAll }).waitFor();
    await page.getByRole("button", { name: words.resumeAll }).click();
    await page.getByRole("button", { name: words.pauseAll }).waitFor();
    assert.equal((await calls(page, "pause_all")).length, 1);
    assert.equal((await calls(page, "resume_all")).length, 1);
    assert.deepEqual(errors, []);
  });
}

test("a switch from the tray menu brings the window to that account's Home, even from Settings", async () => {
  const { page, errors } = await open(app("en", annActive, ann));
  await page.getByRole("button", { name: "Settings" }).click();
  await page.waitForSelector("#settings-view", { state: "visible" });
  // What the core sends after the tray's switch: the new account's state, then the list.
  await page.evaluate((s) => window.__emit("agent://state", s), bob);
  await emitAccounts(page, bobActive);
  await page.waitForSelector("#status-view", { state: "visible" });
  assert.equal(await page.isVisible("#settings-view"), false);
  assert.equal(await text(page, "#hub-url-value"), "http://127.0.0.1:8787");
  assert.deepEqual(errors, []);
});

test("a refused switch says why in words and the list goes back to the account shown", async () => {
  const { page, errors } = await open(
    app("fr", annActive, ann, {
      switch_account: { reject: { code: "unknown_account", message: "there is no account \"acct-2\" in this app" } },
    }),
    { locale: "fr-FR" },
  );
  await page.getByRole("combobox", { name: "Compte" }).selectOption("acct-2");
  await page.waitForSelector("#account-error", { state: "visible" });
  assert.match(await text(page, "#account-error"), /^Ce compte n'est plus dans l'application\./);
  assert.equal((await options(page)).find((o) => o.selected).id, "main");
  assert.equal(await text(page, "#hub-url-value"), "https://hub-a.example.com");
  assert.deepEqual(errors, []);
});

test("another account's sign-in starts empty and by code, whatever the last one used", async () => {
  const both = [view("main", fresh, true), view("acct-2", fresh, false)];
  const { page, errors } = await open(app("en", both, fresh));
  await page.waitForSelector("#login-view", { state: "visible" });
  await page.getByRole("button", { name: "Use an enrollment token instead" }).click();
  await page.fill("#hub-url", "https://hub-a.example.com");
  await page.fill("#token", "et_typed_for_the_first_account");
  assert.equal(await page.getAttribute("#login-form", "data-mode"), "token");
  await page.evaluate((s) => window.__emit("agent://state", s), fresh);
  await emitAccounts(page, [view("main", fresh, false), view("acct-2", fresh, true)]);
  await page.waitForFunction(() => document.querySelector("#login-form").dataset.mode === "device");
  assert.equal(await page.inputValue("#hub-url"), "");
  assert.equal(await page.inputValue("#token"), "", "one account's token never shows on another's form");
  assert.equal(await page.isVisible("#token-field"), false);
  assert.deepEqual(errors, []);
});
