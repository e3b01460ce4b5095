// Fleetplane portal: small, progressive enhancements only. Every page works
// without JavaScript except live updates. No inline handlers (the CSP
// forbids them): behaviour hangs off data- attributes.
"use strict";

document.addEventListener("click", (ev) => {
  const btn = ev.target.closest("[data-copy]");
  if (!btn) return;
  const src = document.getElementById(btn.dataset.copy);
  if (!src) return;
  navigator.clipboard.writeText(src.textContent.trim()).then(() => {
    const old = btn.textContent;
    btn.textContent = "Copied";
    setTimeout(() => { btn.textContent = old; }, 1500);
  });
});

// Forms with data-confirm ask before they are sent.
document.addEventListener("submit", (ev) => {
  const form = ev.target;
  if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    ev.preventDefault();
  }
});
