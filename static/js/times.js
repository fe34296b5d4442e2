// Times as people read them. The server renders "3 min ago" (app/relative_time.py); a page left
// open would go stale, and only the browser knows the viewer's own time zone, so this island
// refreshes relative texts every 30 s and gives every <time> the exact local time on hover
// (the server's UTC title is kept after it). Hypermedia has no clock: that is why this exists.
(function () {
  const UNITS = [[86400, "d"], [3600, "h"], [60, "min"]];

  function relative(seconds) {
    const amount = Math.abs(Math.trunc(seconds));
    if (amount < 10) return "just now";
    let text = amount + "s";
    for (const [size, unit] of UNITS) {
      if (amount >= size) { text = Math.floor(amount / size) + " " + unit; break; }
    }
    return seconds > 0 ? text + " ago" : "in " + text;
  }

  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  const exact = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

  function enhance(root) {
    if (!root.querySelectorAll) return;
    for (const el of root.querySelectorAll("time[datetime]")) {
      const value = el.getAttribute("datetime");
      if (!value.includes("T")) continue; // a date alone: nothing to localise
      const moment = new Date(value);
      if (Number.isNaN(moment.getTime())) continue;
      if (!el.hasAttribute("data-exact")) {
        el.setAttribute("data-exact", "");
        const local = exact.format(moment) + " (" + zone + ")";
        el.title = el.title ? local + " · " + el.title : local;
      }
      if (el.hasAttribute("data-relative")) el.textContent = relative((Date.now() - moment) / 1000);
    }
  }

  document.addEventListener("DOMContentLoaded", () => enhance(document));
  document.addEventListener("htmx:load", (event) => enhance(event.detail.elt));
  setInterval(() => enhance(document), 30000);
})();
