// Home's update notices in English and French: an update installed on disk with "Restart
// now" / "Tonight" (the choice goes to the core and stays said), a newer version to install
// the way the app was installed (or with "Install now" when it is the app's own package), and
// updates unreachable for more than seven days.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { NO_CAPS, plainSettings, snapshot, windowUnderTest } from "./harness.mjs";

const TODAY = new Date().toISOString().slice(0, 10);
const GRANTED = [{ name: "http_request", granted: true, outdated: false, text: "core text" }];

function state(updates) {
  return snapshot({
    loggedIn: true,
    hubUrl: "http://127.0.0.1:8787",
    agentId: "agt_1",
    connection: "online",
    usage: { day: TODAY, jobsToday: 1 },
    updates,
  });
}

function app(lang, updates, extra = {}) {
  return {
    state: state(updates),
    commands: {
      get_settings: { resolve: plainSettings(lang) },
      get_consent: { resolve: GRANTED },
      get_usage: { resolve: { jobsToday: 1, bytesToday: 0, caps: NO_CAPS } },
      ...extra,
    },
  };
}

const text = (page, selector) => page.textContent(selector).then((t) => t.trim());
const calls = (page, cmd) => page.evaluate((c) => window.__ipcCalls.filter((x) => x.cmd === c), cmd);

const open = windowUnderTest();

const WORDS = {
  en: {
    ready: "Update ready — Edge Agent 1.4.0 is installed and runs from the next start.",
    now: "Restart now",
    tonight: "Tonight",
    plannedTonight: "Restarting tonight at 3:00, when no task is running.",
    plannedNow: "Restarting as soon as no task is running…",
    available: "Edge Agent 1.5.0 is out.",
    stale: "for 9 days",
  },
  fr: {
    ready: "Mise à jour prête — Edge Agent 1.4.0 est installé et démarrera au prochain lancement.",
    now: "Redémarrer maintenant",
    tonight: "Cette nuit",
    plannedTonight: "Redémarrage cette nuit à 3 h, quand aucune tâche ne tourne.",
    plannedNow: "Redémarrage dès qu'aucune tâche ne tourne…",
    available: "Edge Agent 1.5.0 est sorti.",
    stale: "depuis 9 jours",
  },
};

