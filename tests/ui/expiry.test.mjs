// Home's notice about the hub's signing keys, in English and French: 30 days before they
// expire (a notice) and once expired (an alert), naming what, the day in words, and what to
// do; nothing when the end is far, when there is none, or from an older core.
// Run: npm test --prefix ui
import { test } from "node:test";
import assert from "node:assert/strict";
import { NO_CAPS, plainSettings, snapshot, windowUnderTest } from "./harness.mjs";

const TODAY = new Date().toISOString().slice(0, 10);
const GRANTED = [{ name: "http_request", granted: true, outdated: false, text: "core text" }];
// Midday UTC: the same calendar day wherever the test machine is (UTC-11 to UTC+11). The
// fraction digits are the signed metadata's own, which the core keeps as they are.
const END = "2027-01-05T12:00:00.123456789Z";

function app(lang, expiries) {
  return {
    state: snapshot({
      loggedIn: true,
      hubUrl: "http://127.0.0.1:8787",
      agentId: "agt_1",
      connection: "online",
      usage: { day: TODAY, jobsToday: 0 },
      expiries,
    }),
    commands: {
      get_settings: { resolve: plainSettings(lang) },
      get_consent: { resolve: GRANTED },
      get_usage: { resolve: { jobsToday: 0, bytesToday: 0, caps: NO_CAPS } },
    },
  };
}

const lines = (page) =>
  page.$$eval("#trust-expiries > p", (ps) =>
    ps.map((p) => ({ what: p.dataset.what, cls: p.className, role: p.getAttribute("role"), text: p.textContent })),
  );

const open = windowUnderTest();

const WORDS = {
  en: {
    soon:
      "Your hub's signing keys for scripts expire on January 5, 2027. Ask whoever runs your hub to renew its signing keys; " +
      "Edge Agent picks up the new ones by itself, with nothing to reinstall.",
    expired:
      "Your hub's signing keys for updates expired on January 5, 2027: updates are refused until the keys are renewed. " +
      "Ask whoever runs your hub to renew its signing keys; Edge Agent picks up the new ones by itself at its next check, " +
      "with nothing to reinstall.",
  },
  fr: {
    soon:
      "Les clés de signature de votre hub pour les scripts expirent le 5 janvier 2027. Demandez à la personne qui gère " +
      "votre hub de renouveler ses clés de signature ; Edge Agent prendra les nouvelles de lui-même, sans rien réinstaller.",
    expired:
      "Les clés de signature de votre hub pour les mises à jour ont expiré le 5 janvier 2027 : les mises à jour sont " +
      "refusées jusqu'au renouvellement des clés. Demandez à la personne qui gère votre hub de renouveler ses clés de " +
      "signature ; Edge Agent prendra les nouvelles de lui-même à sa prochaine vérification, sans rien réinstaller.",
  },
};

for (const lang of ["en", "fr"]) {
  test(`${lang}: keys near their end are a notice, expired keys an alert, each in words with the day and what to do`, async () => {
    const { page, errors } = await open(
      app(lang, [
        { what: "bundleRoot", expiresAt: END, warning: "soon" },
        { what: "releaseRoot", expiresAt: END, warning: "expired" },
      ]),
    );
    await page.waitForSelector("#trust-expiries", { state: "visible" });
    await page.waitForFunction(
      (lang) => document.documentElement.lang === lang && document.querySelectorAll("#trust-expiries > p").length === 2,
      lang,
    );
    const shown = await lines(page);
    assert.deepEqual(shown, [
      { what: "bundleRoot", cls: "notice", role: "status", text: WORDS[lang].soon },
      { what: "releaseRoot", cls: "error", role: "alert", text: WORDS[lang].expired },
    ]);
    for (const { text } of shown) {
      for (const forbidden of ["bundleRoot", "releaseRoot", "TUF", "root.json", "2027-01-05", "Invalid Date"]) {
        assert.ok(!text.includes(forbidden), `no internal name or raw date: ${forbidden} in ${text}`);
      }
    }
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("nothing is said of keys far from their end, nor when the core sends none, nor by an older core", async () => {
  for (const expiries of [[{ what: "bundleRoot", expiresAt: END, warning: null }], [], undefined]) {
    const { page, errors } = await open(app("en", expiries));
    await page.waitForSelector("#status-view", { state: "visible" });
    assert.equal(await page.isVisible("#trust-expiries"), false, JSON.stringify(expiries));
    assert.deepEqual(errors, []);
    await page.close();
  }
});

test("keys a newer core names are still said, in general words", async () => {
  const { page, errors } = await open(app("en", [{ what: "hubCertificate", expiresAt: END, warning: "expired" }]));
  await page.waitForSelector("#trust-expiries", { state: "visible" });
  const [line] = await lines(page);
  assert.ok(
    line.text.startsWith("Your hub's signing keys expired on January 5, 2027: what depends on them is refused"),
    line.text,
  );
  assert.deepEqual(errors, []);
  await page.close();
});
