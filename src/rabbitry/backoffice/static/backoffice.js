// The back-office's few behaviours; no inline handlers (the Content-Security-Policy allows
// scripts from this origin only).
"use strict";

document.addEventListener("click", (event) => {
  const target = event.target;
  if (!(target instanceof Element)) return;
  // Close the ▶ modal: its × button, or a click on the dimmed overlay around it.
  if (target.matches("[data-close]")) {
    document.getElementById("modal").replaceChildren();
  }
});

document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") document.getElementById("modal").replaceChildren();
});

document.addEventListener("change", (event) => {
  const box = event.target;
  if (!(box instanceof HTMLInputElement) || !box.dataset.selectAll) return;
  const form = box.closest("form") || document;
  for (const item of form.querySelectorAll(`input[name="${box.dataset.selectAll}"]`)) {
    if (!item.disabled) item.checked = box.checked;
  }
});