for (const lang of ["en", "fr"]) {
  const words = WORDS[lang];

  test(`${lang}: an installed update offers a restart now or tonight, and the choice reaches the core`, async () => {
    const { page, errors } = await open(app(lang, { ready: "1.4.0", available: "1.4.0" }, { restart_for_update: { resolve: null } }));
    await page.waitForSelector("#update-ready", { state: "visible" });
    assert.equal(await text(page, "#update-ready-text"), words.ready);
    assert.equal(await page.isVisible("#update-available"), false, "installed already says more than offered");
    assert.equal(await page.isVisible("#updates-unreachable"), false);
    await page.getByRole("button", { name: words.tonight }).click();
    await page.waitForSelector("#update-restart-planned", { state: "visible" });
    assert.deepEqual((await calls(page, "restart_for_update")).map((c) => c.args), [{ when: "tonight" }]);
    assert.equal(await text(page, "#update-restart-planned"), words.plannedTonight);
    assert.equal(await page.isDisabled("#update-restart-tonight"), true);
    // Changing one's mind: now after all.
    await page.getByRole("button", { name: words.now }).click();
    await page.waitForFunction((t) => document.querySelector("#update-restart-planned").textContent === t, words.plannedNow);
    assert.deepEqual((await calls(page, "restart_for_update")).map((c) => c.args), [{ when: "tonight" }, { when: "now" }]);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${lang}: a newer version to install and updates unreachable for days are said in words`, async () => {
    const { page, errors } = await open(app(lang, { available: "1.5.0", unreachableDays: 9 }));
    await page.waitForSelector("#update-available", { state: "visible" });
    assert.ok((await text(page, "#update-available")).startsWith(words.available));
    assert.ok((await text(page, "#updates-unreachable")).includes(words.stale));
    assert.equal(await page.isVisible("#update-ready"), false);
    for (const forbidden of ["apt", "sudo", "dnf", "http"]) {
      assert.ok(!(await text(page, "#update-available")).includes(forbidden), `no command or address: ${forbidden}`);
    }
    assert.deepEqual(errors, []);
    await page.close();
  });
}

const INSTALL = {
  en: {
    offer: "Edge Agent 1.5.0 is out.",
    button: "Install now",
    installing: "Installing… your computer may ask for its administrator password.",
    busy: "A task is running. Updates never start in the middle of a task: try again when it has finished.",
  },
  fr: {
    offer: "Edge Agent 1.5.0 est sorti.",
    button: "Installer maintenant",
    installing: "Installation… votre ordinateur peut demander le mot de passe administrateur.",
    busy: "Une tâche est en cours. Une mise à jour ne commence jamais au milieu d'une tâche : réessayez quand elle sera finie.",
  },
};

for (const lang of ["en", "fr"]) {
  const words = INSTALL[lang];

  test(`${lang}: the app's own package is installed on the person's click, saying a password may be asked`, async () => {
    const { page, errors } = await open(app(lang, { available: "1.5.0", installable: true }, { install_update: { hold: true } }));
    await page.waitForSelector("#update-install", { state: "visible" });
    assert.equal(await text(page, "#update-available"), words.offer);
    assert.equal(await page.isVisible("#update-installing"), false, "nothing is said to install before the click");
    await page.getByRole("button", { name: words.button }).click();
    await page.waitForSelector("#update-installing", { state: "visible" });
    assert.equal(await text(page, "#update-installing"), words.installing);
    assert.equal(await page.isDisabled("#update-install-now"), true, "a second click while the first runs does nothing");
    assert.equal((await calls(page, "install_update")).length, 1);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${lang}: an install refused because a task runs is said in words, and the button comes back`, async () => {
    const refused = { install_update: { reject: { code: "update_busy", message: "a job is running" } } };
    const { page, errors } = await open(app(lang, { available: "1.5.0", installable: true }, refused));
    await page.waitForSelector("#update-install", { state: "visible" });
    await page.getByRole("button", { name: words.button }).click();
    await page.waitForSelector("#action-error", { state: "visible" });
    assert.ok((await text(page, "#action-error")).includes(words.busy));
    assert.equal(await page.isVisible("#update-installing"), false);
    assert.equal(await page.isDisabled("#update-install-now"), false);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("an offer the app cannot install itself has no Install button", async () => {
  const { page } = await open(app("en", { available: "1.5.0", installable: false }));
  await page.waitForSelector("#update-available", { state: "visible" });
  assert.equal(await page.isVisible("#update-install"), false);
  assert.ok((await text(page, "#update-available")).includes("the way you installed it"));
  await page.close();
});

test("nothing about updates is shown when there is nothing to tell, nor by an older core", async () => {
  for (const updates of [{}, undefined]) {
    const { page, errors } = await open(app("en", updates));
    await page.waitForSelector("#status-view", { state: "visible" });
    for (const id of ["#update-ready", "#update-available", "#update-install", "#updates-unreachable"]) {
      assert.equal(await page.isVisible(id), false, id);
    }
    assert.deepEqual(errors, []);
    await page.close();
  }
});

test("a refused restart is said, and nothing claims a restart is planned", async () => {
  const { page } = await open(app("en", { ready: "1.4.0" }, { restart_for_update: { reject: { code: "internal", message: "no" } } }));
  await page.waitForSelector("#update-ready", { state: "visible" });
  await page.getByRole("button", { name: "Restart now" }).click();
  await page.waitForSelector("#action-error", { state: "visible" });
  assert.equal(await page.isVisible("#update-restart-planned"), false);
  await page.close();
});
