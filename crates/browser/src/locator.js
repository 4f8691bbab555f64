// Locator helper installed into the page by edge-browser. Resolves selectors and reports
// element state; it never changes the page except where an action asks it to.
(() => {
  if (window.__edgeLocator && window.__edgeLocator.version === 2) return window.__edgeLocator;
  const norm = (s) => (s || "").replace(/\s+/g, " ").trim();
  const textOf = (el) => norm(el.innerText !== undefined ? el.innerText : el.textContent);
  function byText(scopes, spec) {
    let exact = false, needle = spec;
    if (spec.length >= 2 && ((spec[0] === '"' && spec.endsWith('"')) || (spec[0] === "'" && spec.endsWith("'")))) {
      exact = true; needle = spec.slice(1, -1);
    }
    needle = norm(needle);
    const lower = needle.toLowerCase();
    const matches = (el) => {
      const t = textOf(el);
      return exact ? t === needle : t.toLowerCase().includes(lower);
    };
    const out = [];
    for (const scope of scopes) {
      const all = [scope, ...scope.querySelectorAll("*")].filter((el) => el.nodeType === 1 && el.tagName !== "SCRIPT" && el.tagName !== "STYLE" && el.tagName !== "HTML" && el.tagName !== "BODY");
      for (const el of all) {
        if (!matches(el)) continue;
        // The deepest element whose text matches: skip those with a matching child element.
        if ([...el.children].some((c) => matches(c))) continue;
        if (!out.includes(el)) out.push(el);
      }
    }
    return out;
  }
  function resolve(selector) {
    let scopes = [document.documentElement];
    for (let part of selector.split(">>").map((p) => p.trim()).filter((p) => p.length)) {
      let next = [];
      if (part.startsWith("text=")) {
        next = byText(scopes, part.slice(5));
      } else {
        if (part.startsWith("css=")) part = part.slice(4);
        for (const scope of scopes) for (const el of scope.querySelectorAll(part)) if (!next.includes(el)) next.push(el);
      }
      scopes = next;
      if (!scopes.length) break;
    }
    return scopes;
  }
  function box(el) {
    const r = el.getBoundingClientRect();
    return { x: r.x, y: r.y, width: r.width, height: r.height };
  }
  function visible(el) {
    if (!el.isConnected) return false;
    const style = getComputedStyle(el);
    if (style.visibility === "hidden" || style.visibility === "collapse" || style.display === "none") return false;
    if (typeof el.checkVisibility === "function" && !el.checkVisibility({ opacityProperty: false })) return false;
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0;
  }
  function enabled(el) {
    if (el.disabled) return false;
    if (el.closest("fieldset[disabled]")) return false;
    if (el.getAttribute("aria-disabled") === "true") return false;
    return true;
  }
  function editable(el) {
    if (el.isContentEditable) return true;
    if (el.readOnly) return false;
    return el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT";
  }
  const frame = () => new Promise((r) => requestAnimationFrame(() => r()));
  // One probe: the element's state, waiting two animation frames to see whether it moves.
  async function probe(selector, nth, want) {
    if (want.alarms) {
      const seen = markers(want.alarms);
      const names = Object.keys(seen);
      if (names.length) return { ok: false, alarm: names[0], alarmText: seen[names[0]], count: 0 };
    }
    const all = resolve(selector);
    const el = all[nth < 0 ? all.length + nth : nth];
    if (!el) return { ok: false, reason: "not attached", count: all.length };
    if (want.state === "attached") return { ok: true, count: all.length };
    const vis = visible(el);
    if (want.state === "hidden") return { ok: !vis, reason: vis ? "still visible" : "", count: all.length };
    if (!vis) return { ok: false, reason: "not visible", count: all.length };
    if (want.state === "visible") return { ok: true, count: all.length };
    if (!enabled(el)) return { ok: false, reason: "not enabled", count: all.length };
    if (want.editable && !editable(el)) return { ok: false, reason: "not editable", count: all.length };
    if (want.scroll) el.scrollIntoView({ block: "center", inline: "center", behavior: "instant" });
    const before = box(el);
    await frame(); await frame();
    const after = box(el);
    if (before.x !== after.x || before.y !== after.y || before.width !== after.width || before.height !== after.height) {
      return { ok: false, reason: "not stable (moving)", count: all.length };
    }
    if (want.hit) {
      const cx = after.x + after.width / 2, cy = after.y + after.height / 2;
      const top = document.elementFromPoint(cx, cy);
      if (top && top !== el && !el.contains(top)) {
        return { ok: false, reason: "covered by another element", count: all.length };
      }
    }
    return { ok: true, count: all.length, box: after };
  }
  function element(selector, nth) {
    const all = resolve(selector);
    return all[nth < 0 ? all.length + nth : nth] || null;
  }
  function fill(selector, nth, value) {
    const el = element(selector, nth);
    if (!el) throw new Error("element disappeared");
    el.focus();
    if (el.isContentEditable) {
      el.textContent = value;
    } else {
      const proto = el.tagName === "TEXTAREA" ? HTMLTextAreaElement.prototype : HTMLInputElement.prototype;
      const setter = Object.getOwnPropertyDescriptor(proto, "value").set;
      setter.call(el, value);
    }
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }
  // Picks an option of a <select>; { select: false } for any other element (the caller
  // types into it instead).
  function select(selector, nth, value) {
    const el = element(selector, nth);
    if (!el) throw new Error("element disappeared");
    if (el.tagName !== "SELECT") return { select: false };
    const options = [...el.options];
    const wanted = norm(value).toLowerCase();
    const option = options.find((o) => o.value === value) || options.find((o) => norm(o.label).toLowerCase() === wanted);
    if (!option) {
      return { select: true, missing: true, count: options.length, offered: options.slice(0, 8).map((o) => o.value || norm(o.label)) };
    }
    el.value = option.value;
    el.dispatchEvent(new Event("input", { bubbles: true }));
    el.dispatchEvent(new Event("change", { bubbles: true }));
    return { select: true };
  }
  function focus(selector, nth) {
    const el = element(selector, nth);
    if (!el) throw new Error("element disappeared");
    el.focus();
    if (typeof el.setSelectionRange === "function" && typeof el.value === "string") {
      try { el.setSelectionRange(el.value.length, el.value.length); } catch (e) {}
    }
    return document.activeElement === el;
  }
  function read(el, what) {
    if (!el) return null;
    if (what.attr) return el.getAttribute(what.attr);
    if (what.property) return el[what.property] === undefined ? null : el[what.property];
    return textOf(el);
  }
  function extract(selector, nth, what) {
    return read(element(selector, nth), what);
  }
  function extractList(row, fields) {
    return resolve(row).map((r) => {
      const item = {};
      for (const [name, spec] of Object.entries(fields)) {
        let el = r;
        if (spec.selector) {
          const found = spec.selector.startsWith("text=") ? byText([r], spec.selector.slice(5)) : [...r.querySelectorAll(spec.selector.replace(/^css=/, ""))];
          el = found[0] || null;
        }
        item[name] = read(el, spec);
      }
      return item;
    });
  }
  // Which of the adapter's markers are visible right now.
  function markers(map) {
    const seen = {};
    for (const [name, selector] of Object.entries(map)) {
      if (!selector) continue;
      try {
        const el = resolve(selector).find(visible);
        if (el) seen[name] = textOf(el).slice(0, 200);
      } catch (e) {}
    }
    return seen;
  }
  window.__edgeLocator = { version: 2, resolve, probe, element, fill, select, focus, extract, extractList, markers };
  return window.__edgeLocator;
})()
