// Fleetplane portal, settings pages: progressive enhancements only (every
// page works without JavaScript). No inline handlers: the CSP forbids them.
"use strict";

(() => {
  // A page that shows a secret once (enrollment token, API key, grant)
  // answers a POST. It names the page to show in its place: reload and
  // back then fetch that page instead of posting the form again, and the
  // secret is not shown a second time.
  const once = document.querySelector("[data-replace-url]");
  if (once && window.history && history.replaceState) {
    history.replaceState(null, "", once.dataset.replaceUrl);
  }

  // The grant form's live preview: on every change, the form goes to
  // POST /grants/preview (the control plane's dry run; nothing is created)
  // and the answer replaces the preview box. The form's own hidden csrf
  // field travels with it. Without JavaScript, the Preview button does the
  // same with a whole page.
  const form = document.querySelector("form[data-preview]");
  if (!form) return;
  const boxID = form.dataset.preview;
  const url = form.dataset.previewUrl;
  let timer = 0;
  let inflight = null;
  let seq = 0;

  const refresh = async () => {
    if (inflight) inflight.abort();
    inflight = new AbortController();
    const mine = ++seq;
    const box = document.getElementById(boxID);
    if (box) box.setAttribute("aria-busy", "true");
    try {
      const res = await fetch(url, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { "X-Fleetplane-Fragment": "grant-preview" },
        credentials: "same-origin",
        signal: inflight.signal,
      });
      const type = res.headers.get("Content-Type") || "";
      if (mine !== seq || !type.startsWith("text/html")) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const fresh = doc.getElementById(boxID);
      const cur = document.getElementById(boxID);
      if (fresh && cur) {
        cur.replaceChildren(...Array.from(fresh.childNodes).map((n) => document.importNode(n, true)));
        cur.removeAttribute("aria-busy");
      }
    } catch (err) {
      if (err.name !== "AbortError" && box) box.removeAttribute("aria-busy");
    }
  };

  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 300);
  };
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  // A first preview of what the form holds.
  refresh();
})();
